"""TF-IDF as a feature source: fitted on training rows only, sparse through the probe, the
pair estimates and the fusion head, saved without pickle, and applied like any model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.classifier import FusionTextClassifier, apply
from autolayer.errors import ConfigError, DataError
from autolayer.fusion import OPERATORS
from autolayer.heads import make_head
from autolayer.sources import make_source
from autolayer.sources.tfidf import TfidfSource
from autolayer.study import study_context
from tests.conftest import run, write_jsonl

TRAIN = ["the film was good", "a good story", "the plot was bad", "a bad film", "good fun"]


def test_tfidf_is_a_registered_source_with_one_sparse_state():
    source = make_source("tfidf")
    assert isinstance(source, TfidfSource) and source.sparse and source.n_states == 1
    assert make_source("tfidf").identity == source.identity  # the method, not a vocabulary
    with pytest.raises(ConfigError, match="not fitted"):
        source.transform(["a text"])
    source.fit(TRAIN)
    X = source.transform(["good film", "words never seen"])
    assert sparse.issparse(X) and X.shape == (2, source.width) and X.dtype == np.float32
    assert X[1].nnz == 0  # unknown words give an empty row, not an error
    np.testing.assert_allclose(np.sqrt(X.multiply(X).sum(1)).A1[0], 1.0, rtol=1e-5)


def test_save_and_load_give_the_same_features(tmp_path):
    source = make_source("tfidf").fit(TRAIN)
    source.save(tmp_path)
    assert json.loads((tmp_path / "tfidf.json").read_text())["format"] == 1
    loaded = TfidfSource.load(tmp_path)
    texts = ["a good film", "bad bad plot", "nothing known here"]
    assert abs(loaded.transform(texts) - source.transform(texts)).max() == 0
    record = json.loads((tmp_path / "tfidf.json").read_text())
    record["format"] = 99
    (tmp_path / "tfidf.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="another tfidf version"):
        TfidfSource.load(tmp_path)


@pytest.mark.parametrize("texts", [["", " ", "!!"], ["a", "I", "a I"]])
def test_texts_without_countable_words_are_a_clear_error(texts):
    with pytest.raises(DataError, match="no words to count"):
        make_source("tfidf").fit(texts)


def test_texts_without_words_say_to_leave_tfidf_out_in_python_and_cli_terms(capsys, home, tmp_path):
    with pytest.raises(DataError) as caught:
        make_source("tfidf").fit(["😀 🎉", "!!!", "?! …"])
    assert str(caught.value).endswith("leave tfidf out of models") and "--" not in str(caught.value)
    rows = [{"text": "😀" * (i % 4 + 1) + "!", "label": "ab"[i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "emoji.jsonl", rows)
    code, _, err = run(capsys, "recommend", "-d", path, "--models", "tfidf", "-o", tmp_path / "o")
    assert code == DataError.exit_code and "leave tfidf out of --models" in err, err


def test_texts_without_words_are_refused_before_any_model_is_extracted(home, tmp_path, tiny_models):
    rows = [{"text": "😀" * (i % 4 + 1) + "!", "label": "ab"[i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "emoji.jsonl", rows)
    with pytest.raises(DataError, match="leave tfidf out"):
        pipeline.prepare(str(path), [str(tiny_models["bert"]), "tfidf"], top_k=1)
    assert not (home / "embeddings").exists()


@pytest.fixture()
def leaky(tmp_path):
    """Train rows share words with validation; test rows hold a word nowhere else."""
    rows = [
        {"text": f"{w} story number {i}", "label": "pos" if w == "good" else "neg"}
        for i in range(40)
        for w in ("good", "bad")
    ]
    write_jsonl(tmp_path / "leaky" / "train.jsonl", rows)
    write_jsonl(
        tmp_path / "leaky" / "test.jsonl",
        [{"text": "zyzzyva zyzzyva good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 3,
    )
    return tmp_path / "leaky"


def test_fitted_on_search_train_rows_only(home, leaky):
    import autolayer

    data = autolayer.load_dataset(leaky)
    train, val = data.train_validation(size=0.2, seed=0)
    only_in_val = {f"number {i}" for i in range(40)} - {
        " ".join(data.split("train").texts[r].split()[-2:]) for r in train
    }
    assert only_in_val  # some bigrams appear only in validation rows
    prepared = pipeline.prepare(data, ["tfidf"], top_k=1)
    [candidate] = prepared.candidates
    assert candidate.sparse and candidate.layers == (0,)
    assert candidate.features(0, "train").shape[0] == len(train)
    # the pipeline's features are those of a vectorizer fitted on the search-train rows
    texts = data.split("train").texts
    refit = make_source("tfidf").fit([texts[r] for r in train])
    assert candidate.width == refit.width
    expected = refit.transform([texts[r] for r in train])
    assert abs(candidate.features(0, "train") - expected).max() == 0
    assert abs(candidate.features(0, "val") - refit.transform([texts[r] for r in val])).max() == 0
    vocabulary = refit._fitted()["word"].vocabulary_
    assert not only_in_val & set(vocabulary) and "zyzzyva" not in vocabulary


def test_a_validation_split_of_its_own_is_transformed_not_fitted(home, tmp_path):
    rows = [{"text": f"good story {i}", "label": "pos"} for i in range(10)]
    rows += [{"text": f"bad story {i}", "label": "neg"} for i in range(10)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    valid = [{"text": "unseen words good", "label": "pos"}, {"text": "unseen bad", "label": "neg"}]
    write_jsonl(tmp_path / "d" / "validation.jsonl", valid * 2)
    write_jsonl(tmp_path / "d" / "test.jsonl", valid)
    prepared = pipeline.prepare(tmp_path / "d", ["tfidf"], top_k=1)
    assert prepared.validation["split"] == "dataset" and "size" not in prepared.validation
    [candidate] = prepared.candidates
    refit = make_source("tfidf").fit([r["text"] for r in rows])
    assert candidate.width == refit.width and candidate.features(0, "val").shape[0] == 4
    expected = refit.transform([v["text"] for v in valid * 2])
    assert abs(candidate.features(0, "val") - expected).max() == 0


def test_every_operator_learns_from_sparse_beside_dense():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    X = sparse.random(600, 300, density=0.02, format="csr", random_state=0, dtype=np.float32)
    # the label is one of two sparse columns; the dense input is noise
    X = sparse.hstack([X, sparse.csr_matrix(np.eye(2, dtype=np.float32)[y])], format="csr")
    dense = rng.normal(size=(600, 6)).astype(np.float32)
    for operator in OPERATORS:
        head = make_head("mlp", {"operator": operator, "width": 8, "lr": 1e-2, "epochs": 40})
        fit = head.fit([X[:450], dense[:450]], y[:450], [X[450:], dense[450:]], y[450:])
        assert head.sparse_ == [True, False]
        assert fit.best_val_metric > 0.95, operator
        assert head.predict_proba([X[450:], dense[450:]]).shape == (150, 2)


def test_a_batch_updates_only_the_table_rows_it_touches():
    import torch
    from torch.nn import functional as F

    from autolayer.heads.modules import SparseRows

    X = sparse.csr_matrix(np.array([[1, 0, 0, 2], [0, 0, 0, 1]], dtype=np.float32))
    head = make_head("mlp", {"width": 3, "hidden": 4, "dropout": 0.0, "lr": 0.1})
    head.input_dims_, head.sparse_, head.n_outputs_ = [4], [True], 2
    torch.manual_seed(0)
    model = head.net_ = head._build().train()
    with torch.no_grad():  # every projected unit active: no ReLU can zero a row's gradient
        model.projections[0].bias.fill_(10.0)
    table = model.projections[0].weight.clone()
    optimizers = head._optimizers()
    batch = SparseRows(X, torch.device("cpu"))[torch.tensor([0, 1])]
    F.cross_entropy(model([batch]), torch.tensor([0, 1])).backward()
    for optimizer in optimizers:
        optimizer.step()
    changed = (model.projections[0].weight != table).any(1).tolist()
    assert changed == [True, False, False, True]


def test_recommend_apply_predict_with_tfidf(capsys, home, tmp_path, tiny_dataset, tiny_models):
    bert = str(tiny_models["bert"])
    prepared = pipeline.prepare(str(tiny_dataset), [bert, "tfidf"], top_k=1)
    assert [p.models for p in prepared.pairs] == [(bert, "tfidf")]
    assert np.isnan(pipeline.cka_at_best(prepared)[0, 1])  # no CKA with a sparse source
    budget = Budget(n_trials=4, max_models=2)
    result = pipeline.search(prepared, output_dir=tmp_path / "out", budget=budget)
    lexical = [t for t in result.trials if "tfidf" in t.models and t.state == "COMPLETE"]
    assert lexical, "the search never tried tfidf"
    trial = lexical[0]
    config = pipeline.trial_config(
        trial, study_context(prepared, pipeline.Space()), result.study_name, "x"
    )
    applied = apply(config, str(tiny_dataset), tmp_path / "model")
    assert (tmp_path / "model" / "tfidf.json").is_file() and applied.accuracy is not None
    loaded = FusionTextClassifier.load(tmp_path / "model")
    texts = ["good fun", "awful dull"]
    assert loaded.sources_["tfidf"].width == loaded.head_.input_dims_[-1]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    code, out, err = run(capsys, "predict", tmp_path / "model", "-i", tmp_path / "in.txt")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2


def test_extract_names_where_tfidf_belongs(capsys, home, tiny_dataset):
    code, _, err = run(capsys, "extract", "-m", "tfidf", "-d", tiny_dataset)
    assert code == ConfigError.exit_code
    assert "recommend, search or apply" in err and "Traceback" not in err


def test_estimator_fit_learns_the_vocabulary_from_its_own_texts(home, tmp_path, tiny_dataset):
    from autolayer.config import load_config

    config_path = tmp_path / "c.yaml"
    prepared = pipeline.prepare(str(tiny_dataset), ["tfidf"], top_k=1)
    result = pipeline.search(prepared, output_dir=tmp_path / "o", budget=Budget(n_trials=1))
    context = study_context(prepared, pipeline.Space())
    pipeline.trial_config(result.best, context, result.study_name, "x").save(config_path)
    clf = FusionTextClassifier(load_config(config_path))
    with pytest.raises(ConfigError, match="not fitted"):
        clf.embed(["good"])
    clf.fit(
        ["good fun", "great fun", "bad dull", "awful dull"] * 3, ["pos", "pos", "neg", "neg"] * 3
    )
    assert set(clf.sources_["tfidf"]._fitted()["word"].vocabulary_) >= {"fun", "dull"}
    texts = ["great fun", "awful dull", "words unseen"]
    before = clf.predict_proba(texts)
    clf.save(tmp_path / "saved")
    after = FusionTextClassifier.load(tmp_path / "saved").predict_proba(texts)
    np.testing.assert_allclose(after, before, rtol=1e-6)  # same vocabulary, idf and head


def test_damaged_vocabulary_files_are_one_line_errors(tmp_path):
    make_source("tfidf").fit(TRAIN).save(tmp_path)
    record = json.loads((tmp_path / "tfidf.json").read_text())
    broken = [
        {k: v for k, v in record.items() if k != "terms"},
        [record],
        {**record, "terms": {"word": record["terms"]["word"][:-1]}},
    ]
    for damaged in broken:
        (tmp_path / "tfidf.json").write_text(json.dumps(damaged))
        with pytest.raises(ConfigError, match="tfidf"):
            TfidfSource.load(tmp_path)
    (tmp_path / "tfidf.json").write_text(json.dumps(record))
    (tmp_path / "tfidf.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConfigError, match="unreadable"):
        TfidfSource.load(tmp_path)


def test_dense_features_for_a_sparse_head_are_refused():
    rng = np.random.default_rng(0)
    X = sparse.random(60, 30, density=0.1, format="csr", random_state=0, dtype=np.float32)
    y = rng.integers(0, 2, 60)
    head = make_head("mlp", {"operator": "concat", "width": 4})
    head.fit([X], y)
    with pytest.raises(ConfigError, match="sparse"):
        head.predict_proba([X.toarray()])


def test_score_and_complementarity_refuse_tfidf_before_any_extraction(
    capsys, home, tiny_dataset, tiny_models
):
    bert = str(tiny_models["bert"])
    for command in ("score", "complementarity"):
        code, _, err = run(capsys, command, "-m", f"{bert},tfidf", "-d", tiny_dataset)
        assert code == ConfigError.exit_code and "pretrained models" in err, err
    assert not list((home / "embeddings").glob("*/meta.json"))  # nothing was extracted


def test_memory_of_a_sparse_candidate_is_its_non_zeros(home, tiny_dataset):
    from autolayer.space import cost_of

    [candidate] = pipeline.prepare(str(tiny_dataset), ["tfidf"], top_k=1).candidates
    X = candidate.features(0, "train")
    params = {"operator": "concat", "width": 8, "hidden": 8}
    cost = cost_of([candidate], [0], "mlp", params, 2, X.shape[0])
    stored = (8 * X.nnz + 4 * (X.shape[0] + 1)) / 2**20
    head = 4 * cost.params / 2**20
    assert cost.memory_mb == pytest.approx(candidate.weights_mb(0) + stored + head)
    assert stored < 4 * X.shape[0] * X.shape[1] / 2**20  # far below the dense size


def test_a_tfidf_record_learns_from_texts_and_names_the_files_it_saves(tmp_path):
    """Resolved once, the record says what the stages ask: one state, fitted on the texts
    (each fit a new source, the record's own left unfitted), and the files a fit saves."""
    from autolayer.sources import resolve_spec

    record = resolve_spec("tfidf", max_length=256)
    assert record.learns and record.sparse and record.n_states == 1
    assert not record.sentence_encoder
    fitted = record.unfitted().fit(["good movie", "bad movie", "good plot", "bad plot"])
    assert fitted is not record.source and record.source._vectorizers is None
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(record.files)

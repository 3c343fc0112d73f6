"""The classifier built from a config: a scikit-learn estimator, saved without pickle, applied
and used to predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autolayer.classifier import FusionTextClassifier
from autolayer.config import FusionConfig, HeadChoice, ModelChoice
from autolayer.task import TASKS, SingleLabel
from tests.conftest import run

HEAD = {
    "operator": "concat",
    "width": 16,
    "hidden": 8,
    "dropout": 0.0,
    "lr": 3e-3,
    "batch_size": 8,
    "epochs": 5,
}


def _tiny_config(spec: str, layer: int = 2) -> FusionConfig:
    from autolayer import zoo

    return FusionConfig(
        models=(ModelChoice(spec, zoo.resolve(spec).identity, layer, 5),),
        head=HeadChoice("mlp", HEAD),
        label_names=("neg", "pos"),
    )


class LeastLikely(SingleLabel):
    """A task deciding for the least probable class: a rule only a task can bring."""

    name = "least_likely"

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(proba).argmin(axis=1)


def test_estimator_works_in_sklearn_pipeline_and_cross_validation(home, tiny_models, tiny_dataset):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    scores = cross_val_score(clone(estimator), texts, labels, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    fitted = estimator.fit(texts, labels)
    assert set(fitted.predict(texts[:5])) <= {"neg", "pos"}
    np.testing.assert_allclose(fitted.predict_proba(texts[:5]).sum(axis=1), 1, atol=1e-5)


def test_saved_model_round_trips_without_pickle(home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["llama"]))).fit(texts, labels)
    estimator.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.yaml",
        "features.json",
        "head.json",
        "head.safetensors",
    ]
    loaded = FusionTextClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict_proba(texts), estimator.predict_proba(texts), atol=1e-6
    )


def test_apply_warns_when_config_comes_from_other_data(
    home, tmp_path, tiny_models, tiny_dataset, caplog
):
    from autolayer.classifier import apply

    config = _tiny_config(str(tiny_models["bert"]))
    config = FusionConfig(**{**config.__dict__, "dataset": {"name": "x", "fingerprint": "0" * 64}})
    result = apply(config, str(tiny_dataset), tmp_path / "m")
    assert result.warnings and "fingerprint" in caplog.text


def test_predict_on_empty_input_is_an_error(capsys, home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.classifier import apply

    apply(_tiny_config(str(tiny_models["bert"])), str(tiny_dataset), tmp_path / "m")
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run(
        capsys, "predict", tmp_path / "m", "-i", tmp_path / "empty.txt", "-o", tmp_path / "p.jsonl"
    )
    assert code != 0 and "no texts" in err and "Traceback" not in err


def test_apply_refuses_to_save_a_head_that_diverged(
    home, tmp_path, tiny_models, tiny_dataset, monkeypatch
):
    """Whatever head diverges (how a head notices is its own test's), nothing is saved."""
    import pytest

    from autolayer.classifier import apply
    from autolayer.errors import DivergedError
    from autolayer.heads.mlp import MLPHead

    def diverges(self, *args):
        raise DivergedError("the mlp head diverged (its training loss is nan); lower lr")

    monkeypatch.setattr(MLPHead, "_fit", diverges)
    with pytest.raises(DivergedError, match="lower lr"):
        apply(_tiny_config(str(tiny_models["bert"])), str(tiny_dataset), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_predict_refuses_a_head_whose_bytes_were_damaged(
    capsys, home, tmp_path, tiny_models, tiny_dataset
):
    from autolayer.classifier import apply

    apply(_tiny_config(str(tiny_models["bert"])), str(tiny_dataset), tmp_path / "m")
    weights = tmp_path / "m" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\xff\xff\xff\xff")  # a float32 NaN
    (tmp_path / "in.txt").write_text("good fun\nbad plot\n")
    out = tmp_path / "p.jsonl"
    capsys.readouterr()  # what apply printed
    code, _, err = run(capsys, "predict", tmp_path / "m", "-i", tmp_path / "in.txt", "-o", out)
    assert code == 4 and "is damaged" in err and "Traceback" not in err  # a damaged file
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_an_unfitted_estimator_raises_sklearns_not_fitted_error(home, tmp_path, tiny_models):
    import pytest
    from sklearn.exceptions import NotFittedError

    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    for call in (estimator.predict, estimator.predict_proba):
        with pytest.raises(NotFittedError, match="FusionTextClassifier instance is not fitted"):
            call(["good fun"])
    with pytest.raises(NotFittedError):
        estimator.save(tmp_path / "m")


def test_fit_refuses_one_class_and_labels_that_do_not_match_the_texts(home, tiny_models):
    import pytest

    from autolayer.errors import DataError

    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    with pytest.raises(DataError, match="at least 2 classes in y; got only 'pos'"):
        estimator.fit(["good fun", "great fun"], ["pos", "pos"])
    with pytest.raises(DataError, match="y has 1 label for 2 texts"):
        estimator.fit(["good fun", "bad plot"], ["pos"])


def test_texts_must_be_a_list_of_non_blank_strings(home, tiny_models, tiny_dataset):
    """As scikit-learn's text vectorizers: a bare string is not iterated as characters, and
    an item that is not a text is named by its position. A blank text, which the CLI skips,
    is refused: an estimator owes one label per row."""
    import pytest

    from autolayer.errors import DataError

    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    estimator.fit(["good fun", "great fun", "bad dull", "awful plot"], ["pos", "pos", "neg", "neg"])
    bad = {
        "good fun": "expected an iterable of texts, got a string",
        5: "expected an iterable of texts, got int",
        (): "no texts given",
        ("good", ""): r"X\[1\] is empty or whitespace-only",
        ("good", None): r"X\[1\] is None, not a string",
        (1, 2): r"X\[0\] is 1, not a string \(2 items are not strings\)",
    }
    for texts, message in bad.items():
        with pytest.raises(DataError, match=message):
            estimator.predict(texts if isinstance(texts, str | int) else list(texts))
    with pytest.raises(DataError, match=r"X\[0\] is None"):
        estimator.fit([None, "bad"], ["pos", "neg"])


def test_a_config_or_dataset_of_the_wrong_type_is_named(home, tmp_path, tiny_models):
    import pytest

    from autolayer.classifier import apply
    from autolayer.errors import ConfigError

    expected = "config must be a FusionConfig or the path of a config file; got int 5"
    with pytest.raises(ConfigError, match=expected):
        FusionTextClassifier(5).fit(["good", "bad"], ["pos", "neg"])
    with pytest.raises(ConfigError, match=expected):
        apply(5, "demo", tmp_path / "m")
    config = _tiny_config(str(tiny_models["bert"]))
    with pytest.raises(
        ConfigError, match="dataset must be a name, a path or a loaded dataset; got"
    ):
        apply(config, ["good", "bad"], tmp_path / "m")


def test_predictions_follow_the_config_tasks_decision_rule(
    home, tmp_path, tiny_models, tiny_dataset, monkeypatch
):
    """A task registered from outside decides by its own rule (here the least probable
    class) in predict, apply's test metrics and predict_file alike."""
    from dataclasses import replace

    from autolayer.classifier import apply
    from autolayer.predictions import predict_file

    monkeypatch.setitem(TASKS, "least_likely", LeastLikely)
    config = replace(_tiny_config(str(tiny_models["bert"])), task="least_likely")
    apply(config, str(tiny_dataset), tmp_path / "m")
    texts = ["good fun", "bad plot", "awful dull film"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    loaded = FusionTextClassifier.load(tmp_path / "m")
    proba = loaded.predict_proba(texts)
    least = loaded.classes_[proba.argmin(axis=1)]
    assert loaded._config().task == "least_likely"
    assert list(loaded.predict(texts)) == list(least)
    rows = predict_file(tmp_path / "m", tmp_path / "in.txt")
    assert [row["label"] for row in rows] == list(least)


def test_a_fitted_estimator_decides_by_its_heads_task_not_the_name_looked_up_again(
    home, tiny_models, monkeypatch
):
    """The task is built once, with the head: predict does not look its name up again
    (here unregistered after the fit, so a lookup would fail)."""
    from dataclasses import replace

    monkeypatch.setitem(TASKS, "least_likely", LeastLikely)
    config = replace(_tiny_config(str(tiny_models["bert"])), task="least_likely")
    texts, labels = ["good fun", "bad dull"] * 4, ["pos", "neg"] * 4
    estimator = FusionTextClassifier(config).fit(texts, labels)
    del TASKS["least_likely"]
    proba = estimator.predict_proba(texts)
    assert list(estimator.predict(texts)) == list(estimator.classes_[proba.argmin(axis=1)])


def test_a_dense_source_that_learns_is_fitted_saved_and_loaded_with_the_model(
    home, tmp_path, word_counts
):
    """Whether a source learns from texts is its ``learns``, not its sparseness: a dense
    one is fitted on the training texts, transformed, and saved and loaded with the head."""
    from autolayer.sources import resolve_spec

    record = resolve_spec("counts", max_length=5)
    assert (record.learns, record.sparse) == (True, False)
    config = FusionConfig(
        models=(ModelChoice("counts", "counts-1", 0, 5),),
        head=HeadChoice("mlp", HEAD),
        label_names=("neg", "pos"),
    )
    texts, labels = (
        ["good fun", "great fun", "bad dull", "awful dull"] * 3,
        ["pos", "pos", "neg", "neg"] * 3,
    )
    estimator = FusionTextClassifier(config).fit(texts, labels)
    assert estimator.sources_["counts"].words == ["awful", "bad", "dull", "fun", "good", "great"]
    estimator.save(tmp_path / "m")
    loaded = FusionTextClassifier.load(tmp_path / "m")
    assert loaded.sources_["counts"].words == estimator.sources_["counts"].words
    assert np.allclose(loaded.predict_proba(texts), estimator.predict_proba(texts))


def test_a_source_that_learns_nothing_has_no_fit_save_or_load(tiny_models):
    """The contract of a source that learns is in the base class: a pretrained source
    says it has nothing to fit, save or load."""
    import pytest

    from autolayer.sources import make_source
    from autolayer.sources.tfidf import TfidfSource

    source = make_source(str(tiny_models["bert"]))
    assert not source.learns and TfidfSource.learns
    for call in (
        lambda: source.fit(["a"]),
        lambda: source.save(Path(".")),
        lambda: type(source).load(Path(".")),
    ):
        with pytest.raises(NotImplementedError, match="does not learn from texts"):
            call()


def test_each_configured_model_is_resolved_once_per_estimator(
    home, tmp_path, tiny_models, tiny_dataset, monkeypatch
):
    """fit, predict, save, load and apply read each model's record (sparse or not, its
    identity), not a source built again from its spec; a clone resolves its own."""
    from dataclasses import replace

    from sklearn.base import clone

    from autolayer import classifier
    from autolayer.sources import make_source

    resolved = []
    resolve = classifier.resolve_spec

    def spy(spec, **kwargs):
        resolved.append(spec)
        return resolve(spec, **kwargs)

    monkeypatch.setattr(classifier, "resolve_spec", spy)
    bert = _tiny_config(str(tiny_models["bert"]))
    tfidf = ModelChoice("tfidf", make_source("tfidf").identity, 0, 5)
    config = replace(bert, models=(tfidf, *bert.models))
    texts, labels = (
        ["good fun", "great fun", "bad dull", "awful dull"] * 3,
        ["pos", "pos", "neg", "neg"] * 3,
    )
    estimator = FusionTextClassifier(config).fit(texts, labels)
    estimator.predict(texts)
    estimator.save(tmp_path / "m")
    once = sorted(["tfidf", bert.models[0].spec])
    assert sorted(resolved) == once
    FusionTextClassifier.load(tmp_path / "m").predict(texts)
    clone(estimator).fit(texts, labels).predict(texts)
    classifier.apply(config, tiny_dataset, tmp_path / "applied")
    assert sorted(resolved) == sorted(once * 4)

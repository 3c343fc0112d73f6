"""Few-label mode: a seeded draw of N labels per class, judged by cross-validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autolayer.data import load_dataset
from autolayer.errors import ConfigError, DataError
from autolayer.heads import HeadFit, cross_validate, make_head
from autolayer.options import Options
from autolayer.probe import folds as stratified_folds
from tests.conftest import run, write_jsonl


def test_per_class_draws_n_of_every_class_seeded_and_drops_validation(tmp_path):
    rows = [{"text": f"t{i}", "label": "abc"[i % 3]} for i in range(60)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "validation.jsonl", rows[:9])
    write_jsonl(tmp_path / "d" / "test.jsonl", rows[:6])
    data = load_dataset(tmp_path / "d")
    drawn = data.per_class(4, seed=1)
    assert np.bincount(drawn.split("train").labels).tolist() == [4, 4, 4]
    assert set(drawn.split("train").texts) <= set(data.split("train").texts)
    assert "validation" not in drawn.splits
    assert drawn.split("test").fingerprint == data.split("test").fingerprint
    assert drawn.draw == {"labels_per_class": 4, "seed": 1, "source_fingerprint": data.fingerprint}
    again, other = data.per_class(4, seed=1), data.per_class(4, seed=2)
    assert again.fingerprint == drawn.fingerprint
    assert other.split("train").texts != drawn.split("train").texts


def test_per_class_larger_than_a_class_names_the_class(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i < 50 else "b"} for i in range(57)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    data = load_dataset(tmp_path / "d")
    with pytest.raises(DataError, match=r"8 labels per class is more than class 'b' has \(7"):
        data.per_class(8)
    with pytest.raises(ConfigError):
        data.per_class(0)
    rows[50:] = [{"text": "t50", "label": "b"}]  # one example: no draw can cross-validate it
    write_jsonl(tmp_path / "e" / "train.jsonl", rows)
    with pytest.raises(DataError, match="needs 2 or more of every class") as said:
        load_dataset(tmp_path / "e").per_class(8)
    assert "use at most" not in str(said.value)


def test_cross_validation_never_trains_on_the_rows_it_judges(one_thread):
    # Each row is its own one-hot feature: a head memorises the rows it trains on and can
    # only guess on unseen ones. Held-out rows leaking into training would score ~1.0.
    n = 40
    x = np.eye(n, dtype=np.float32)
    y = np.arange(n) % 2
    folds = stratified_folds(y, 4, seed=0)
    params = {"operator": "concat", "width": 16, "hidden": 16, "lr": 1e-2, "epochs": 30}
    result = cross_validate(make_head("mlp", params), [x], y, folds, seed=0)
    assert len(result.curve) == 30  # no early stopping inside a fold
    assert result.best_epoch == int(np.argmax(result.curve))
    assert result.best_val_metric <= max(result.curve)  # no fold judged at its own best
    assert result.best_val_metric < 0.8
    fit = make_head("mlp", params).fit([x], y, [x], y, seed=0)
    assert fit.best_val_metric == 1.0  # the same head does memorise what it trains on


def test_cross_validation_options_are_checked():
    with pytest.raises(ConfigError, match="cv_folds"):
        Options(cv_folds=1)
    with pytest.raises(ConfigError, match="cv_folds"):
        Options(cv_folds=True)


def test_recommend_with_labels_per_class_cross_validates_and_apply_reuses_the_draw(
    tmp_path, home, tiny_dataset, tiny_models, one_thread
):
    from autolayer import pipeline
    from autolayer.budgets import Budget
    from autolayer.classifier import apply

    rec = pipeline.recommend(
        tiny_dataset,
        [str(tiny_models["bert"])],
        output_dir=tmp_path / "out",
        budget=Budget(n_trials=3),
        labels_per_class=6,
        max_length=12,
    )
    config = rec.config
    full = load_dataset(tiny_dataset)
    assert config.dataset["validation"]["cv_folds"] == 5
    assert config.dataset["validation"]["n_train"] == 12
    assert config.dataset["validation"]["n_val"] == 0
    # no validation rows: the config must not claim a carved split's size
    assert config.dataset["validation"]["split"] == "cross-validation"
    assert "size" not in config.dataset["validation"]
    assert config.dataset["draw"]["source_fingerprint"] == full.fingerprint
    trained = [t for t in rec.search.trials if t.value is not None]
    assert trained and all(
        t.attrs["epochs_run"] == (1 if t.head == "linear" else 60) for t in trained
    )
    result = apply(config, tiny_dataset, tmp_path / "model")
    assert result.n_train == 12
    assert any("draw of 6 labels per class" in w for w in result.warnings)
    other = tmp_path / "other"
    write_jsonl(
        other / "train.jsonl", [{"text": f"w{i}", "label": ("neg", "pos")[i % 2]} for i in range(8)]
    )
    result = apply(config, other, tmp_path / "model2")
    assert result.n_train == 8  # other data: trained on what it has, nothing redrawn
    assert any("no test split: trained on all 8 rows" in w for w in result.warnings)
    one_file = tiny_dataset / "train.jsonl"  # a draw of a single file: no test split
    draw = {**config.dataset["draw"], "source_fingerprint": load_dataset(one_file).fingerprint}
    config = replace(config, dataset={**config.dataset, "draw": draw})
    result = apply(config, one_file, tmp_path / "model3")
    assert any("trained on the 12 rows drawn, none held out" in w for w in result.warnings)


def test_cli_labels_per_class_beyond_a_class_is_one_line(capsys, tmp_path, home, tiny_dataset):
    code, out, err = run(
        capsys, "recommend", "-d", tiny_dataset, "--labels-per-class", 50, "-o", tmp_path / "o"
    )
    assert code != 0
    assert "more than class" in err and "use at most 20" in err
    assert "Traceback" not in err + out


def test_cross_validation_refuses_a_class_with_one_example_before_extraction(
    tmp_path, home, tiny_models
):
    from autolayer import pipeline

    rows = [{"text": f"t{i}", "label": "a"} for i in range(9)] + [{"text": "x", "label": "b"}]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(DataError, match="class 'b' has 1"):
        pipeline.prepare(tmp_path / "d", [str(tiny_models["bert"])], cv_folds=3)
    assert not (home / "embeddings").exists()


def test_cross_validation_folds_are_stratified_by_the_tasks_strata(home, tiny_dataset, monkeypatch):
    """prepare asks the task how rows are stratified: a task whose strata are not the
    classes (here the first and the second half of the rows) gets folds of its strata."""
    from autolayer import pipeline
    from autolayer.task import TASKS, SingleLabel

    class ByHalf(SingleLabel):
        name = "by_half"

        def strata(self, target: np.ndarray) -> np.ndarray:
            return (np.arange(len(target)) >= len(target) // 2).astype(np.int64)

    monkeypatch.setitem(TASKS, "by_half", ByHalf)
    prepared = pipeline.prepare(str(tiny_dataset), ["tfidf"], top_k=1, cv_folds=2, task="by_half")
    assert isinstance(prepared.task, ByHalf)
    expected = stratified_folds(prepared.task.strata(prepared.y_train), 2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(prepared.folds, expected, strict=True))
    by_class = stratified_folds(prepared.y_train, 2, seed=0)
    assert not all(np.array_equal(a, b) for a, b in zip(prepared.folds, by_class, strict=True))


def test_cli_report_says_cross_validated(capsys, tmp_path, home, tiny_dataset, tiny_models):
    code, out, err = run(
        capsys,
        *("recommend", "-d", tiny_dataset, "--models", tiny_models["bert"]),
        *("--labels-per-class", 6, "--cv-folds", 3, "--n-trials", 2, "--max-length", 12),
        *("-o", tmp_path / "o"),
    )
    assert code == 0, err
    assert "3-fold CV accuracy" in out and "val accuracy" not in out


def test_linear_head_is_offered_for_dense_and_sparse_inputs_and_its_config_applies(
    tmp_path, home, tiny_dataset, tiny_models, one_thread
):
    from autolayer import pipeline
    from autolayer.budgets import Budget
    from autolayer.classifier import FusionTextClassifier, apply
    from autolayer.config import load_config
    from autolayer.space import Space

    rec = pipeline.recommend(
        tiny_dataset,
        [str(tiny_models["bert"]), "tfidf"],
        output_dir=tmp_path / "out",
        budget=Budget(n_trials=6),
        space=Space(heads=("linear",), widths=(16,)),
        labels_per_class=6,
        max_length=12,
    )
    trained = [t for t in rec.search.trials if t.value is not None]
    assert trained
    assert all(trial.head == "linear" for trial in trained)  # TF-IDF too: a linear SVM
    assert any("tfidf" in trial.models for trial in trained)
    linear = next(t for t in trained if t.head == "linear")
    config = pipeline.export(output_dir=tmp_path / "out", trial_number=linear.number)
    config.save(tmp_path / "linear.yaml")
    assert load_config(tmp_path / "linear.yaml").head.kind == "linear"
    result = apply(tmp_path / "linear.yaml", tiny_dataset, tmp_path / "model")
    assert result.accuracy is not None
    clf = FusionTextClassifier.load(tmp_path / "model")
    assert clf.predict(["good great fun"]).shape == (1,)


def test_each_fold_is_scored_at_the_epochs_the_other_folds_chose(monkeypatch):
    # Two folds whose curves peak at opposite epochs: the best epoch of their mean curve
    # would score 0.5 (a maximum over noise); each fold judged where the other peaks, 0.1.
    from autolayer.heads.mlp import MLPHead

    histories = iter([(0.9, 0.1), (0.1, 0.9)])

    def fake_fit(self, *args, **kwargs):
        return HeadFit(0, 0.0, next(histories), 1.0, 0)

    monkeypatch.setattr(MLPHead, "fit", fake_fit)
    y = np.array([0, 1, 0, 1])
    head = make_head("mlp", {"operator": "concat", "epochs": 2})
    result = cross_validate(head, [np.zeros((4, 2))], y, [np.array([0, 1]), np.array([2, 3])])
    assert result.best_val_metric == pytest.approx(0.1)
    assert result.curve == pytest.approx((0.5, 0.5)) and result.best_epoch == 0


@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_head_matches_sklearn_with_fewer_rows_than_features(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 448)).astype(np.float32)
    y = np.arange(32) % n_classes
    x[:, :4] += 2 * np.eye(n_classes, 4)[y]  # some signal, far fewer rows than features
    head = make_head("linear", {})
    head.fit([x], y)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(max_iter=10000, tol=1e-10).fit(scaler.transform(x), y)
    test = rng.normal(size=(200, 448)).astype(np.float32)
    ours = head.predict_proba([test])
    theirs = reference.predict_proba(scaler.transform(test))
    assert np.abs(ours - theirs).max() < 5e-3
    top = np.sort(theirs, axis=1)
    clear = top[:, -1] - top[:, -2] > 1e-2  # a near tie may go either way at 5e-3
    assert clear.mean() > 0.9 and (ours.argmax(1) == theirs.argmax(1))[clear].all()


def test_cross_validated_choice_is_the_smallest_head_within_one_standard_error():
    from autolayer.selection import TrialSummary, within_one_error

    def trial(number, value, params, folds=None):
        attrs = {"params": params, **({"fold_scores": folds} if folds else {})}
        return TrialSummary(number, "COMPLETE", (value,), ("m",), (1,), attrs)

    noisy = [1.0, 2 / 3, 1.0, 2 / 3, 1.0]  # mean 0.867, standard error 0.082
    top = trial(0, 0.8667, 500_000, noisy)
    linear = trial(1, 0.80, 1_538, noisy)
    tiny = trial(2, 0.70, 10, noisy)  # smaller still, but more than one error below
    assert within_one_error([top, linear, tiny]).number == 1
    carved = trial(0, 0.8667, 500_000)  # a validation split: no folds, the top one stands
    assert within_one_error([carved, trial(1, 0.80, 1_538)]).number == 0


def test_a_choice_no_better_than_the_majority_class_is_said():
    """The anchor can stand at a CV accuracy below always answering the majority class (on
    a few labels, by design): the report says so, and that a score on so few rows is noise."""
    from types import SimpleNamespace

    from autolayer.reasons import reasons

    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    prepared = SimpleNamespace(
        reports=(), candidates=(), options=Options(), y_train=y, y_val=y[:0], folds=(y,)
    )

    def said(value, metric="accuracy"):
        prepared.options = Options(metric=metric)
        best = SimpleNamespace(models=("m",), value=value, operator="concat")
        return reasons(prepared, SimpleNamespace(best=best, trials=()), np.ones((1, 1)))

    assert said(0.625) == [
        "its 62.5% is no better than always answering the majority class (62.5%) on these "
        "8 rows; on so few rows a score is mostly noise"
    ]
    assert said(0.75) == [] and said(0.5, metric="macro_f1") == []


def test_a_study_whose_folds_were_lowered_has_one_name_and_resumes(
    tmp_path, home, tiny_dataset, tiny_models, one_thread
):
    """3 labels per class cannot run the 5 folds asked for: recommend and prepare+search
    name the study by the 3 folds that ran, so either resumes what the other started."""
    from autolayer import pipeline
    from autolayer.budgets import Budget
    from autolayer.study import default_study_name

    models, out = [str(tiny_models["bert"])], tmp_path / "out"
    settings = {"labels_per_class": 3, "cv_folds": 5, "max_length": 12}
    rec = pipeline.recommend(
        tiny_dataset, models, output_dir=out, budget=Budget(n_trials=2), **settings
    )
    assert rec.config.dataset["validation"]["cv_folds"] == 3
    data, options = pipeline.restrict(
        load_dataset(tiny_dataset), Options(cv_folds=5, max_length=12), labels_per_class=3
    )
    assert default_study_name(data, models, options) == rec.search.study_name
    prepared = pipeline.prepare(data, models, options=options)
    again = pipeline.search(prepared, output_dir=out, budget=Budget(n_trials=3))
    assert again.study_name == rec.search.study_name
    assert len(again.trials) > len(rec.search.trials)  # the same study, resumed

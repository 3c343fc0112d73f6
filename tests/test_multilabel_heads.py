"""Heads on a multi-label task (issue 30): each kind learns a synthetic indicator target,
gives probabilities [N, K] and survives save and load with the task's thresholds; the
sparse linear head is scikit-learn's one-vs-rest LinearSVC; the late head's out-of-fold
probabilities never see a row's own labels; a label no training row has is never given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier

from autolayer.heads import cross_validate, load_head, make_head
from autolayer.heads.late import stacking_folds
from autolayer.heads.linear import SPARSE_CS, svm
from autolayer.heads.modules import SparseRows, batched_logits
from autolayer.probe import folds as probe_folds
from autolayer.task import MultiLabel

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4
MLP = {"width": 16, "hidden": 16, "lr": 1e-2, "batch_size": 32, "epochs": 40, "patience": 8}
WORDS = [
    ("goal", "match", "team", "coach"),
    ("vote", "senate", "party", "law"),
    ("chip", "code", "robot", "server"),
    ("doctor", "virus", "diet", "clinic"),
]
FILLER = ("the", "a", "today", "news", "said", "people", "new", "week")


def labels(n: int, seed: int) -> np.ndarray:
    """An indicator [n, K] (uint8), one to three labels per row."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, K)) < 0.35).astype(np.uint8)
    y[np.arange(n), rng.integers(0, K, n)] = 1
    return y


def dense(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two inputs: the first sees labels 0 and 1, the second 2 and 3 (plus noise columns);
    each row is the sum of its labels' directions."""
    rng = np.random.default_rng(seed)
    y = labels(n, seed)
    signal = 2.5 * y.astype(np.float32) + rng.normal(size=(n, K))
    a = np.hstack([signal[:, :2], rng.normal(size=(n, 3))])
    b = np.hstack([signal[:, 2:], rng.normal(size=(n, 2))])
    return [a.astype(np.float32), b.astype(np.float32)], y


def texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Short texts: two words of each label a row has, among filler."""
    rng = np.random.default_rng(seed)
    y = labels(n, seed)
    out = []
    for row in y:
        words = [w for k in np.flatnonzero(row) for w in rng.choice(WORDS[k], 2)]
        words += list(rng.choice(FILLER, 4))
        out.append(" ".join(rng.permutation(words)))
    return out, y


def micro_f1(proba: np.ndarray, y: np.ndarray) -> float:
    return float(f1_score(y, proba > 0.5, average="micro"))


def head(kind: str, task: MultiLabel | None = None):
    return make_head(kind, MLP if kind == "mlp" else {}, task=task or MultiLabel())


@pytest.fixture(scope="module")
def tfidf() -> tuple[csr_matrix, np.ndarray, csr_matrix, np.ndarray]:
    train, y = texts(150, seed=0)
    test, y_test = texts(60, seed=1)
    vectorizer = TfidfVectorizer().fit(train)
    return vectorizer.transform(train), y, vectorizer.transform(test), y_test


@pytest.mark.parametrize("kind", ["mlp", "linear", "late"])
def test_each_head_learns_a_multi_label_target(kind: str) -> None:
    train, y = dense(240, seed=0)
    val, y_val = dense(80, seed=1)
    test, y_test = dense(200, seed=2)
    fitted = head(kind)
    fit = fitted.fit(train, y, val, y_val, seed=0)
    proba = fitted.predict_proba(test)
    assert proba.shape == (200, K) and proba.dtype == np.float32
    assert ((proba >= 0) & (proba <= 1)).all()
    assert micro_f1(proba, y_test) > 0.8  # every label of every row (chance: about 0.5)
    assert fit.best_val_metric > 0.8  # micro-F1, the task's default metric


@pytest.mark.parametrize("kind", ["mlp", "linear", "late"])
def test_save_and_load_keep_the_probabilities_and_the_thresholds(kind: str, tmp_path) -> None:
    train, y = dense(120, seed=3)
    thresholds = [0.3, 0.4, 0.5, 0.6]
    fitted = head(kind, MultiLabel(threshold=thresholds, empty="none"))
    fitted.fit(train, y, seed=0)
    fitted.save(tmp_path)
    loaded = load_head(tmp_path)
    assert isinstance(loaded.task, MultiLabel)
    assert loaded.task.params() == fitted.task.params()
    assert loaded.task.params()["threshold"] == thresholds
    assert loaded.metric == "micro_f1"
    test, _ = dense(30, seed=4)
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))


def test_the_sparse_head_is_one_vs_rest_linear_svc_at_the_c_it_chose(tfidf) -> None:
    x, y, x_test, y_test = tfidf
    fitted = head("linear")
    fitted.fit([x], y, seed=0)
    assert fitted.C_ in SPARSE_CS
    reference = OneVsRestClassifier(svm(fitted.C_)).fit(x, y)
    proba = fitted.predict_proba([x_test])
    np.testing.assert_array_equal(proba > 0.5, reference.predict(x_test).astype(bool))
    logits = batched_logits(fitted.net_, [SparseRows(x_test, torch.device("cpu"))]).numpy()
    assert fitted.temperature_ != 1.0  # fitted on out-of-fold decisions
    np.testing.assert_allclose(
        logits / fitted.temperature_, reference.decision_function(x_test), rtol=1e-4, atol=1e-4
    )
    assert micro_f1(proba, y_test) > 0.8


@pytest.mark.parametrize("kind", ["linear", "late"])
def test_a_sparse_input_beside_a_dense_one_fits_and_round_trips(kind, tfidf, tmp_path) -> None:
    x, y, x_test, y_test = tfidf
    rng = np.random.default_rng(0)
    side, side_test = rng.normal(size=(x.shape[0], 3)), rng.normal(size=(x_test.shape[0], 3))
    fitted = head(kind)
    fitted.fit([x, side.astype(np.float32)], y, seed=0)
    fitted.save(tmp_path)
    inputs = [x_test, side_test.astype(np.float32)]
    assert micro_f1(fitted.predict_proba(inputs), y_test) > 0.8
    np.testing.assert_array_equal(
        load_head(tmp_path).predict_proba(inputs), fitted.predict_proba(inputs)
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_a_label_no_training_row_has_is_never_given(sparse: bool, tfidf) -> None:
    """Nor is a label every row has ever withheld: both get a constant bias."""
    if sparse:
        x, y, x_test, _ = tfidf
        train, test = [x], [x_test]
    else:
        train, y = dense(120, seed=5)
        test, _ = dense(40, seed=6)
    y = y.copy()
    y[:, 1], y[:, 3] = 0, 1
    fitted = head("linear", MultiLabel(empty="top"))
    fitted.fit(train, y, seed=0)
    proba = fitted.predict_proba(test)
    assert (proba[:, 1] == 0).all() and (proba[:, 3] == 1).all()
    assert not fitted.task.decide(proba)[:, 1].any()
    empty = [csr_matrix(t.shape) if sparse else np.zeros_like(t) for t in test]
    top = fitted.task.decide(fitted.predict_proba(empty))
    assert not top[:, 1].any()  # "top" on a row with no signal never picks it


def test_the_mlp_trains_on_a_label_no_row_has() -> None:
    train, y = dense(120, seed=7)
    y = y.copy()
    y[:, 2] = 0
    fitted = head("mlp")
    fitted.fit(train, y, seed=0)
    proba = fitted.predict_proba(dense(40, seed=8)[0])
    assert np.isfinite(proba).all() and proba[:, 2].max() < 0.2


def test_the_mlp_starts_each_label_at_its_training_frequency() -> None:
    train, y = dense(120, seed=12)
    fitted = make_head("mlp", {**MLP, "lr": 1e-9, "epochs": 1}, task=MultiLabel())
    fitted.fit(train, y, seed=0)
    prior = y.mean(0)
    bias = fitted.net_.head[-1].bias.detach().numpy()
    np.testing.assert_allclose(bias, np.log(prior / (1 - prior)), atol=1e-4)


def test_a_rows_own_labels_never_reach_its_out_of_fold_probabilities() -> None:
    train, y = dense(60, seed=9)
    late = head("late")
    folds = stacking_folds(late.task.strata(y), seed=0, shrink=False)
    before = late.out_of_fold(train, y, seed=0, folds=folds)
    for row in (0, 21, 44):
        flipped = y.copy()
        flipped[row] = 1 - y[row]
        after = late.out_of_fold(train, flipped, seed=0, folds=folds)
        for member_before, member_after in zip(before, after, strict=True):
            assert member_after.shape == (60, K)
            np.testing.assert_array_equal(member_after[row], member_before[row])
            assert not np.array_equal(member_after, member_before)  # other rows learned it


def test_the_late_meta_learner_reads_each_members_log_odds_of_k_labels() -> None:
    train, y = dense(120, seed=10)
    late = head("late")
    late.fit(train, y, seed=0)
    assert late.meta_weight_.shape == (K, 2 * K) and late.meta_bias_.shape == (K,)
    features = late._features(
        [m.predict_proba([x]) for m, x in zip(late.members_, train, strict=True)]
    )
    assert features.shape == (120, 2 * K) and np.abs(features).max() < 17  # clipped log-odds


def test_cross_validation_takes_an_indicator_target() -> None:
    train, y = dense(90, seed=11)
    folds = [np.arange(i, 90, 3) for i in range(3)]
    cv = cross_validate(head("mlp"), train, y, folds, seed=0)
    assert len(cv.fold_scores) == 3 and 0.5 < cv.best_val_metric <= 1.0


def test_tuned_thresholds_do_not_change_what_the_sparse_head_chooses(tfidf) -> None:
    """The exported head is refit with the trial's tuned thresholds: its C, scale and
    probabilities are those the trial's head (untuned task) had."""
    x, y, x_test, _ = tfidf
    plain, odd = head("linear"), head("linear", MultiLabel(threshold=[0.9] * K))
    plain.fit([x], y, seed=0)
    odd.fit([x], y, seed=0)
    assert (odd.C_, odd.temperature_) == (plain.C_, plain.temperature_)
    np.testing.assert_array_equal(odd.predict_proba([x_test]), plain.predict_proba([x_test]))
    assert odd.task.threshold == [0.9] * K  # its decisions still use the tuned rule


def test_tuned_thresholds_do_not_change_the_late_heads_probabilities(tfidf) -> None:
    """Its members choose their C on the untuned task too."""
    x, y, x_test, _ = tfidf
    side = np.random.default_rng(0).normal(size=(x.shape[0] + x_test.shape[0], 3))
    train, test = [x, side[: x.shape[0]]], [x_test, side[x.shape[0] :]]
    plain, odd = head("late"), head("late", MultiLabel(threshold=[0.9] * K, empty="none"))
    plain.fit(train, y, seed=0)
    odd.fit(train, y, seed=0)
    assert odd.members_[0].C_ == plain.members_[0].C_  # the TF-IDF member
    np.testing.assert_array_equal(odd.predict_proba(test), plain.predict_proba(test))


def test_the_late_heads_folds_are_the_probes_and_keep_their_number() -> None:
    """A label of two rows does not shrink the out-of-fold folds to two: the late head,
    the linear head's CV and the probe share one fold rule for multi-label strata."""
    train, y = dense(60, seed=14)
    y = y.copy()
    y[:, 3] = 0
    y[[5, 40], 3] = 1  # label 3 on two rows
    late = head("late")
    strata = late.task.strata(y)
    shared = probe_folds(strata, 3, 0, shrink=False)
    assert len(stacking_folds(strata, seed=0, shrink=False)) == 3 == len(shared)
    default = late.out_of_fold(train, y, seed=0)
    given = late.out_of_fold(train, y, seed=0, folds=shared)
    for a, b in zip(default, given, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_late_head_leaves_the_global_torch_generator_alone() -> None:
    train, y = dense(60, seed=15)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    head("late").fit(train, y, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_head_json_records_task_params_only_when_there_are_some(tmp_path) -> None:
    import json

    train, y = dense(60, seed=16)
    single = make_head("linear", {})
    single.fit(train, y.argmax(1), seed=0)
    single.save(tmp_path / "single")
    assert "task_params" not in json.loads((tmp_path / "single" / "head.json").read_text())
    multi = head("linear", MultiLabel(threshold=0.4))
    multi.fit(train, y, seed=0)
    multi.save(tmp_path / "multi")
    record = json.loads((tmp_path / "multi" / "head.json").read_text())
    assert record["task_params"] == {"threshold": 0.4, "empty": "top"}
    assert load_head(tmp_path / "single").task.params() == {}

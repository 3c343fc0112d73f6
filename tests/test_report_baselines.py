"""The report's baselines: each simple baseline's validation score and latency, the
recommendation's margin over it, and a line when the recommendation is itself one; a study
without baselines reports as before."""

from __future__ import annotations

import re

import pytest

from autolayer import report
from autolayer.selection import BASELINE, REPEAT, SearchResult, TrialSummary


@pytest.fixture(autouse=True)
def piped(monkeypatch):
    """Not a terminal: full-width tables, no colour codes in the captured text."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)


def _baseline(number: int, value: float, model: str, layer: int, latency: float, **attrs):
    attrs = {BASELINE: True, "latency_ms": latency, **attrs}
    return TrialSummary(number, "COMPLETE", (value,), (model,), (layer,), attrs, head="linear")


def _searched(number: int, value: float) -> TrialSummary:
    head = {"operator": "sum", "width": 256, "lr": 1e-3}
    attrs = {"latency_ms": 12.5}
    return TrialSummary(
        number, "COMPLETE", (value,), ("minilm", "tfidf"), (5, 0), attrs, head_params=head
    )


def _rows(out: str) -> dict[str, list[str]]:
    """The baselines table's rows by trial number: their cells, stripped."""
    table = out[out.index("baselines: each model's best layer alone") :]
    rows = [line.split("│")[1:-1] for line in table.splitlines() if line.startswith("│")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_each_baseline_shows_its_score_latency_and_the_margin_from_raw_values(capsys):
    best = _searched(7, 0.97624)
    tfidf = _baseline(0, 0.97196, "tfidf", 0, 0.4123)
    minilm = _baseline(1, 0.9512, "minilm", 5, 3.25)
    trials = (best, tfidf, minilm)
    result = SearchResult("s", "sqlite://", best, trials, (best,), baselines=(tfidf, minilm))
    report.search_summary(result, "accuracy")
    out = capsys.readouterr().out
    assert "val accuracy %" in out[out.index("baselines") :]
    rows = _rows(out)
    # 97.624 - 97.196 = 0.428: +0.43 from the raw scores (+0.42 had they been rounded first)
    assert rows["0"] == ["0", "tfidf", "—", "linear", "97.20", "0.41", "+0.43", ""]
    assert rows["1"] == ["1", "minilm", "5", "linear", "95.12", "3.25", "+2.50", ""]
    assert "itself a baseline" not in out


def test_a_baseline_recommended_says_so_and_keeps_the_one_se_reason(capsys):
    top = _searched(9, 0.9941)
    tfidf = _baseline(0, 0.9903, "tfidf", 0, 0.41)
    minilm = _baseline(1, 0.9712, "minilm", 5, 3.0)
    why = (
        "the one-standard-error rule: #0 scored 0.9903, within one standard error (0.6 pt) "
        "of #9's 0.9941, at 1/30 of its latency"
    )
    trials = (top, tfidf, minilm)
    result = SearchResult("s", "sqlite://", tfidf, trials, (top,), why=why, baselines=trials[1:])
    report.search_summary(result, "accuracy", "5-fold CV")
    out = capsys.readouterr().out
    assert f"recommended trial #0: 0.9903 ({why})" in out, out
    assert "5-fold CV accuracy %" in out[out.index("baselines") :]
    rows = _rows(out)
    assert rows["0"][6:] == ["—", "recommended"]
    assert rows["1"][6] == "+1.91"
    assert (
        "the recommendation is itself a baseline: tfidf with a linear head — nothing searched "
        "beat it by more than noise"
    ) in out
    model = SearchResult("s", "sqlite://", minilm, trials, (top,), baselines=trials[1:])
    report.search_summary(model, "accuracy")
    assert "itself a baseline: minilm layer 5 with a linear head" in capsys.readouterr().out


def test_a_study_without_baselines_reports_as_before(capsys):
    trial = _searched(0, 0.9)
    result = SearchResult("s", "sqlite://", trial, (trial,), (trial,), why="a rule chose it")
    report.search_summary(result, "accuracy")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == ["study s (sqlite://): 1 complete", "best trial #0: 0.9000 (a rule chose it)"]
    assert not re.search("baseline", "\n".join(lines))


def test_baselines_count_as_trained_and_their_layers_as_searched(capsys):
    """Outside the trial budget, but trained: not among the never-trained, and the layer
    table marks their layers "searched"."""
    best, tfidf = _searched(2, 0.9), _baseline(0, 0.8, "tfidf", 0, 0.4)
    minilm = _baseline(1, 0.85, "minilm", 3, 2.0)
    repeat = TrialSummary(3, "COMPLETE", (0.85,), ("minilm",), (3,), {REPEAT: 1}, head="linear")
    trials = (best, minilm, repeat, tfidf)
    result = SearchResult("s", "sqlite://", best, trials, (best,), baselines=(minilm, tfidf))
    report.search_summary(result, "accuracy")
    out = capsys.readouterr().out
    assert "4 complete (1 infeasible, surplus or repeated, never trained)" in out, out
    assert report._tried(trials) == {"minilm": {3, 5}, "tfidf": {0}}


def test_progress_lines_count_baselines_beside_the_trial_budget(capsys):
    """Baselines train first and outside the budget: "0/10 trials" with a best score needs
    them named, not counted among the trials."""
    import optuna

    from autolayer import progress

    now = [0.0]
    study = optuna.create_study(direction="maximize")
    with progress.trial_progress(10, clock=lambda: now[0]) as on_trial:
        for at, value, attrs in ((0, 0.8, {BASELINE: True}), (50, 0.9, {})):
            now[0] = at
            trial = optuna.trial.create_trial(value=value, user_attrs=attrs)
            study.add_trial(trial)
            on_trial(study, trial)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "search: 0/10 trials (0 %), best 80.0 %, 1 baseline, 0 s elapsed",
        "search: 1/10 trials (10 %), best 90.0 %, 1 baseline, 50 s elapsed",
    ]

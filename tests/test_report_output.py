"""Output to a file or pipe (CI logs, nohup): full-width tables, plain rate-limited progress
lines instead of live bars; and the Pareto front of a multi-objective search."""

from __future__ import annotations

import re
import shutil

import pytest

from autolayer import progress, report
from autolayer.cli import main
from autolayer.selection import SearchResult, TrialSummary


@pytest.fixture(autouse=True)
def piped(monkeypatch):
    """capsys streams are not terminals; make sure the environment does not say otherwise,
    and pin rich's fallback width to 80 columns, where tables used to be cut."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")


class FakeClock:
    """A clock tests move by hand, so rate limiting is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_plain_progress_lines_are_rate_limited(capsys):
    clock = FakeClock()
    with progress.progress_bar("minilm · demo/train", 1000, clock=clock) as advance:
        # 10 % but only 4 s after the first line; 30 s but only 1 % after the second
        for at, n in ((1, 10), (5, 200), (40, 10), (45, 770), (90, 10)):
            clock.now = at
            advance(n)
    assert _lines(capsys.readouterr().err) == [
        "minilm · demo/train: 10/1000 texts (1 %), 10.0 texts/s, 1 s elapsed",
        "minilm · demo/train: 220/1000 texts (22 %), 5.5 texts/s, 40 s elapsed",
        "minilm · demo/train: 1000/1000 texts (100 %), 11.1 texts/s, 90 s elapsed",
    ]


def test_plain_progress_prints_nothing_before_work_starts_and_no_duplicate_final(capsys):
    clock = FakeClock()
    with progress.progress_bar("m · d/train", 40, clock=clock):
        pass
    assert capsys.readouterr().err == ""
    with progress.progress_bar("m · d/train", 40, clock=clock) as advance:
        advance(40)  # a cache hit: one step does it all
    assert len(_lines(capsys.readouterr().err)) == 1


def test_trial_lines_count_the_studys_trained_trials_and_show_the_best_of_the_front(capsys):
    import optuna

    clock = FakeClock()
    study = optuna.create_study(directions=["maximize", "minimize"])

    def finish(state: str, values=None, **attrs) -> None:
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], values=values, user_attrs=attrs
        )
        study.add_trial(trial)
        on_trial(study, trial)

    with progress.trial_progress(10, clock=clock) as on_trial:
        finish("PRUNED", infeasible="latency")
        clock.now = 50
        finish("COMPLETE", (0.8, 1.0))
        clock.now = 60
        finish("COMPLETE", (0.9, 2.0))
    assert _lines(capsys.readouterr().err) == [
        "search: 0/10 trials (0 %), 0 s elapsed",
        "search: 1/10 trials (10 %), best 80.0 %, 50 s elapsed",
        "search: 2/10 trials (20 %), best 90.0 %, 60 s elapsed",
    ]
    with progress.trial_progress(10, clock=clock) as on_trial:  # resumed: counts from 2
        finish("COMPLETE", (0.7, 1.0))
    assert _lines(capsys.readouterr().err) == [
        "search: 3/10 trials (30 %), best 90.0 %, 0 s elapsed"
    ]


def test_terminal_is_decided_per_call_and_keeps_the_rich_bar(capsys, monkeypatch):
    with progress.progress_bar("m · d/train", 4, clock=FakeClock()) as advance:
        advance(4)
    assert "4/4 texts" in capsys.readouterr().err
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # the same console now sees a terminal
    with progress.progress_bar("m · d/train", 4) as advance:
        advance(4)
    err = capsys.readouterr().err
    assert "texts (" not in err and "\x1b[?25l" in err  # rich's live bar hides the cursor


def _trial(number: int, values: tuple[float, ...], model: str) -> TrialSummary:
    head = {"operator": "concat", "width": 256, "lr": 1e-3}
    return TrialSummary(number, "COMPLETE", values, (model,), (2,), head_params=head)


def test_search_summary_shows_the_pareto_front_rounded_only_when_multi_objective(capsys):
    front = (_trial(3, (0.875, 1.23456789), "big"), _trial(1, (0.8125, 0.4567891), "small"))
    result = SearchResult("s", "sqlite://", front[0], front, front)
    report.search_summary(result, "accuracy")
    out = capsys.readouterr().out
    assert "Pareto front" in out and "val accuracy %" in out
    assert re.search(r"│\s+3 │\s+big │.*│\s+87\.5 │\s+1\.23 │", out), out
    assert re.search(r"│\s+1 │\s+small │.*│\s+81\.2 │\s+0\.46 │", out), out
    assert "1.2345" not in out
    single = (_trial(0, (0.9,), "m"),)
    report.search_summary(SearchResult("s", "sqlite://", single[0], single, single))
    assert "Pareto" not in capsys.readouterr().out


def test_the_trials_table_asks_the_head_for_its_operator_and_width(capsys):
    """A pair shows its operator, one model "—", a head without an operator its own name;
    a head without a width "—"."""
    pair = TrialSummary(0, "COMPLETE", (0.9,), ("a", "b"), (1, 2), head_params={
        "operator": "sum", "width": 512, "lr": 1e-3,
    })  # fmt: skip
    linear = TrialSummary(1, "COMPLETE", (0.8,), ("a",), (1,), head="linear")
    report.trials_table([pair, _trial(2, (0.7,), "c"), linear], "accuracy")
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if "│" in line]
    cells = {row[1].strip(): (row[4].strip(), row[5].strip()) for row in rows}
    assert cells == {"0": ("sum", "512"), "2": ("—", "256"), "1": ("linear head", "—")}


def test_piped_search_prints_full_width_tables_and_progress_lines(
    capsys, tmp_path, tiny_models, tiny_dataset, home
):
    model = tmp_path / ("a_model_folder_whose_name_is_long_enough_to_be_cut_at_80_columns" * 2)
    shutil.copytree(tiny_models["bert"], model)
    out_dir = tmp_path / "out"
    args = ["search", "-d", str(tiny_dataset), "--models", str(model), "-o", str(out_dir)]
    code = main([*args, "--n-trials", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    trials = out[out.index("best trials") :]
    rows = [line for line in trials.splitlines() if line.startswith("│")]
    assert rows and all(str(model) in row for row in rows), out
    assert "…" not in out and "Pareto" not in out
    assert re.search(r"· tiny/train: 40/40 texts \(100 %\), [\d.]+ texts/s, \d+ s elapsed", err)
    line = r"^search: 2/2 trials \(100 %\), best [\d.]+ %, 1 baseline, \d+ s elapsed$"
    assert re.search(line, err, re.M), err  # the model's baseline, outside the 2 trials


def test_multi_objective_search_prints_the_pareto_front(capsys, tiny_models, tiny_dataset, home):
    args = ["search", "-d", str(tiny_dataset), "--models", str(tiny_models["bert"])]
    code = main([*args, "--n-trials", "4", "--multi-objective", "-o", str(home / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Pareto front" in out
    table = out[out.index("Pareto front") : out.index("best trials")]
    assert re.search(r"│\s+\d+ │ .*bert │ .* │\s+[\d.]+ │\s+\d+\.\d\d │", table), table


def test_layers_offered_to_a_search_that_never_tried_them_are_not_called_searched(capsys):
    report.layer_table("m", [0.5, 0.8, 0.7], [0.0] * 3, [0.5] * 3, offered=(1, 2), tried={1})
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if "│" in line}
    assert "searched" in rows["1"] and "offered" not in rows["1"]
    assert "offered" in rows["2"] and "searched" not in rows["2"]
    assert "offered" not in rows["0"] and "searched" not in rows["0"]


def test_an_anchor_kept_by_the_anchor_rule_is_recommended_not_best(capsys):
    anchor, top = _trial(0, (0.117,), "mpnet"), _trial(4, (0.483,), "smollm2")
    why = "the anchor, mpnet's last layer with a linear head: no trial beat it by 2.9 standard"
    result = SearchResult("s", "sqlite://", anchor, (top, anchor), (top,), why=why, anchor=True)
    report.search_summary(result, "accuracy")
    out = capsys.readouterr().out
    assert "recommended (anchor) trial #0: 0.1170 (the anchor, mpnet" in out, out
    assert "best trial" not in out
    one_se = SearchResult("s", "sqlite://", anchor, (top, anchor), (top,), why="within one")
    report.search_summary(one_se, "accuracy")
    out = capsys.readouterr().out
    assert "recommended trial #0: 0.1170 (within one)" in out and "best trial" not in out

"""Progress while work runs: over texts (an extraction) and over trials (the search).

A terminal gets a live rich bar; a file or pipe (a CI log, nohup) gets rate-limited plain
lines, since a live bar writes nothing there until it ends. This is the live counterpart of
``report``, which renders results once work is done: both write through ``report``'s
consoles (progress on stderr, so results on stdout stay clean), and these two modules are
the only ones that print. The CLI hands ``progress_bar`` to the pipeline as its progress
callback and ``trial_progress``'s callback to the search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from autolayer.report import errors

LINE_EVERY_S = 30.0
"""Plain progress lines (logs) are at least this many seconds apart..."""
LINE_EVERY_PART = 10
"""...and at least this part (1/10) of the total apart: whichever is rarer wins."""

Clock = Callable[[], float]


def progress_bar(
    description: str, total: int, *, clock: Clock = time.monotonic
) -> AbstractContextManager[Callable[[int], None]]:
    """Progress over ``total`` texts; the context yields the ``advance(n)`` callback the
    library calls. A terminal gets a live rich bar; a file or pipe gets plain lines, since a
    live bar writes nothing there until it ends (a 15-minute run logged nothing)."""
    if errors.is_terminal:
        return _texts_bar(description, total)
    return _texts_lines(description, total, clock)


@contextmanager
def _texts_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar with texts/s.

    The bar appears at the first ``advance``, so work that fails before it starts (a bad
    model spec, say) prints only its error line.
    """
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=errors, transient=True)
    task = bar.add_task(escape(description), total=total, rate="")

    def advance(n: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.advance(task, n)
        speed = bar.tasks[task].speed
        if speed:
            bar.update(task, rate=f"{speed:6.1f} texts/s")

    try:
        yield advance
    finally:
        bar.stop()


class _Lines:
    """Rate-limited plain progress lines for logs.

    The first line comes with the first progress (work that fails before it prints only its
    error), then one only when both ``LINE_EVERY_S`` seconds and a tenth of the total have
    passed since the last, so a long run logs about a dozen lines and a short one two;
    ``finish`` adds the final count (not after an error, whose own line says what happened).
    ``clock`` is injectable so tests need not sleep.
    """

    def __init__(self, describe: Callable[[int, float], str], total: int, clock: Clock):
        self.describe, self.clock = describe, clock
        self.step = max(1, math.ceil(total / LINE_EVERY_PART))
        self.start = clock()
        self.done = 0
        self.last: tuple[int, float] | None = None  # (done, time) at the last line

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.last is None or (
            now - self.last[1] >= LINE_EVERY_S and self.done - self.last[0] >= self.step
        ):
            self._print(now)

    def finish(self) -> None:
        """The final count, unless the last line said it already or work never started."""
        if self.last is not None and self.last[0] != self.done:
            self._print(self.clock())

    def _print(self, now: float) -> None:
        self.last = (self.done, now)
        line = self.describe(self.done, now - self.start)
        errors.print(line, markup=False, highlight=False, soft_wrap=True)


def _percent(done: int, total: int) -> str:
    return f"{100 * done / max(total, 1):.0f} %"


@contextmanager
def _texts_lines(description: str, total: int, clock: Clock) -> Iterator[Callable[[int], None]]:
    """Plain lines like ``minilm · demo/train: 400/1000 texts (40 %), 12.3 texts/s, ...``."""

    def describe(done: int, elapsed: float) -> str:
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "—"
        return (
            f"{description}: {done}/{total} texts ({_percent(done, total)}), "
            f"{rate} texts/s, {elapsed:.0f} s elapsed"
        )

    lines = _Lines(describe, total, clock)
    yield lines.advance
    lines.finish()


def trial_progress(
    n_trials: int, budget=None, *, clock: Clock = time.monotonic
) -> AbstractContextManager[Callable]:
    """Progress over the trials trained within ``budget``; the context yields an Optuna
    callback. A rich bar on a terminal, rate-limited plain lines in a file or pipe (see
    ``progress_bar``)."""
    if errors.is_terminal:
        return _trials_bar(n_trials, budget)
    return _trial_lines(n_trials, budget, clock)


def _trained(study, budget) -> int:
    """Trials the study has trained within ``budget``, earlier runs' and other workers'
    included, as the search counts them to stop: ``n_trials`` is the study's total, so a
    resumed run's bar starts where the last one stopped."""
    from autolayer.selection import trained_count

    return trained_count(study, budget)[0]


def _baselines(study) -> str:
    """The baselines the study has finished, as ", 3 baselines" ("" for none): they train
    first and outside the trial budget, so a line said "0/30 trials, best 97.2 %" as if
    that best came from nowhere."""
    import optuna

    from autolayer.selection import BASELINE

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    n = sum(bool(t.user_attrs.get(BASELINE)) for t in done)
    return f", {n} baseline{'s' * (n != 1)}" if n else ""


def _best_value(study) -> float | None:
    """The best metric so far: the highest first value on the front (a multi-objective
    study's ``best_trials`` is its whole Pareto front, in no useful order)."""
    try:
        return max((t.values[0] for t in study.best_trials), default=None)
    except ValueError:  # a single-objective study with no completed trial yet
        return None


@contextmanager
def _trials_bar(n_trials: int, budget) -> Iterator[Callable]:
    """A rich bar over trained trials with the best metric so far."""
    bar = Progress(
        TextColumn("[bold]search"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )
    task = bar.add_task("search", total=n_trials, best="")

    def on_trial(study, trial) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=_trained(study, budget))
        best = _best_value(study)
        if best is not None:
            bar.update(task, best=f"best {100 * best:.1f}%{_baselines(study)}")

    try:
        yield on_trial
    finally:
        bar.stop()


@contextmanager
def _trial_lines(n_trials: int, budget, clock: Clock) -> Iterator[Callable]:
    """Plain lines like ``search: 3/30 trials (10 %), best 81.5 %, 95 s elapsed``."""
    best: float | None = None
    baselines = ""

    def describe(done: int, elapsed: float) -> str:
        shown = "" if best is None else f", best {100 * best:.1f} %"
        return (
            f"search: {done}/{n_trials} trials ({_percent(done, n_trials)}){shown}"
            f"{baselines}, {elapsed:.0f} s elapsed"
        )

    lines = _Lines(describe, n_trials, clock)

    def on_trial(study, trial) -> None:
        nonlocal best, baselines
        best, baselines = _best_value(study), _baselines(study)
        lines.advance(_trained(study, budget) - lines.done)

    yield on_trial
    lines.finish()

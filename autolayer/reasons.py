"""Why a recommendation looks the way it does, in short sentences for the report: each
model's best layer against its last (beyond the probe's noise or within it), what the screen
said of a chosen pair, what fusion gains over the best single model, and a score no better
than always answering the majority class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autolayer.candidates import ModelScores, Prepared
from autolayer.complementarity import PairEstimate
from autolayer.selection import OVER_BUDGET, SearchResult

FEW_ROWS = 100  # below it, a score judged on these rows is said to be mostly noise


def reasons(prepared: Prepared, result: SearchResult, cka: np.ndarray) -> list[str]:
    """Short sentences that say why the recommendation looks the way it does."""
    out = []
    for report in prepared.reports:
        if report.n_hidden_states == 1:  # one state (TF-IDF): no layer to choose
            continue
        best, last = report.best_layer, report.last_layer
        metric = prepared.options.metric
        score = getattr(report.scores, metric)
        gap = 100 * (score[best] - score[last])
        error = 100 * _gap_error(report, best, metric)
        name = metric.replace("_", "-")
        if best == last:
            out.append(f"{report.model}: the last layer ({last}) is its best layer by probe")
        elif abs(gap) <= 2 * error:
            out.append(
                f"{report.model}: layer {best}/{last} and the last layer differ by {gap:+.1f} "
                f"± {error:.1f} pt of probe {name}, within two standard errors: no clear best"
            )
        else:
            out.append(
                f"{report.model}: layer {best}/{last} beats the last layer by {gap:.1f} "
                f"± {error:.1f} pt (probe CV {name} {100 * score[best]:.1f}% "
                f"vs {100 * score[last]:.1f}%)"
            )
    names = [c.name for c in prepared.candidates]
    best = result.best
    if len(best.models) > 1:
        i, j = names.index(best.models[0]), names.index(best.models[1])
        out.append(_pair_reason(prepared.pairs, best.models, cka[i, j]))
    singles = [
        t
        for t in result.trials
        if t.state == "COMPLETE" and len(t.models) == 1 and OVER_BUDGET not in t.attrs
    ]
    top_single = max(singles, key=lambda t: t.value) if singles else None
    if top_single is not None and len(best.models) > 1 and best.value > top_single.value:
        out.append(
            f"fusion ({best.operator}) beats the best single-model trial "
            f"({top_single.models[0]} layer {top_single.layers[0]}) by "
            f"{100 * (best.value - top_single.value):.1f} pt on validation"
        )
    return out + _no_better_than_majority(prepared, best.value)


def _no_better_than_majority(prepared: Prepared, score: float) -> list[str]:
    """Say so when the chosen score does not beat always answering the majority class: on
    a few labels the anchor can stand at a CV accuracy below it (and does better on test
    than the trial that scored higher: ``studies/results/fewshot``), which a reader would
    otherwise take for a broken result. Single-label only: label sets have no majority
    class (and no plain accuracy)."""
    judged = prepared.y_train if prepared.folds else prepared.y_val
    if prepared.options.metric != "accuracy" or judged.ndim != 1:
        return []
    majority = float(np.bincount(judged).max() / len(judged))
    if score > majority:
        return []
    noise = "; on so few rows a score is mostly noise" if len(judged) < FEW_ROWS else ""
    return [
        f"its {100 * score:.1f}% is no better than always answering the majority class "
        f"({100 * majority:.1f}%) on these {len(judged):,} rows{noise}"
    ]


def _gap_error(report: ModelScores, layer: int, metric: str) -> float:
    """Standard error of a layer's probe score minus the last layer's, from their spread
    over the folds (as if independent): on a few dozen texts it is often larger than the
    gap itself."""
    std = getattr(report.scores, f"{metric}_std")
    spread = std[layer] ** 2 + std[report.last_layer] ** 2
    return float(np.sqrt(spread / max(report.scores.n_folds, 1)))


def _pair_reason(pairs: Sequence[PairEstimate], models: Sequence[str], similarity: float) -> str:
    """What the screen's probe said about the chosen pair (CKA only as similarity)."""
    a, b = models[:2]
    found = [p for p in pairs if set(p.models) == {a, b}]
    if not found:
        return f"{a} + {b}: linear CKA similarity {similarity:.2f}"  # no estimate was made
    pair = found[0]
    cka = "" if np.isnan(similarity) else f"; linear CKA similarity {similarity:.2f}"
    return (
        f"{a} + {b}: a linear probe on both scores {100 * pair.gain:+.1f} "
        f"± {100 * pair.gain_se:.1f} pt against the better alone on {pair.n_examples:,} "
        f"held-out rows{cka}"
    )

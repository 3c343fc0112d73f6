"""The few-label anchor: with a few labels per class, recommend what a practitioner would
use anyway (a sentence encoder's last layer under logistic regression) unless a searched
configuration beats it clearly, on the same cross-validation folds.

Why: choosing among four models and all their layers by cross-validation over a few dozen
texts is mostly noise, and the winner of many noisy comparisons is the luckiest, not the
best. On 5 SST-2 draws each of 8, 16, 32 and 64 labels per class, the (model, layer) with
the best CV probe score was never better on test than mpnet's last layer + LR, and up to
11 points worse at 8 per class (``studies/fewshot/priors.py``, results in
``studies/results/fewshot/``). A trial must therefore beat the anchor by a margin no lucky
trial among dozens is likely to reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Protocol

import numpy as np

from autolayer import zoo
from autolayer.errors import AutolayerError, ConfigError
from autolayer.sources import SourceRecord

AUTO, NONE = "auto", "none"
HEAD = "linear"  # the anchor's head, by definition: logistic regression on its last layer
ALPHA = 0.05  # family-wise: the chance that any of the trials beats the anchor by luck


class _Trial(Protocol):
    models: tuple[str, ...]
    layers: tuple[int, ...]
    head: str
    values: tuple[float, ...] | None
    attrs: dict


def resolve(anchor: str | None, models: Mapping[str, SourceRecord]) -> str | None:
    """The anchor model of a pool (its records, by name): ``None`` or ``"none"``: no
    anchor; ``"auto"``: the largest sentence encoder of the pool (most parameters), or none
    when the pool has no sentence encoder; otherwise a model of the pool, which must be
    dense (its last layer gets a linear head)."""
    if anchor is None or anchor == NONE:
        return None
    if anchor == AUTO:
        encoders = [m for m, rec in models.items() if not rec.sparse and rec.sentence_encoder]
        if not encoders:
            return None
        return max(encoders, key=lambda m: models[m].parameters)
    anchor = _in_pool(anchor, models)
    if models[anchor].sparse:
        raise ConfigError(
            f"anchor {anchor!r} is sparse: an anchor is a dense model whose last layer "
            "gets a linear head",
            params=("anchor",),
        )
    return anchor


def _in_pool(anchor: str, models: Mapping[str, SourceRecord]) -> str:
    """The pool's spelling of ``anchor``: the same model may be named by its zoo name, hub
    id or folder (``mpnet``, ``sentence-transformers/all-mpnet-base-v2``), so names are
    compared by what they load. The anchor is resolved locally only (no download, no GGUF
    conversion): a model that is not on disk is not in the pool either."""
    if anchor in models:
        return anchor
    hub = {m: zoo.ZOO[m].hub_id for m in models if m in zoo.ZOO}
    alias = zoo.ZOO[anchor].hub_id if anchor in zoo.ZOO else None
    same = [m for m in models if m == alias or hub.get(m) == anchor]
    if not same and not anchor.endswith(".gguf") and "::" not in anchor:
        try:
            identity = zoo.resolve(anchor, allow_hub=False).identity
        except AutolayerError:
            identity = None
        same = [m for m, record in models.items() if identity and record.identity == identity]
    if not same:
        raise ConfigError(
            f"anchor {anchor!r} is not one of the models ({', '.join(models)})",
            params=("anchor",),
        )
    return same[0]


def trial_params(anchor: str, n_states: int) -> dict:
    """The Optuna parameters of the anchor's model and layer: its last layer alone. Its
    head (:data:`HEAD`) is the caller's to fix, under the parameter name the space gives
    it (:func:`autolayer.space.fixed_head`)."""
    return {"models": anchor, f"layer:{anchor}": n_states - 1}


def is_anchor(trial: _Trial, anchor: str, layer: int) -> bool:
    return trial.models == (anchor,) and trial.layers == (layer,) and trial.head == HEAD


def against_anchor(
    complete: Sequence[_Trial],
    anchor: str,
    layer: int,
    alpha: float = ALPHA,
    stopped: bool = False,
) -> tuple[_Trial, str] | None:
    """The recommended trial of ``complete`` (best first, cross-validated): the anchor's,
    unless some trial beats it by more than ``z`` standard errors of the difference (see
    :func:`_beats`), ``z`` being Bonferroni's for ``alpha`` over the other trials (2.9 for
    30): each trial is one more chance to beat the anchor by luck. Then the best of those.
    ``None`` when the anchor's trial is not among them (not run yet, or failed). The second
    item says why, for the report (the anchor, or what beat it); ``stopped``: the search
    stopped after the anchor, which no trial could beat (:func:`unbeatable`)."""
    found = [t for t in complete if is_anchor(t, anchor, layer)]
    if not found:
        return None
    base = found[0]
    z = margin_z(len(complete) - 1, alpha)
    winners = [t for t in complete if _beats(t, base, z)]
    if not winners:
        top = complete[0]
        if stopped and top is base:
            return base, (
                f"the anchor, {anchor}'s last layer with a linear head: on "
                f"{base.attrs['n_rows']} held-out texts not even a perfect score could beat its "
                f"{base.values[0]:.4f} by the margin the budget's trials need, so the search "
                "stopped after it"
            )
        if top is base:
            return base, f"the anchor, {anchor}'s last layer with a linear head, scored best"
        return base, (
            f"the anchor, {anchor}'s last layer with a linear head: no trial beat it by "
            f"{z:.1f} standard errors (the best, #{_number(top)}, scored "
            f"{top.values[0]:.4f} against its {base.values[0]:.4f})"
        )
    chosen = winners[0]
    reason = (
        f"it beat the anchor ({anchor}'s last layer, linear head, {base.values[0]:.4f}) by "
        f"more than {z:.1f} standard errors"
    )
    if chosen is not complete[0]:
        reason += f"; #{_number(complete[0])} scored higher, but not by that margin"
    return chosen, reason


def margin_z(comparisons: int, alpha: float = ALPHA) -> float:
    """Standard errors a trial must win by: Bonferroni's z for ``alpha`` over
    ``comparisons`` trials (1.6 for one, 2.9 for 29)."""
    return NormalDist().inv_cdf(1 - alpha / max(comparisons, 1))


def unbeatable(
    score: float,
    n_rows: int,
    n_trials: int,
    alpha: float = ALPHA,
    configurations: int | None = None,
) -> bool:
    """Whether even a perfect score could not beat the anchor's ``score`` on ``n_rows``
    held-out rows by the margin ``n_trials`` trials need (see :func:`_beats`). Then the
    search cannot change the answer and stops after the anchor: with 16 texts and 30
    trials, any anchor scoring 0.58 or more. A space of fewer distinct ``configurations``
    (linear heads only: one is never trained twice) gives fewer chances to beat it by luck,
    so a smaller margin: counting ``n_trials`` would stop a search that could still win."""
    trials = n_trials if configurations is None else min(n_trials, configurations)
    return difference_z(1.0, score, n_rows) <= margin_z(trials - 1, alpha)


def difference_z(a: float, b: float, n: int) -> float:
    """Standard errors by which a score ``a`` exceeds ``b``, both proportions of ``n``
    held-out rows, as if independent: Agresti and Caffo's difference of two proportions,
    each with one success and one failure added (American Statistician, 2000).

    Without the added counts (Wald's error) a perfect score has no variance, and on 16
    texts a fusion that scored 16/16 by luck "beat" an anchor at 0.63 by 3.1 errors, then
    scored 61 % on test against the anchor's 80 % (an SST-2 draw of 8 labels per class).
    For macro-F1 the same formula is a heuristic of the right size; no closed form exists."""
    pa, pb = (a * n + 1) / (n + 2), (b * n + 1) / (n + 2)
    error = np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / (n + 2))
    return float((pa - pb) / error)


def _beats(trial: _Trial, base: _Trial, z: float) -> bool:
    """Whether ``trial``'s CV score exceeds the anchor's by more than ``z`` standard errors
    of the difference (:func:`difference_z`) over the held-out rows.

    Deliberately conservative: it ignores that both were judged on the same rows (which
    would shrink the error), because the trial tested is the best of dozens, whose margin is
    inflated by the choice. The per-fold difference was tried first: with 5 folds its
    spread is itself noise, and on SST-2 draws of 8 labels per class fusions "beat" the
    anchor by 2 of those errors in CV and lost 7-24 pt to it on test."""
    n = base.attrs.get("n_rows")
    if trial is base or not n or trial.values is None or base.values is None:
        return False
    a, b = trial.values[0], base.values[0]
    return bool(a > b and difference_z(a, b, n) > z)


def _number(trial: _Trial) -> int:
    return int(getattr(trial, "number", -1))

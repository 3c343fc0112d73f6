"""Everything autolayer shows a person once work is done: rich tables and PNG plots.

Library modules return data; only this module and ``progress`` (the live bars while work
runs, drawn on this module's stderr console) print, called by the CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table

LOG_WIDTH = 100_000
"""Columns of output to a file or pipe: a log has no right edge, so nothing is cut."""


class _Console(Console):
    """A rich console as wide as its content when it does not write to a terminal.

    Without a terminal rich lays tables out for 80 columns, so ``recommend > log`` showed
    "mini…" and "164,8…" for good. Decided at every print from the console's own stream,
    not at import: the stream can change (tests swap it). Terminals keep their width.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(LOG_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


# Marks the plots as autolayer's, so a later run may replace them (and nothing else).
PNG_METADATA = {"Software": "autolayer"}
console = _Console()
errors = _Console(stderr=True)


def zoo_table(rows: list[dict[str, str]]) -> None:
    table = Table(title="autolayer model zoo (offline, from PyPI packages)")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        style = None if row["installed"] == "no" else "green"
        table.add_row(*row.values(), style=style)
    console.print(table)


def layer_summary(embeddings) -> None:
    """Shape, speed, and per-layer geometry of an extraction (norm and anisotropy).

    Anisotropy is the mean cosine similarity of each embedding to the mean embedding: near 1
    means every text looks the same at that layer (a sign of a pooling problem).
    """
    meta = embeddings.meta
    # seconds of embedding summed over the processes that did it (Ray's actors run side by
    # side): a model's throughput per process, not the wall time, which the bar shows
    source = "cache hit" if meta.get("cached") else f"{meta.get('seconds', 0):.1f} s of embedding"
    n = embeddings.array.shape[0]
    speed = ""
    if not meta.get("cached") and meta.get("seconds"):
        speed = f", {meta['computed_rows'] / meta['seconds']:.1f} texts/s per process"
    console.print(
        f"[bold]{embeddings.model}[/] on {meta.get('source')}: "
        f"array {list(embeddings.array.shape)} ({meta.get('pooling')} pooling), {source}{speed}"
    )
    table = Table(title="per-layer summary")
    for column in ("layer", "depth", "mean norm", "anisotropy"):
        table.add_column(column, justify="right")
    last = meta["n_hidden_states"] - 1
    sample = np.asarray(embeddings.array[: min(n, 2000)], dtype=np.float64)
    for slot, layer in enumerate(embeddings.layers):
        x = sample[:, slot]
        norms = np.linalg.norm(x, axis=1)
        centre = x.mean(axis=0)
        cos = (x @ centre) / np.maximum(norms * np.linalg.norm(centre), 1e-12)
        table.add_row(
            str(layer) + (" (last)" if layer == last else ""),
            f"{layer / max(last, 1):.2f}",
            f"{norms.mean():.1f}",
            f"{cos.mean():.3f}",
        )
    console.print(table)


def error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


METRIC_NAMES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
    "samples_f1": "samples-F1",
    "subset_accuracy": "subset accuracy",
}
"""How a metric is named in a sentence (a plug-in task's metric keeps its own name)."""


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def layer_table(
    title: str, accuracy, std, f1, offered=(), tried=(), names=("accuracy", "macro_f1")
) -> None:
    """Probe accuracy per layer (or the metric ``names`` says first, with its std, then
    a second one); the best and the last layer marked, and the layers the search was
    offered: "searched" when a trained trial used them, "offered" when none did (the
    search stopped early, after the anchor for one)."""
    n = len(accuracy)
    order = np.argsort(-np.asarray(accuracy), kind="stable")
    rank = {int(layer): i + 1 for i, layer in enumerate(order)}
    table = Table(title=title)
    first, second = (f"{metric_name(m)} %" for m in names)
    for column in ("layer", "depth", first, "± std", second, "rank", ""):
        table.add_column(column, justify="right")
    for layer in range(n):
        marks = [
            ("best", layer == order[0]),
            ("last", layer == n - 1),
            ("searched", layer in tried),
            ("offered", layer in offered and layer not in tried),
        ]
        table.add_row(
            str(layer),
            f"{layer / max(n - 1, 1):.2f}",
            f"{100 * accuracy[layer]:.1f}",
            f"{100 * std[layer]:.1f}",
            f"{100 * f1[layer]:.1f}",
            str(rank[layer]),
            ", ".join(m for m, on in marks if on),
            style="bold green" if layer == order[0] else None,
        )
    console.print(table)


def probe_metrics(scores) -> tuple[str, str]:
    """The probe metrics a layer table shows: accuracy and macro-F1 for single labels (as
    ever), else the metric the probe ranked layers by, then macro-F1 (or micro-F1)."""
    if "micro_f1" not in scores.metrics:  # single labels
        return "accuracy", "macro_f1"
    return scores.metric, "macro_f1" if scores.metric != "macro_f1" else "micro_f1"


def _probe_table(scores, model: str, how: str, **marks) -> str:
    """A model's probe layer table, titled with the metric shown first (``how``: how the
    probe was validated); returns that metric."""
    names = probe_metrics(scores)
    layer_table(
        f"{model}: linear-probe {metric_name(names[0])} per layer {how}",
        getattr(scores, names[0]),
        getattr(scores, f"{names[0]}_std"),
        getattr(scores, names[1]),
        names=names,
        **marks,
    )
    return names[0]


def cka_table(names, matrix: np.ndarray, title: str) -> None:
    """Model × model CKA; a model with no value at all (a sparse source such as TF-IDF,
    which CKA on dense features leaves out) shows "—", and the caption says why."""
    skipped = [n for n, row in zip(names, matrix, strict=True) if np.isnan(row).all()]
    caption = None
    if skipped:
        caption = (
            f"—: no CKA for {', '.join(skipped)}: sparse features (TF-IDF: a bag of words, "
            "no layers); CKA here compares dense ones"
        )
    table = Table(title=title, caption=caption)
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for i, name in enumerate(names):
        table.add_row(name, *[_similarity(matrix[i, j]) for j in range(len(names))])
    console.print(table)


def pairs_table(pairs, title: str = "pairs at their best layers: held-out probe") -> None:
    """Each pair's probe accuracy alone and side by side: the gain fusion is predicted by."""
    if not pairs:
        return
    table = Table(title=f"{title} on {pairs[0].n_examples:,} rows")
    for column in ("pair", "alone %", "both %", "gain pt", "oracle pt", "disagree %"):
        table.add_column(column, justify="left" if column == "pair" else "right")
    for p in sorted(pairs, key=lambda p: -p.gain):
        table.add_row(
            escape(" + ".join(p.models)),
            " / ".join(f"{100 * a:.1f}" for a in p.accuracy),
            f"{100 * p.joint:.1f}",
            f"{100 * p.gain:+.1f} ± {100 * p.gain_se:.1f}",
            f"{100 * p.oracle_gain:+.1f}",
            f"{100 * p.disagreement:.1f}",
        )
    console.print(table)


def _similarity(value: float) -> str:
    """A CKA cell; none is computed with a sparse source (TF-IDF)."""
    return "—" if np.isnan(value) else f"{value:.2f}"


def _operator(trial) -> str:
    """The operator column: the fusion operator of a pair ("—" for one model), or, for a
    head that fuses by no operator, its kind ("linear head")."""
    if "operator" not in trial.head_params:
        return f"{trial.head} head"
    return trial.head_params["operator"] if len(trial.models) > 1 else "—"


def _width(trial) -> str:
    """The width column: the head's projection width ("—" for a head without one)."""
    return str(trial.head_params["width"]) if "width" in trial.head_params else "—"


def _describe(kind: str, params: dict, n_models: int) -> str:
    """A head in a few words, as its class says it ("fused by sum, width 256")."""
    from autolayer.heads import head_class

    return head_class(kind).describe(params, n_models)


def judged_by(validation: dict) -> str:
    """How trials were scored, for column headers: a validation split or k-fold CV."""
    folds = validation.get("cv_folds")
    return f"{folds}-fold CV" if folds else "val"


def trials_table(
    trials, metric: str, limit: int = 10, title: str = "best trials", judged: str = "val"
) -> None:
    table = Table(title=title)
    for column in (
        "#",
        "models",
        "layers",
        "operator",
        "width",
        f"{judged} {metric} %",
        "latency ms",
        "memory MB",
        "params",
        "train s",
    ):
        table.add_column(column, justify="right")
    from autolayer.selection import OVER_BUDGET

    within = [t for t in trials if t.state == "COMPLETE" and OVER_BUDGET not in t.attrs]
    for trial in within[:limit]:  # a trial an earlier run's budget allowed is not a choice
        a = trial.attrs
        table.add_row(
            str(trial.number),
            " + ".join(trial.models),
            ",".join(map(str, trial.layers)),
            _operator(trial),
            _width(trial),
            _pct(trial.value),
            f"{a.get('latency_ms', 0):.2f}",
            f"{a.get('memory_mb', 0):.0f}",
            f"{a.get('params', 0):,}",
            f"{a.get('train_seconds', 0):.1f}",
        )
    console.print(table)


def search_summary(result, metric: str = "metric", judged: str = "val") -> None:
    """Trial counts by state and the best trial; the Pareto front too when the study is
    multi-objective (its trials have two values: metric and latency)."""
    from autolayer.selection import counts

    states: dict[str, int] = {}
    untrained = 0
    for trial in result.trials:
        states[trial.state] = states.get(trial.state, 0) + 1
        untrained += not counts(trial.attrs, baselines=True)  # a baseline is trained
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    console.print(
        f"study [bold]{escape(result.study_name)}[/] ({escape(result.storage)}): {counts}"
        + (f" ({untrained} infeasible, surplus or repeated, never trained)" if untrained else "")
    )
    best = result.best
    why = f" ({escape(result.why)})" if result.why else ""
    console.print(f"{_chosen(result)} trial #{best.number}: {best.values[0]:.4f}{why}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if len(best.values) > 1:
        pareto_table(result.pareto, metric, judged)
    rungs_table(result.trials, metric, judged)
    baselines_table(result, metric, judged)


def rungs_table(trials, metric: str = "metric", judged: str = "val") -> None:
    """The rungs of rows the study's trials climbed (none: every trial on every row):
    rows, trials trained there, their CPU seconds, the best value there."""
    from autolayer.rungs import climbed
    from autolayer.selection import RUNGS

    rungs = climbed(t.attrs[RUNGS] for t in trials if RUNGS in t.attrs)
    if not rungs:
        return
    table = Table(title="rungs of rows: a trial trains on more while among its rung's best")
    for column in ("train rows", "trials", "CPU s", f"best {judged} {metric} %"):
        table.add_column(column, justify="right")
    for rung in rungs:
        table.add_row(
            f"{rung.rows:,}", str(rung.trials), f"{rung.cpu_seconds:.1f}", _pct(rung.best)
        )
    console.print(table)


def baselines_table(result, metric: str = "metric", judged: str = "val") -> None:
    """The simple baselines the search always trains (each model's best layer alone under a
    linear head, TF-IDF's linear classifier) and the recommendation's margin over each in
    points, so a reader sees what the search bought over what they would have tried first;
    and one line when the recommendation is itself a baseline. Nothing for a study without
    baselines (an older one, or baselines turned off)."""
    if not result.baselines:
        return
    from autolayer.selection import BASELINE

    best = result.best
    table = Table(
        title="baselines: each model's best layer alone, linear head",
        caption="margin: the recommendation's score minus the baseline's, on the same rows",
    )
    for column in ("#", "model", "layer", "head", f"{judged} {metric} %", "latency ms"):
        table.add_column(column, justify="right")
    table.add_column("margin pt", justify="right")
    table.add_column("")
    for trial in result.baselines:
        chosen = trial.number == best.number
        table.add_row(
            str(trial.number),
            escape(" + ".join(trial.models)),
            "—" if _layerless(trial) else ",".join(map(str, trial.layers)),
            trial.head,
            f"{100 * trial.value:.2f}",
            f"{trial.attrs.get('latency_ms', 0):.2f}",
            "—" if chosen else f"{100 * (best.value - trial.value):+.2f}",
            "recommended" if chosen else "",
            style="bold green" if chosen else None,
        )
    console.print(table)
    if result.anchor and any(t.value > best.value for t in result.baselines):
        console.print(
            "few labels: the anchor rule decides; a baseline's higher score here is within "
            "the margin luck gives the best of the trials, as for any other trial"
        )
    if best.attrs.get(BASELINE):
        console.print(
            f"the recommendation is itself a baseline: {escape(_member(best))} with a "
            f"{escape(best.head)} head — nothing searched beat it by more than noise"
        )


def _layerless(trial) -> bool:
    """A trial on one source without layers (TF-IDF: one sparse state), named alone."""
    from autolayer.sources.base import source_class

    return len(trial.models) == 1 and source_class(trial.models[0]).sparse


def _member(trial) -> str:
    """A one-model trial in words: "tfidf", or "minilm layer 5"."""
    if _layerless(trial):
        return trial.models[0]
    return f"{trial.models[0]} layer {trial.layers[0]}"


def _chosen(result) -> str:
    """What the recommended trial is: "best" only when it scored highest; the few-label
    anchor is "recommended (anchor)" whatever it scored (kept unless beaten clearly), and a
    trial another rule chose (one standard error) is "recommended"."""
    if result.anchor:
        return "recommended (anchor)"
    top = next((t for t in result.trials if t.state == "COMPLETE"), result.best)
    return "best" if result.best is top else "recommended"


def pareto_table(trials, metric: str, judged: str = "val") -> None:
    """The metric-vs-latency trade-off: every trial no other beats on both, best metric
    first, so the fastest one that is accurate enough is easy to pick."""
    table = Table(title=f"Pareto front ({metric} vs latency)")
    for column in ("trial", "models", "layers", "operator", f"{judged} {metric} %", "latency ms"):
        table.add_column(column, justify="right")
    for trial in trials:
        table.add_row(
            str(trial.number),
            " + ".join(trial.models),
            ",".join(map(str, trial.layers)),
            _operator(trial),
            _pct(trial.values[0]),
            f"{trial.values[1]:.2f}",
        )
    console.print(table)


def stages_table(stages, dropped: dict) -> None:
    """What preparing and searching cost, stage by stage, and which models the screen
    dropped and why."""
    if not stages:
        return
    table = Table(title="cost by stage")
    for column in ("stage", "CPU s", "texts × layers", ""):
        table.add_column(column, justify="right" if column != "" else "left")
    for stage in stages:
        table.add_row(
            stage.name, f"{stage.cpu_seconds:.1f}", f"{stage.texts_layers:,}", escape(stage.note)
        )
    console.print(table)
    for model, reason in dropped.items():
        console.print(f"dropped [bold]{escape(model)}[/]: {escape(reason)}")


def _tried(trials) -> dict[str, set[int]]:
    """The layers of each model that a trained trial used (finished, or stopped by the
    pruner after some epochs; a baseline's too; never an infeasible or repeated one)."""
    from autolayer.selection import counts

    out: dict[str, set[int]] = {}
    for t in trials:
        if t.state in ("COMPLETE", "PRUNED") and counts(t.attrs, baselines=True):
            for model, layer in zip(t.models, t.layers, strict=True):
                out.setdefault(model, set()).add(layer)
    return out


def recommendation(rec, output_dir) -> None:
    """The full recommend report: rankings, CKA, trials, the choice and why."""
    tried = _tried(rec.search.trials)
    for r in rec.reports:
        _probe_table(
            r.scores,
            r.model,
            "(CV on search-train)",
            offered=r.searched,
            tried=tried.get(r.model, set()),
        )
    if len(rec.cka_names) > 1:
        cka_table(rec.cka_names, rec.cka, "linear CKA at each model's best layer (similarity)")
    pairs_table(rec.pairs)
    config = rec.config
    judged = judged_by(config.dataset.get("validation", {}))
    search_summary(rec.search, config.metric, judged)
    trials_table(rec.search.trials, config.metric, judged=judged)
    chosen = " + ".join(
        m.spec if m.n_hidden_states == 1 else f"{m.spec} layer {m.layer}/{m.n_hidden_states - 1}"
        for m in config.models
    )
    head = _describe(config.head.kind, config.head.params, len(config.models))
    console.print(
        f"\n[bold green]recommended:[/] {escape(chosen)}, {escape(head)}; "
        f"{'validation' if judged == 'val' else judged} {config.metric} "
        f"{_pct(config.validation.get(config.metric))}%, "
        f"{config.cost.get('latency_ms', 0):.2f} ms/text, {config.cost.get('memory_mb', 0):.0f} MB"
    )
    for reason in rec.reasons:
        console.print(f"  • {escape(reason)}")
    stages_table(rec.stages, rec.dropped)
    shown = probe_metrics(rec.reports[0].scores)[0] if rec.reports else "accuracy"
    plot_layer_curves(
        {r.model: getattr(r.scores, shown) for r in rec.reports},
        Path(output_dir) / "layers.png",
        metric=shown,
    )
    files = ["recommendation.yaml", "layers.png"]
    if len(rec.cka_names) > 1:
        plot_cka_matrix(rec.cka_names, rec.cka, Path(output_dir) / "cka.png")
        files.append("cka.png")
    else:
        _remove_ours(Path(output_dir) / "cka.png")  # an earlier run's, now beside this one
    console.print(f"wrote {', '.join(files)} in {escape(str(output_dir))}")


def _remove_ours(path: Path) -> None:
    """Delete a plot an earlier run wrote that this one does not replace (a reader would take
    it for part of this result); a file autolayer did not write is left alone."""
    from autolayer.files import is_ours

    if path.is_file() and is_ours(path, "plot"):
        path.unlink()


def exported(config, output) -> None:
    """Which trial went into the file and how it scored, so a default choice is visible."""
    judged = judged_by(config.dataset.get("validation", {}))
    console.print(
        f"wrote {escape(str(output))}: trial #{config.validation.get('trial')}, "
        f"{'validation' if judged == 'val' else judged} {config.metric} "
        f"{_pct(config.validation.get(config.metric))}%"
    )


def apply_result(result) -> None:
    """Test metrics (the config's first, in bold) and the per-class, or per-label,
    precision, recall and F1."""
    trained = f"trained on {result.n_train - result.n_held_out} texts" + (
        f", {result.n_held_out} held out to stop early" if result.n_held_out else ""
    )
    if not result.n_test:
        console.print(
            f"{trained} (no test split: none kept to test on, no test "
            f"metrics); saved {escape(str(result.directory))}"
        )
        return
    multi = bool(result.metrics)
    shown = result.metrics if multi else {"accuracy": result.accuracy, "macro_f1": result.macro_f1}
    (first, value), *rest = shown.items()
    others = ", ".join(f"{metric_name(m)} {100 * v:.2f}%" for m, v in rest)
    console.print(
        f"test {metric_name(first)} [bold]{100 * value:.2f}%[/], {others} "
        f"({result.n_test} test texts; {trained}); "
        f"saved {escape(str(result.directory))}"
    )
    (label_table if multi else class_table)(result.per_class)


def class_table(per_class: dict) -> None:
    """classification_report's rows: each class's precision, recall, F1 and support."""
    table = Table(title="per-class test metrics")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for name, metrics in per_class.items():
        table.add_row(
            escape(name),
            f"{metrics['precision']:.3f}",
            f"{metrics['recall']:.3f}",
            f"{metrics['f1-score']:.3f}",
            str(int(metrics["support"])),
        )
    console.print(table)


def label_table(per_label: dict) -> None:
    """Every label's precision, recall, F1, support and predicted count; "—" where a ratio
    has nothing to divide by (``None``), so the F1 column's numbers are the ones macro-F1
    averages, which the caption says."""
    averaged = sum(m["f1-score"] is not None for m in per_label.values())
    caption = (
        f"macro-F1 averages the F1 of all {averaged} labels (each has test support or predictions)"
        if averaged == len(per_label)
        else f"macro-F1 averages the F1 of the {averaged} of {len(per_label)} labels with test "
        "support or predictions"
    )
    if any(None in (m["precision"], m["recall"]) for m in per_label.values()):
        caption += "; —: nothing to divide by (precision: no predictions, recall: no support)"
    table = Table(title="per-label test metrics", caption=caption)
    for column in ("label", "precision", "recall", "F1", "support", "predicted"):
        table.add_column(column, justify="right")
    for name, m in per_label.items():
        cells = (_ratio(m["precision"]), _ratio(m["recall"]), _ratio(m["f1-score"]))
        table.add_row(escape(name), *cells, str(m["support"]), str(m["predicted"]))
    console.print(table)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pyplot():
    """matplotlib with a file-only backend, or None when the `plots` extra is missing."""
    try:
        import matplotlib
    except ImportError:
        errors.print("matplotlib is not installed: skipping plots (pip install 'autolayer[plots]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_curves(curves: dict[str, np.ndarray], path, metric: str = "accuracy") -> None:
    """Probe accuracy (or ``metric``) vs relative depth, one line per model (name → its
    values per layer); the best (★) and the last (○) layer marked."""
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, accuracy in curves.items():
        acc = 100 * np.asarray(accuracy)
        depth = np.arange(len(acc)) / max(len(acc) - 1, 1)
        (line,) = ax.plot(depth, acc, marker=".", label=name)
        best = int(np.argmax(acc))
        ax.plot(depth[best], acc[best], marker="*", markersize=14, color=line.get_color())
        ax.plot(depth[-1], acc[-1], marker="o", markersize=8, mfc="none", color=line.get_color())
        ax.annotate(f"{best}", (depth[best], acc[best]), textcoords="offset points", xytext=(4, 6))
    ax.set_xlabel("relative depth (layer / last layer)")
    ax.set_ylabel(f"linear-probe {metric_name(metric)} % (CV)")
    ax.set_title("layer curves: ★ best layer, ○ last layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata=PNG_METADATA)
    plt.close(fig)


def _heatmap(ax, names, matrix: np.ndarray):
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, _similarity(matrix[i, j]), ha="center", va="center", color="w")
    return image


def plot_cka_matrix(names, matrix: np.ndarray, path) -> None:
    """Model × model CKA heatmap (the recommend report's complementarity picture)."""
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    image = _heatmap(ax, names, matrix)
    ax.set_title("linear CKA at best layers")
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def plot_cka(result, path) -> None:
    """Model × model CKA heatmap plus one layer × layer heatmap per pair, in one figure."""
    plt = _pyplot()
    if plt is None:
        return
    pairs = list(result.grids.items())
    fig, axes = plt.subplots(1, 1 + len(pairs), figsize=(4.2 * (1 + len(pairs)), 3.8))
    axes = np.atleast_1d(axes)
    names = [f"{m} L{layer}" for m, layer in zip(result.models, result.layers, strict=True)]
    image = _heatmap(axes[0], names, result.matrix)
    axes[0].set_title("CKA at chosen layers")
    for ax, ((a, b), grid) in zip(axes[1:], pairs, strict=True):
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xlabel(f"{b} layer")
        ax.set_ylabel(f"{a} layer")
        ax.set_title(f"{a} × {b}")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def score_tables(results) -> None:
    for result in results:
        s = result.scores
        shown = _probe_table(s, result.model, f"({s.n_folds}-fold CV, n={s.n_examples})")
        best, last = result.best_layer, result.last_layer
        values = getattr(s, shown)
        gap = 100 * (values[best] - values[last])
        line = f"best layer {best}/{last} (depth {best / max(last, 1):.2f}), {gap:+.1f} pt vs last"
        if result.rank_stability is not None:
            line += f"; subsample rank stability (Spearman ρ) {result.rank_stability:.2f}"
        console.print(line)

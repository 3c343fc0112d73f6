"""Everything autolayer shows a person: rich tables, progress bars (and later PNG plots).

Library modules return data; only this module (called by the CLI) prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
errors = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator:
    """A rich bar with texts/s; yields the ``advance(n)`` callback the library calls.

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
    bar = Progress(*columns, console=errors)
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
    source = "cache hit" if meta.get("cached") else f"computed in {meta.get('seconds', 0):.1f} s"
    n = embeddings.array.shape[0]
    speed = ""
    if not meta.get("cached") and meta.get("seconds"):
        speed = f", {meta['computed_rows'] / meta['seconds']:.1f} texts/s"
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

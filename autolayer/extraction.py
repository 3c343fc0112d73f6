"""Cached extraction: every (or the chosen) state of a feature source over a list of texts.

A source (see ``autolayer.sources``) computes the features; this module keys them by the
source's identity, the texts' fingerprint, pooling, max_length and dtype, and stores them in
the chunked, atomic cache, so a repeated call does no model work and an interrupted one
resumes at its first unfinished chunk. Texts are processed longest first (by the source's
own measure of work, tokens for a transformer) in fixed chunks, so the rows of each chunk,
and hence the resumed result, are the same bit for bit. Which chunks are missing is decided
here, under the entry's lock; where they are computed, in this process or on Ray actors, is
an engine's business (:mod:`autolayer.engine`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autolayer.cache import CacheEntry
from autolayer.device import resolve_device, set_threads
from autolayer.engine import Engine, Run, make_engine
from autolayer.errors import ConfigError
from autolayer.options import MAX_LENGTH, POOLINGS
from autolayer.sources import FeatureSource, make_source, normalise_layers
from autolayer.sources.base import Progress

if TYPE_CHECKING:
    from autolayer.data import LabelledDataset

logger = logging.getLogger("autolayer")


@dataclass(frozen=True)
class Embeddings:
    """Pooled hidden states of one model over one split.

    ``array`` is ``[N, len(layers), D]`` float32 (memory-mapped from the cache when it came
    from there); ``layers[j]`` is the hidden-state index held in ``array[:, j]``.
    """

    array: np.ndarray
    layers: tuple[int, ...]
    model: str
    meta: dict = field(default_factory=dict)

    def layer(self, index: int) -> np.ndarray:
        """``[N, D]`` embeddings of hidden state ``index`` (negative counts from the last)."""
        n_states = self.meta["n_hidden_states"]
        wanted = index % n_states if -n_states <= index < n_states else index
        if wanted not in self.layers:
            raise ConfigError(f"layer {index} was not extracted; extracted: {list(self.layers)}")
        return np.asarray(self.array[:, self.layers.index(wanted)])


# ---------------------------------------------------------------------------------------------
# Cached extraction


def extract(
    model: str,
    dataset: str | Path | LabelledDataset = "demo",
    split: str = "train",
    **options,
) -> Embeddings:
    """Pooled embeddings of every (or the chosen) hidden layer of ``model`` over one split.

    ``dataset`` is anything :func:`autolayer.data.split_texts` takes (labels not needed), or
    a loaded dataset; ``options`` are those of :func:`embed_texts`, which does the (cached)
    work.
    """
    from autolayer.data import split_texts

    if isinstance(dataset, str | Path):
        source, texts = split_texts(dataset, split)
    else:
        source, texts = f"{dataset.name}/{split}", dataset.split(split).texts
    return embed_texts(model, texts, source=source, **options)


def embed_texts(
    model: str | FeatureSource,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    max_length: int = 256,
    batch_size: int = 256,
    max_tokens: int = 8192,
    chunk_size: int = 512,
    device: str | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    source: str = "texts",
    rows: Sequence[int] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> Embeddings:
    """Pooled embeddings of the chosen (default: all) states of ``model`` for ``texts``, or
    for the ``rows`` of it only.

    ``model`` is a spec (resolved by :func:`autolayer.sources.make_source`) or a source.
    Results are cached under ``cache_dir`` (default ``$AUTOLAYER_HOME/embeddings``) keyed by
    the source's identity, the texts' fingerprint, pooling, max_length and dtype; a repeated
    call does no model work, an interrupted one resumes at its first unfinished chunk. A
    layer subset is served from a cached all-layer entry when there is one, and ``rows``
    from a finished entry of all of ``texts`` (a split already extracted whole, e.g. by
    ``autolayer extract``, costs a multi-fidelity run no model work); otherwise the rows'
    texts are extracted and cached as texts of their own. With ``use_cache=False`` the
    features are computed in memory and the cache is neither read nor written (texts seen
    once, such as new texts to label, would only fill it; a read-only cache is no problem).
    ``engine`` says where the missing chunks are computed: "local" (here) or "ray" (on Ray
    actors of the cluster at ``ray_address``, ``ray_actors`` of them, ``threads`` each:
    see :mod:`autolayer.engine`); the features are the same either way (without the cache
    they are computed here: there are no chunks to share out).
    """
    from autolayer import zoo
    from autolayer.data import text_fingerprint

    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    MAX_LENGTH.check("max_length", max_length)
    if min(batch_size, max_tokens, chunk_size) < 1:
        raise ConfigError("batch_size, max_tokens and chunk_size must be >= 1")
    chunk_engine = make_engine(engine, ray_address, ray_actors, threads)
    set_threads(threads)
    feature_source = (
        model
        if isinstance(model, FeatureSource)
        else make_source(model, trust_remote_code=trust_remote_code)
    )
    name = model if isinstance(model, str) else feature_source.spec
    if feature_source.learns:
        raise ConfigError(
            f"{name} is fitted on training rows and gives sparse features: use it in "
            "recommend, search or apply (extract, score and complementarity take "
            "pretrained models)"
        )
    n_states = feature_source.n_states
    wanted = normalise_layers(layers, n_states)
    max_length = feature_source.max_length(max_length)
    device = str(resolve_device(device))
    work = {"pooling": pooling, "max_length": max_length, "device": device}
    run = Run(feature_source, wanted, batch_size, max_tokens, work)
    base = {"model": name, "source": source, "n_hidden_states": n_states}
    if not use_cache:
        chosen = texts if rows is None else [texts[i] for i in rows]
        return _embed_in_memory(run, chosen, progress, base)
    root = Path(cache_dir) if cache_dir else zoo.home() / "embeddings"
    settings = {
        "model": feature_source.identity,
        "pooling": pooling,
        "max_length": max_length,
        "dtype": "bfloat16" if device.startswith("cuda") else "float32",
    }
    if rows is not None:
        whole = _entries(root, {**settings, "texts": text_fingerprint(texts)}, wanted, n_states)
        hit = _cached(whole, wanted, name, base, rows)
        if hit is not None:
            return hit
        texts = [texts[i] for i in rows]
    entries = _entries(root, {**settings, "texts": text_fingerprint(texts)}, wanted, n_states)
    hit = _cached(entries, wanted, name, base)
    if hit is not None:
        return hit
    entry = entries[-1]
    with entry.lock():
        hit = entry.load()
        if hit is not None:
            return _from_cache(hit, wanted, name, base)
        return _extract_into(entry, run, texts, chunk_size, progress, base, chunk_engine)


def _entries(
    root: Path, fields: dict, wanted: tuple[int, ...], n_states: int
) -> tuple[CacheEntry, ...]:
    """The entries that could hold ``wanted``: all layers, then exactly these (the last is
    the one an extraction writes)."""
    full = CacheEntry(root, {**fields, "layers": "all"})
    if wanted == tuple(range(n_states)):
        return (full,)
    return full, CacheEntry(root, {**fields, "layers": wanted})


def _cached(
    entries: Sequence[CacheEntry],
    wanted: tuple[int, ...],
    model: str,
    base: dict,
    rows: Sequence[int] | None = None,
) -> Embeddings | None:
    """``wanted`` (of ``rows`` only, when given) from the first finished entry (its leftover
    chunks removed), or None."""
    for entry in entries:
        hit = entry.load()
        if hit is not None:
            entry.remove_chunks()
            return _from_cache(hit, wanted, model, base, rows)
    return None


def _from_cache(
    hit: tuple[np.ndarray, dict],
    wanted: tuple[int, ...],
    model: str,
    base: dict,
    rows: Sequence[int] | None = None,
) -> Embeddings:
    array, meta = hit
    if rows is not None:  # rows first: only they are read from the memory-mapped file
        array = np.asarray(array[np.asarray(rows, dtype=np.int64)])
    stored = tuple(meta["layers"])
    if stored != wanted:
        array = array[:, [stored.index(i) for i in wanted]]
    return Embeddings(
        array, wanted, model, {**meta, **base, "layers": list(wanted), "cached": True}
    )


def _extract_into(
    entry: CacheEntry,
    run: Run,
    texts: Sequence[str],
    chunk_size: int,
    progress: Progress | None,
    base: dict,
    engine: Engine,
) -> Embeddings:
    """Fill ``entry`` (held locked) with the features of ``texts``: the chunks already on
    disk kept, the missing ones computed by ``engine``, each one's time recorded as it
    finishes (a resumed run still knows what a text costs), then assembled."""
    lengths = run.source.lengths(texts, run.work["max_length"])
    order = np.argsort(-lengths, kind="stable")  # longest first
    n, width = len(texts), run.source.width
    computed, seconds = 0, 0.0  # seconds: embedding only, what a prediction pays per text
    entry.start_chunks({"chunk_size": chunk_size, "rows": n})
    _say_resumed(entry, chunk_size, n)
    timing = entry.chunk_timing()  # this run's chunks and those of the runs it resumes
    missing = []
    for index, start in enumerate(range(0, n, chunk_size)):
        rows = order[start : start + chunk_size]
        if entry.read_chunk(index, (len(rows), len(run.layers), width)) is None:
            missing.append((index, [texts[r] for r in rows]))
        elif progress:
            progress(len(rows))

    def done(index: int, rows: int, took: float) -> None:
        nonlocal seconds, computed
        timing[str(index)] = [rows, took]
        entry.write_chunk_timing(timing)
        seconds, computed = seconds + took, computed + rows

    engine.compute(entry, run, missing, progress, done)
    timed_rows = sum(n_rows for n_rows, _ in timing.values())
    timed_seconds = sum(took for _, took in timing.values())
    meta = {
        **_run_meta(run, base, lengths, seconds, computed),
        "timed_seconds": timed_seconds,
        "timed_rows": int(timed_rows),
    }
    array = entry.finalize(order, chunk_size, (n, len(run.layers), width), meta)
    return Embeddings(array, run.layers, base["model"], {**meta, "cached": False})


def _say_resumed(entry: CacheEntry, chunk_size: int, n: int) -> None:
    """Say that an interrupted extraction is resumed, and how far it had got: its progress
    bar starts part way, which alone looks like a miscount."""
    kept = sum(min(chunk_size, n - i * chunk_size) for i in entry.finished_chunks())
    if kept:
        logger.warning(
            "resuming cache entry %s: %d of %d rows already embedded", entry.directory, kept, n
        )


def _embed_in_memory(
    run: Run, texts: Sequence[str], progress: Progress | None, base: dict
) -> Embeddings:
    """The features of ``texts`` computed in one go, without the cache (``use_cache=False``)."""
    lengths = run.source.lengths(texts, run.work["max_length"])
    run.source.preload(run.layers, run.work["device"])  # not timed, as in a cached extraction
    started = time.perf_counter()
    array = run.embed(texts, progress)
    seconds = time.perf_counter() - started
    meta = _run_meta(run, base, lengths, seconds, len(texts))
    return Embeddings(array, run.layers, base["model"], {**meta, "cached": False})


def _run_meta(run: Run, base: dict, lengths: np.ndarray, seconds: float, computed: int) -> dict:
    """What an extraction records with its features: the source and settings, the tokens,
    and the seconds the ``computed`` rows took (embedding only)."""
    return {
        **base,
        "identity": run.source.identity,
        "layers": list(run.layers),
        "width": run.source.width,
        "pooling": run.work["pooling"],
        "max_length": run.work["max_length"],
        "tokens": int(lengths.sum()),
        "seconds": seconds,
        "computed_rows": computed,
    }

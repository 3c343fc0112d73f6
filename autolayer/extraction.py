"""One forward pass per batch, every layer pooled: texts → array ``[N, L+1, D]``.

Hidden state ``i`` follows the Hugging Face convention of ``output_hidden_states``: ``0`` is
the embedding output (the input of layer 0), ``i`` in ``1..L-1`` the output of layer ``i-1``,
and ``L`` the model's final output (after the final norm in decoders). They are captured by
hooks on the layer modules and pooled immediately, so a batch never holds all ``L+1`` full
``[B, T, D]`` tensors, and a forward pass stops right after the deepest layer asked for: the
layers above it are dropped from the module and never run.

Pooling is mask-aware and padding-side agnostic (Gemma pads on the left). For decoders, mean
pooling skips each text's first token: decoders park huge activations there (norms ~10⁴ vs
~10² elsewhere), which would make every sentence's mean look the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autolayer import zoo
from autolayer.cache import CacheEntry
from autolayer.device import resolve_device, set_threads
from autolayer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    from autolayer.data import LabelledDataset

logger = logging.getLogger("autolayer")

POOLINGS = ("mean", "last", "cls")
Progress = Callable[[int], None]


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
# Pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str, skip_first: bool) -> torch.Tensor:
    """Pool ``[B, T, D]`` hidden states to ``[B, D]`` using the ``[B, T]`` attention mask.

    ``skip_first`` drops each text's first real token from the mean (decoders' attention
    sink) unless it is the only token.
    """
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device)
    real = mask.bool()
    first = torch.where(real, positions, mask.shape[1]).amin(dim=1)
    if method == "mean":
        weights = real.clone()
        if skip_first:
            multi = real.sum(dim=1) > 1
            weights[multi, first[multi]] = False
        weights = weights.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if method == "last":
        index = torch.where(real, positions, -1).amax(dim=1)
    elif method == "cls":
        index = first
    else:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {method!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


# ---------------------------------------------------------------------------------------------
# Backbone: a loaded model that returns pooled hidden states


def is_decoder(config) -> bool:
    """Causal-LM architectures without a masked-LM head: their first token is an attention sink."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def count_hidden_states(source: zoo.ModelSource) -> int:
    """``L+1`` read from the config alone, without loading weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source.folder))
    return config.get_text_config().num_hidden_layers + 1


# Models whose position ids start after the padding index (RoBERTa style): two fewer usable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer"}
_CLAMPED: set[tuple[str, int]] = set()


def clamp_max_length(source: zoo.ModelSource, max_length: int) -> int:
    """``max_length`` cut to the positions the model has, with a note when it is cut.

    Asking for more tokens than a model has position embeddings would crash its forward
    pass (an index error deep in torch) on the first long text.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source.folder)).get_text_config()
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return max_length
    limit = positions - (2 if config.model_type in _OFFSET_POSITIONS else 0)
    if max_length <= limit:
        return max_length
    if (source.identity, max_length) not in _CLAMPED:  # once per process, not per split
        _CLAMPED.add((source.identity, max_length))
        logger.warning(
            "max_length %d is more than %s takes: texts are cut at %d tokens",
            max_length,
            source.name,
            limit,
        )
    return limit


def normalise_layers(layers: Sequence[int] | None, n_states: int) -> tuple[int, ...]:
    """Sorted unique hidden-state indices; negatives count from the end; None means all."""
    if layers is None:
        return tuple(range(n_states))
    out = set()
    for index in layers:
        if not -n_states <= index < n_states:
            raise ConfigError(
                f"layer {index} is out of range: this model has hidden states 0..{n_states - 1}"
            )
        out.add(index % n_states)
    if not out:
        raise ConfigError("layers must name at least one hidden state")
    return tuple(sorted(out))


class _StopForward(Exception):
    """Raised by the hook of the deepest wanted layer: nothing above it needs to run."""


class Backbone:
    """A frozen transformer that maps token ids to pooled hidden states of chosen layers.

    Layers above the deepest one asked for are removed at load time, so both compute and
    weights memory scale with that depth.
    """

    def __init__(
        self,
        source: zoo.ModelSource,
        layers: Sequence[int] | None = None,
        *,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        self.device = str(resolve_device(device))
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        folder = str(source.folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code
            )
            model = AutoModel.from_pretrained(
                folder, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001 - loading failures become one clear line
            raise ModelError(f"cannot load model {source.spec!r}: {exc}".splitlines()[0]) from None
        config = model.config.get_text_config()
        self.n_hidden_states = config.num_hidden_layers + 1
        self.width = config.hidden_size
        self.is_decoder = is_decoder(model.config)
        self.layers = normalise_layers(layers, self.n_hidden_states)
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False
        self._blocks = self._truncate(model, max(self.layers))
        self.model = model.eval().to(self.device)
        self.pad_id = self._pad_id()

    def _truncate(self, model, deepest: int) -> torch.nn.ModuleList:
        """Drop the layers above the deepest wanted hidden state; return the layer list."""
        import torch

        n_layers = self.n_hidden_states - 1
        found = next(
            (
                (name, module)
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers
            ),
            None,
        )
        if found is None:
            raise ModelError(f"cannot find the {n_layers} transformer layers of {self.source.spec}")
        name, module = found
        if deepest < n_layers:
            keep = torch.nn.ModuleList(list(module)[: max(deepest, 1)])
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, keep)
            return keep
        return module

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (no padding: batches pad later)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=max_length)
        return encoded["input_ids"]

    def _batch(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(seq) for seq in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row, seq in enumerate(ids):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def forward_pooled(self, ids: Sequence[Sequence[int]], pooling: str) -> np.ndarray:
        """One forward pass over a batch → ``[B, len(self.layers), D]`` float32."""
        import torch

        input_ids, mask = self._batch(ids)
        skip_first = self.is_decoder and pooling == "mean"
        pooled: dict[int, torch.Tensor] = {}
        deepest = max(self.layers)
        last = self.n_hidden_states - 1

        def capture(index: int, hidden: torch.Tensor) -> None:
            pooled[index] = pool(hidden, mask, pooling, skip_first).float()
            if index == deepest and deepest < last:
                raise _StopForward

        handles = []
        for index in self.layers:
            if index == 0:
                handles.append(
                    self._blocks[0].register_forward_pre_hook(
                        lambda _m, args, kwargs: capture(
                            0, args[0] if args else kwargs["hidden_states"]
                        ),
                        with_kwargs=True,
                    )
                )
            elif index < last:
                handles.append(
                    self._blocks[index - 1].register_forward_hook(
                        lambda _m, _a, out, i=index: capture(
                            i, out[0] if isinstance(out, tuple) else out
                        )
                    )
                )
        try:
            with torch.inference_mode():
                try:
                    out = self.model(input_ids=input_ids, attention_mask=mask)
                    if last in self.layers:
                        capture(last, out.last_hidden_state)
                except _StopForward:
                    pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack([pooled[i] for i in self.layers], dim=1).cpu().numpy()

    def pooled_rows(
        self,
        ids: Sequence[Sequence[int]],
        rows: np.ndarray,
        pooling: str,
        *,
        batch_size: int = 256,
        max_tokens: int = 8192,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Pooled states of ``ids[rows]`` (rows longest first) → ``[len(rows), layers, D]``.

        Batches hold at most ``batch_size`` texts and ``max_tokens`` padded tokens: short
        texts go in large batches (big matrix products run near the CPU's peak), long ones
        in small batches (bounded memory).
        """
        out = np.empty((len(rows), len(self.layers), self.width), dtype=np.float32)
        start = 0
        while start < len(rows):
            longest = len(ids[rows[start]])
            size = max(1, min(batch_size, max_tokens // max(longest, 1), len(rows) - start))
            batch = rows[start : start + size]
            out[start : start + size] = self.forward_pooled([ids[r] for r in batch], pooling)
            if progress:
                progress(size)
            start += size
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 256,
        max_tokens: int = 8192,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Texts → ``[N, len(layers), D]`` in input order (batched longest first inside)."""
        ids = self.tokenize(texts, max_length)
        order = length_order(ids)
        out = np.empty((len(ids), len(self.layers), self.width), dtype=np.float32)
        out[order] = self.pooled_rows(
            ids, order, pooling, batch_size=batch_size, max_tokens=max_tokens, progress=progress
        )
        return out


def length_order(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Longest first (padding waste is minimal and an out-of-memory shows up at once)."""
    lengths = np.fromiter((len(seq) for seq in ids), dtype=np.int64, count=len(ids))
    return np.argsort(-lengths, kind="stable")


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
    model: str,
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
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    source: str = "texts",
) -> Embeddings:
    """Pooled embeddings of the chosen (default: all) hidden layers of ``model`` for ``texts``.

    Results are cached under ``cache_dir`` (default ``$AUTOLAYER_HOME/embeddings``) keyed by
    the model's identity, the texts' fingerprint, pooling, max_length and dtype; a repeated
    call does no model work, an interrupted one resumes at its first unfinished chunk. A
    layer subset is served from a cached all-layer entry when there is one.
    """
    from autolayer.data import text_fingerprint

    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if max_length < 2 or min(batch_size, max_tokens, chunk_size) < 1:
        raise ConfigError("max_length must be >= 2 and batch_size, max_tokens, chunk_size >= 1")
    set_threads(threads)
    resolved = zoo.resolve(model)
    n_states = count_hidden_states(resolved)
    wanted = normalise_layers(layers, n_states)
    max_length = clamp_max_length(resolved, max_length)
    root = Path(cache_dir) if cache_dir else zoo.home() / "embeddings"
    device = str(resolve_device(device))
    fields = {
        "model": resolved.identity,
        "texts": text_fingerprint(texts),
        "pooling": pooling,
        "max_length": max_length,
        "dtype": "bfloat16" if device.startswith("cuda") else "float32",
    }
    base = {"model": model, "source": source, "n_hidden_states": n_states}
    full = CacheEntry(root, {**fields, "layers": "all"})
    entry = full
    if wanted != tuple(range(n_states)):
        entry = CacheEntry(root, {**fields, "layers": wanted})
    for candidate in dict.fromkeys((full, entry)):
        hit = candidate.load()
        if hit is not None:
            candidate.remove_chunks()
            return _from_cache(hit, wanted, model, base)
    with entry.lock():
        hit = entry.load()
        if hit is not None:
            return _from_cache(hit, wanted, model, base)
        backbone = Backbone(resolved, wanted, device=device, trust_remote_code=trust_remote_code)
        return _extract_into(
            entry,
            backbone,
            texts,
            pooling,
            max_length,
            batch_size,
            max_tokens,
            chunk_size,
            progress,
            base,
        )


def _from_cache(
    hit: tuple[np.ndarray, dict], wanted: tuple[int, ...], model: str, base: dict
) -> Embeddings:
    array, meta = hit
    stored = tuple(meta["layers"])
    if stored != wanted:
        array = array[:, [stored.index(i) for i in wanted]]
    return Embeddings(
        array, wanted, model, {**meta, **base, "layers": list(wanted), "cached": True}
    )


def _extract_into(
    entry: CacheEntry,
    backbone: Backbone,
    texts: Sequence[str],
    pooling: str,
    max_length: int,
    batch_size: int,
    max_tokens: int,
    chunk_size: int,
    progress: Progress | None,
    base: dict,
) -> Embeddings:
    started = time.perf_counter()
    ids = backbone.tokenize(texts, max_length)
    order = length_order(ids)
    n, width, n_layers = len(ids), backbone.width, len(backbone.layers)
    computed = 0
    entry.start_chunks({"chunk_size": chunk_size, "rows": n})
    for index, start in enumerate(range(0, n, chunk_size)):
        rows = order[start : start + chunk_size]
        if entry.read_chunk(index, (len(rows), n_layers, width)) is not None:
            if progress:
                progress(len(rows))
            continue
        chunk = backbone.pooled_rows(
            ids, rows, pooling, batch_size=batch_size, max_tokens=max_tokens, progress=progress
        )
        entry.write_chunk(index, chunk)
        computed += len(rows)
    seconds = time.perf_counter() - started
    meta = {
        **base,
        "identity": backbone.source.identity,
        "layers": list(backbone.layers),
        "width": width,
        "is_decoder": backbone.is_decoder,
        "pooling": pooling,
        "max_length": max_length,
        "tokens": int(sum(len(seq) for seq in ids)),
        "seconds": seconds,
        "computed_rows": computed,
    }
    array = entry.finalize(order, chunk_size, (n, n_layers, width), meta)
    return Embeddings(array, backbone.layers, base["model"], {**meta, "cached": False})

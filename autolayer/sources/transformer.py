"""The transformers source: one forward pass per batch, every layer pooled.

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

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from autolayer import zoo
from autolayer.device import resolve_device
from autolayer.errors import ConfigError, ModelError
from autolayer.options import POOLINGS
from autolayer.sources.base import FeatureSource, Progress, normalise_layers, register_source

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("autolayer")

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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off and its logging at errors only while
    a model loads, then the caller's settings back: a library call (``autolayer.extract``)
    shows no more than the CLI, which sets both for good. The "LOAD REPORT" it would log
    names weights autolayer never uses: a pooler the checkpoint lacks, a head it holds."""
    from transformers.utils import logging as hf_logging

    was, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was:
            hf_logging.enable_progress_bar()


# Models whose position ids start after the padding index (RoBERTa style): two fewer usable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer"}
_CLAMPED: set[tuple[str, int]] = set()


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
        tokenizer=None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        self.device = str(resolve_device(device))
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        folder = str(source.folder)
        try:
            self.tokenizer = (
                tokenizer
                if tokenizer is not None
                else AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            )
            with quiet_loading():
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
# The source


@register_source("transformers")
class TransformerSource(FeatureSource):
    """A pretrained transformer (zoo alias, local folder, GGUF file or hub id), frozen.

    Its states are the ``L+1`` hidden states; running up to state ``l`` costs about
    ``l / L`` of a full pass and keeps the weights below it (read from safetensors headers,
    without loading them).
    """

    def __init__(self, spec: str, *, trust_remote_code: bool = False) -> None:
        super().__init__(spec, trust_remote_code=trust_remote_code)
        self.model = zoo.resolve(spec)
        self._backbones: dict[tuple, Backbone] = {}

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def identity(self) -> str:
        return self.model.identity

    @functools.cached_property
    def config(self):
        """The text model's config, read without loading weights."""
        from transformers import AutoConfig

        folder, trust = str(self.model.folder), self.trust_remote_code
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust).get_text_config()

    @property
    def n_states(self) -> int:
        return self.config.num_hidden_layers + 1

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def sentence_encoder(self) -> bool:
        """A sentence-transformers folder (its ``modules.json``): the model was trained so
        that its pooled last layer is the sentence embedding."""
        folder = self.model.folder
        return (folder / "modules.json").is_file() or (
            folder / "config_sentence_transformers.json"
        ).is_file()

    def max_length(self, requested: int) -> int:
        """``requested`` cut to the positions the model has, with a note when it is cut:
        more tokens than position embeddings would crash the forward pass (an index error
        deep in torch) on the first long text."""
        positions = getattr(self.config, "max_position_embeddings", None)
        if not positions:
            return requested
        limit = positions - (2 if self.config.model_type in _OFFSET_POSITIONS else 0)
        if requested <= limit:
            return requested
        if (self.identity, requested) not in _CLAMPED:  # once per process, not per split
            _CLAMPED.add((self.identity, requested))
            logger.warning(
                "%s takes at most %d tokens, fewer than the %d asked for: texts are cut at "
                "%d tokens",
                self.name,
                limit,
                requested,
                limit,
            )
        return limit

    def backbone(self, layers: Sequence[int], device: str | None = None) -> Backbone:
        """The model cut above the deepest of ``layers``, loaded once per source."""
        key = (tuple(layers), str(resolve_device(device)))
        if key not in self._backbones:
            self._backbones[key] = Backbone(
                self.model,
                layers,
                device=device,
                trust_remote_code=self.trust_remote_code,
                tokenizer=self.tokenizer,  # already loaded to order the texts by length
            )
        return self._backbones[key]

    def preload(self, layers: Sequence[int], device: str | None = None) -> None:
        self.backbone(layers, device)

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(
                str(self.model.folder), trust_remote_code=self.trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001 - loading failures become one clear line
            raise ModelError(
                f"cannot load the tokenizer of {self.spec!r}: {exc}".splitlines()[0]
            ) from None

    def lengths(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Tokens per text, truncated as the forward pass will truncate them."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=max_length)
        ids = encoded["input_ids"]
        return np.fromiter((len(seq) for seq in ids), dtype=np.int64, count=len(ids))

    def embed(
        self,
        texts: Sequence[str],
        layers: Sequence[int],
        *,
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 256,
        max_tokens: int = 8192,
        device: str | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        return self.backbone(layers, device).encode(
            texts,
            pooling=pooling,
            max_length=max_length,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
        )

    @functools.cached_property
    def _parameter_counts(self) -> tuple[int, tuple[int, ...]]:
        return zoo.parameter_counts(self.model.folder, self.n_states - 1)

    def parameters(self, layer: int) -> int:
        base, per_layer = self._parameter_counts
        return base + sum(per_layer[:layer])

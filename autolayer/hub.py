"""Whether the Hugging Face hub may be asked: its offline switches, read one way.

Models (:mod:`autolayer.zoo`) and datasets (:mod:`autolayer.data`) both decide, before a
lookup, whether a hub name can only be found in a local cache; reading the switches in one
place keeps the two from disagreeing on what "offline" means.
"""

from __future__ import annotations

import os

# How huggingface_hub and datasets spell true (their ENV_VARS_TRUE_VALUES), case aside.
TRUE = {"1", "ON", "YES", "TRUE"}


def offline(*, datasets: bool = False) -> bool:
    """Whether the hub will not be asked, read from the environment when called, as the
    Hugging Face libraries read it: for models, ``HF_HUB_OFFLINE`` (or, unset,
    ``TRANSFORMERS_OFFLINE``, which huggingface_hub honours too). ``HF_DATASETS_OFFLINE``
    concerns datasets only (``datasets=True``): when set, it decides for them, either way,
    as in ``datasets.config``; a model lookup ignores it."""
    if datasets and os.environ.get("HF_DATASETS_OFFLINE") is not None:
        return _true(os.environ["HF_DATASETS_OFFLINE"])
    return _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def _true(value: str | None) -> bool:
    return value is not None and value.upper() in TRUE

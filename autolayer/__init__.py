"""autolayer: which layers of which pretrained transformers to use, and how to fuse them.

Heavy dependencies (torch, transformers) load lazily, so `import autolayer` and
`autolayer --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "autolayer.data",
    "extract": "autolayer.extraction",
    "embed_texts": "autolayer.extraction",
    "Embeddings": "autolayer.extraction",
    "score": "autolayer.pipeline",
    "complementarity": "autolayer.pipeline",
    "Options": "autolayer.options",
    "recommend": "autolayer.pipeline",
    "Budget": "autolayer.budgets",
    "Space": "autolayer.space",
    "Fidelity": "autolayer.fidelity",
    "Rungs": "autolayer.rungs",
    "load_config": "autolayer.config",
    "apply": "autolayer.classifier",
    "FusionTextClassifier": "autolayer.classifier",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autolayer' has no attribute {name!r}")

"""Shared fixtures: tiny random-weight models built from configs (no download), data paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUTOLAYER_SHARED_DATA", REPO.parent / "shared" / "data"))

WORDS = (
    "the",
    "a",
    "movie",
    "film",
    "was",
    "is",
    "good",
    "bad",
    "great",
    "awful",
    "fun",
    "dull",
    "plot",
    "actors",
    "story",
    "not",
    "very",
    "really",
    "boring",
    "loved",
    "hated",
    "it",
    "and",
    "but",
    "with",
    "of",
    "to",
    "in",
    "this",
    "that",
)


def _tokenizer(kind: str, padding_side: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    elif kind == "llama_bos":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 4)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="<s>",
        padding_side=padding_side,
    )


def build_tiny_model(folder: Path, kind: str, padding_side: str = "right", seed: int = 0) -> Path:
    """Save a random-weight BERT or Llama (4 layers, width 32) with a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    vocab_size = 5 + len(WORDS)
    if kind == "bert":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = BertModel(config, add_pooling_layer=False)
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            pad_token_id=0,
        )
        model = LlamaModel(config)
    model.save_pretrained(folder)
    _tokenizer(kind, padding_side).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny models: an encoder, a right-padded decoder, a left-padded BOS decoder."""
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": build_tiny_model(root / "bert", "bert"),
        "llama": build_tiny_model(root / "llama", "llama"),
        "llama_left": build_tiny_model(root / "llama_left", "llama_bos", padding_side="left"),
    }


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """An empty AUTOLAYER_HOME so caches never leak between tests."""
    monkeypatch.setenv("AUTOLAYER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys, *args) -> tuple[int, str, str]:
    """The CLI in-process: exit code, standard output, standard error."""
    from autolayer.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def models(tiny_models) -> str:
    """The tiny encoder and decoder as a ``--models`` value."""
    return f"{tiny_models['bert']},{tiny_models['llama']}"


TINY_HEAD = {
    "operator": "concat",
    "width": 16,
    "hidden": 8,
    "dropout": 0.0,
    "lr": 0.003,
    "batch_size": 8,
    "epochs": 2,
}


def write_config(folder: Path, model: Path, **changes) -> Path:
    """A small valid config (tiny encoder at hidden state 2, a small MLP head fusing by
    concatenation) as ``folder/config.yaml``; ``changes`` replace or add top-level fields."""
    import yaml

    from autolayer import zoo

    data = {
        "schema_version": 2,
        "models": [
            {
                "spec": str(model),
                "identity": zoo.resolve(str(model)).identity,
                "layer": 2,
                "n_hidden_states": 5,
            }
        ],
        "head": {"kind": "mlp", "params": TINY_HEAD},
        "label_names": ["neg", "pos"],
        **changes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def one_thread():
    """Tiny models are overhead-bound, and exact comparisons of two runs hold for any
    thread count only by luck of the BLAS's reduction order: pin one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A small two-class dataset folder (train/test JSONL) of varied lengths."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(60):
        label = "pos" if i % 2 else "neg"
        words = ["good", "great", "fun"] if label == "pos" else ["bad", "awful", "dull"]
        n = rng.randint(1, 12)
        rows.append(
            {"text": " ".join(rng.choice([*words, *WORDS[:8]]) for _ in range(n)), "label": label}
        )
    folder = tmp_path / "tiny"
    write_jsonl(folder / "train.jsonl", rows[:40])
    write_jsonl(folder / "test.jsonl", rows[40:])
    return folder


def one_error_line(err: str) -> str:
    """The one ``error:`` line a refused command printed (warnings and plain progress lines
    aside), checked to be alone and without a traceback."""
    lines = [
        line
        for line in err.strip().splitlines()
        if line.strip()
        and not line.startswith(("WARNING", "INFO"))
        and " texts (" not in line  # plain progress lines when not a terminal
        and " trials (" not in line
    ]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def config(tmp_path, tiny_models) -> Path:
    """A config for the tiny encoder (see :func:`write_config`)."""
    return write_config(tmp_path / "cfg", tiny_models["bert"])


@pytest.fixture()
def saved_model(capsys, tmp_path, home, config, tiny_dataset) -> Path:
    """A model folder that ``apply`` saved from :func:`config` on the tiny dataset."""
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "model")
    assert code == 0, err
    return tmp_path / "model"


@pytest.fixture()
def word_counts(monkeypatch) -> type:
    """A dense source that learns from texts (its vocabulary, and a text's counts of it),
    registered as ``counts`` for one test."""
    import numpy as np

    from autolayer.sources import SOURCES, FeatureSource

    class WordCounts(FeatureSource):
        kind = "counts"
        learns = True
        files = ("counts.json",)
        identity = "counts-1"
        n_states = 1

        def __init__(self, spec: str = "counts", *, trust_remote_code: bool = False) -> None:
            super().__init__(spec, trust_remote_code=trust_remote_code)
            self.words: list[str] = []

        @classmethod
        def accepts(cls, spec: str) -> bool:
            return spec == "counts"

        @property
        def width(self) -> int:
            return len(self.words)

        def embed(self, texts, layers, **settings):
            raise AssertionError("a source that learns is transformed, never embedded")

        def parameters(self, layer: int) -> int:
            return 0

        def fit(self, texts) -> WordCounts:
            self.words = sorted({word for text in texts for word in text.split()})
            return self

        def transform(self, texts) -> np.ndarray:
            rows = [[text.split().count(word) for word in self.words] for text in texts]
            return np.asarray(rows, dtype=np.float32)

        def save(self, directory: Path) -> None:
            (directory / "counts.json").write_text(json.dumps(self.words))

        @classmethod
        def load(cls, directory: Path) -> WordCounts:
            source = cls()
            source.words = json.loads((directory / "counts.json").read_text())
            return source

    monkeypatch.setitem(SOURCES, "counts", WordCounts)
    return WordCounts


@pytest.fixture()
def trust_seen(monkeypatch) -> list[bool]:
    """The ``trust_remote_code`` of every source extraction builds, in order."""
    from autolayer import extraction

    seen = []
    make = extraction.make_source

    def spy(spec, *, trust_remote_code=False):
        seen.append(trust_remote_code)
        return make(spec, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(extraction, "make_source", spy)
    return seen

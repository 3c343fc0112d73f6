"""Extraction on tiny random models: hook capture, pooling, truncation, cache protocol."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from autolayer import zoo
from autolayer.errors import ConfigError
from autolayer.sources import normalise_layers
from autolayer.sources import transformer as tr
from tests.conftest import run, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


TEXTS = [
    "the movie was good",
    "bad",
    "a very very boring plot with actors that really hated it",
    "fun",
    "the story was not great but the actors loved it",
]


def reference(folder, texts, pooling, skip_first):
    """Pooled ``output_hidden_states`` of each text run alone (no padding at all)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    for text in texts:
        enc = tok([text], return_tensors="pt")
        with torch.inference_mode():
            states = model(**enc, output_hidden_states=True).hidden_states
        rows.append(
            torch.stack([tr.pool(h, enc["attention_mask"], pooling, skip_first) for h in states], 1)
        )
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("kind", ["bert", "llama", "llama_left"])
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_batched_hooks_match_unpadded_hidden_states(tiny_models, kind, pooling):
    source = zoo.resolve(str(tiny_models[kind]))
    backbone = tr.Backbone(source)
    got = backbone.encode(TEXTS, pooling=pooling, batch_size=3)
    skip = backbone.is_decoder and pooling == "mean"
    want = reference(str(tiny_models[kind]), TEXTS, pooling, skip)
    assert got.shape == (len(TEXTS), 5, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_decoder_detection(tiny_models):
    assert not tr.Backbone(zoo.resolve(str(tiny_models["bert"]))).is_decoder
    assert tr.Backbone(zoo.resolve(str(tiny_models["llama"]))).is_decoder


def test_mean_pooling_by_hand_skips_first_token_only_when_asked():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])  # left-padded row, right-padded row
    plain = tr.pool(hidden, mask, "mean", skip_first=False)
    skipped = tr.pool(hidden, mask, "mean", skip_first=True)
    torch.testing.assert_close(plain[0], hidden[0, 1:].mean(0))
    torch.testing.assert_close(plain[1], hidden[1, :2].mean(0))
    torch.testing.assert_close(skipped[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(skipped[1], hidden[1, 1])
    torch.testing.assert_close(tr.pool(hidden, mask, "last", False), hidden[[0, 1], [3, 1]])
    torch.testing.assert_close(tr.pool(hidden, mask, "cls", False), hidden[[0, 1], [1, 0]])


def test_single_token_text_keeps_its_only_token():
    hidden = torch.randn(1, 3, 4)
    mask = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(tr.pool(hidden, mask, "mean", skip_first=True), hidden[:, 2])


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_truncated_backbone_runs_only_needed_layers_and_matches_full(tiny_models, kind):
    source = zoo.resolve(str(tiny_models[kind]))
    full = tr.Backbone(source).encode(TEXTS)
    part = tr.Backbone(source, [1, 2])
    assert len(part._blocks) == 2
    np.testing.assert_allclose(part.encode(TEXTS), full[:, [1, 2]], atol=1e-5)
    zero = tr.Backbone(source, [0])
    np.testing.assert_allclose(zero.encode(TEXTS), full[:, [0]], atol=1e-6)


def test_layer_indices_are_validated():
    assert normalise_layers([-1, 0, 2, 2], 5) == (0, 2, 4)
    with pytest.raises(ConfigError, match="out of range"):
        normalise_layers([7], 5)


def test_recorded_seconds_leave_out_loading_the_model(tiny_models, home, monkeypatch):
    # The per-text time feeds latency budgets: on 16 texts a model load would dominate it.
    import time

    from autolayer.extraction import embed_texts
    from autolayer.sources.transformer import TransformerSource

    clock = {"now": 0.0}
    original = TransformerSource.backbone

    def slow_backbone(self, layers, device=None):
        if not self._backbones:
            clock["now"] += 1000.0  # loading the weights takes "1000 s" on the fake clock
        return original(self, layers, device)

    monkeypatch.setattr(TransformerSource, "backbone", slow_backbone)
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])
    emb = embed_texts(str(tiny_models["bert"]), ["a b", "c d e", "f"], max_length=8)
    assert emb.meta["computed_rows"] == 3
    assert emb.meta["seconds"] < 1000.0


def test_embedding_without_the_cache_neither_reads_nor_writes_it(tiny_models, home, monkeypatch):
    from autolayer.cache import CacheEntry
    from autolayer.extraction import embed_texts

    model = str(tiny_models["bert"])
    cached = embed_texts(model, TEXTS, layers=[2])

    def unusable(*args, **kwargs):
        raise PermissionError("the cache is read-only")

    monkeypatch.setattr(CacheEntry, "__init__", unusable)
    alone = embed_texts(model, TEXTS, layers=[2], use_cache=False)
    assert not alone.meta["cached"] and alone.meta["computed_rows"] == len(TEXTS)
    np.testing.assert_allclose(alone.array, cached.array, atol=1e-6)
    some = embed_texts(model, TEXTS, layers=[2], rows=[3, 1], use_cache=False)
    np.testing.assert_allclose(some.array, cached.array[[3, 1]], atol=1e-6)


def test_library_extraction_prints_no_weight_loading_bars_or_reports(
    tiny_models, tiny_dataset, home, capfd
):
    from transformers.utils import logging as hf_logging

    import autolayer

    was, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.enable_progress_bar()  # as in a fresh Python session
    hf_logging.set_verbosity_warning()
    # transformers' own handler writes to the stderr of the moment it was imported, which
    # pytest may hold elsewhere than capfd: its records are read here instead
    reported = _Records()
    hf_logging.get_logger().addHandler(reported)
    try:
        capfd.readouterr()
        # the tiny BERT was saved without its pooler: loading it reports the pooler's
        # weights as MISSING (autolayer does not use them)
        autolayer.extract(str(tiny_models["bert"]), str(tiny_dataset), "test")
        assert "Loading weights" not in capfd.readouterr().err
        assert not [m for m in reported.messages if "LOAD REPORT" in m]
        # the caller's own settings are kept
        assert hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.WARNING
    finally:
        hf_logging.get_logger().removeHandler(reported)
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
        hf_logging.set_verbosity(verbosity)


class _Records(logging.Handler):
    """The messages of the log records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("max_length", [1, "8", 8.0, True])
def test_a_max_length_the_options_refuse_is_refused_as_the_options_word_it(
    tiny_models, home, max_length
):
    """One bound, one message: before, ``embed_texts`` had its own check, which let 8.0
    and True through and met "8" with a TypeError."""
    from autolayer.extraction import embed_texts
    from autolayer.options import Options

    with pytest.raises(ConfigError) as options:
        Options(max_length=max_length)
    with pytest.raises(ConfigError) as extraction:
        embed_texts(str(tiny_models["bert"]), ["a b"], max_length=max_length)
    assert str(extraction.value) == str(options.value)
    assert str(extraction.value).startswith("max_length must be an integer >= 2; got ")


def test_max_length_beyond_the_model_is_cut_with_a_note(
    capsys, tmp_path, home, tiny_models, caplog
):
    rows = [{"text": " ".join(["good"] * 600), "label": "pos"}, {"text": "bad", "label": "neg"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    code, _, err = run(
        capsys, "extract", "-m", tiny_models["bert"], "-d", path, "--max-length", "1024"
    )
    assert code == 0, err
    said = "takes at most 128 tokens, fewer than the 1024 asked for: texts are cut at 128 tokens"
    assert said in caplog.text and "max_length" not in caplog.text


@pytest.mark.parametrize("kind", ["txt", "no label column", "one class"])
def test_extract_embeds_unlabelled_text(capsys, tmp_path, home, tiny_models, kind):
    if kind == "txt":
        path = tmp_path / "texts.txt"
        path.write_text("good film\nbad plot\nfun story\n")
    else:
        rows = [{"text": t} for t in ("good film", "bad plot", "fun story")]
        if kind == "one class":
            rows = [{**r, "label": "a"} for r in rows]
        path = write_jsonl(tmp_path / "texts.jsonl", rows)
    out = tmp_path / "x.npy"
    code, _, err = run(capsys, "extract", "-m", tiny_models["bert"], "-d", path, "-o", out)
    assert code == 0, err
    assert np.load(out).shape == (3, 5, 32)

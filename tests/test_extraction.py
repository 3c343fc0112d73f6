"""Extraction on tiny random models: hook capture, pooling, truncation, cache protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autolayer import extraction as ex
from autolayer import zoo
from autolayer.errors import ConfigError

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
            torch.stack([ex.pool(h, enc["attention_mask"], pooling, skip_first) for h in states], 1)
        )
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("kind", ["bert", "llama", "llama_left"])
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_batched_hooks_match_unpadded_hidden_states(tiny_models, kind, pooling):
    source = zoo.resolve(str(tiny_models[kind]))
    backbone = ex.Backbone(source)
    got = backbone.encode(TEXTS, pooling=pooling, batch_size=3)
    skip = backbone.is_decoder and pooling == "mean"
    want = reference(str(tiny_models[kind]), TEXTS, pooling, skip)
    assert got.shape == (len(TEXTS), 5, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_decoder_detection(tiny_models):
    assert not ex.Backbone(zoo.resolve(str(tiny_models["bert"]))).is_decoder
    assert ex.Backbone(zoo.resolve(str(tiny_models["llama"]))).is_decoder


def test_mean_pooling_by_hand_skips_first_token_only_when_asked():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])  # left-padded row, right-padded row
    plain = ex.pool(hidden, mask, "mean", skip_first=False)
    skipped = ex.pool(hidden, mask, "mean", skip_first=True)
    torch.testing.assert_close(plain[0], hidden[0, 1:].mean(0))
    torch.testing.assert_close(plain[1], hidden[1, :2].mean(0))
    torch.testing.assert_close(skipped[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(skipped[1], hidden[1, 1])
    torch.testing.assert_close(ex.pool(hidden, mask, "last", False), hidden[[0, 1], [3, 1]])
    torch.testing.assert_close(ex.pool(hidden, mask, "cls", False), hidden[[0, 1], [1, 0]])


def test_single_token_text_keeps_its_only_token():
    hidden = torch.randn(1, 3, 4)
    mask = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(ex.pool(hidden, mask, "mean", skip_first=True), hidden[:, 2])


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_truncated_backbone_runs_only_needed_layers_and_matches_full(tiny_models, kind):
    source = zoo.resolve(str(tiny_models[kind]))
    full = ex.Backbone(source).encode(TEXTS)
    part = ex.Backbone(source, [1, 2])
    assert len(part._blocks) == 2
    np.testing.assert_allclose(part.encode(TEXTS), full[:, [1, 2]], atol=1e-5)
    zero = ex.Backbone(source, [0])
    np.testing.assert_allclose(zero.encode(TEXTS), full[:, [0]], atol=1e-6)


def test_layer_indices_are_validated():
    assert ex.normalise_layers([-1, 0, 2, 2], 5) == (0, 2, 4)
    with pytest.raises(ConfigError, match="out of range"):
        ex.normalise_layers([7], 5)


def test_extract_caches_and_second_call_does_no_model_work(
    tiny_models, tiny_dataset, home, monkeypatch
):
    first = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert first.array.shape == (40, 5, 32) and not first.meta["cached"]

    def boom(*a, **k):
        raise AssertionError("model was loaded on a cache hit")

    monkeypatch.setattr(ex, "Backbone", boom)
    second = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert second.meta["cached"]
    np.testing.assert_array_equal(first.array, second.array)
    subset = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", layers=[-1, 1])
    np.testing.assert_array_equal(subset.array, first.array[:, [1, 4]])
    assert subset.layer(-1).shape == (40, 32)


def test_cache_key_changes_with_pooling_and_max_length(tiny_models, tiny_dataset, home):
    model = str(tiny_models["bert"])
    a = ex.extract(model, str(tiny_dataset), "test")
    b = ex.extract(model, str(tiny_dataset), "test", pooling="cls")
    c = ex.extract(model, str(tiny_dataset), "test", max_length=4)
    assert not b.meta["cached"] and not c.meta["cached"]
    assert not np.allclose(a.array, b.array) and not np.allclose(a.array, c.array)


def test_interrupted_extraction_resumes_from_finished_chunks(tiny_models, tiny_dataset, home):
    model = str(tiny_models["llama"])
    seen = []

    def stop_in_third_chunk(n):
        seen.append(n)
        if sum(seen) > 16:  # during the third chunk: two are on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.extract(
            model,
            str(tiny_dataset),
            "train",
            chunk_size=8,
            batch_size=4,
            progress=stop_in_third_chunk,
        )
    resumed = ex.extract(model, str(tiny_dataset), "train", chunk_size=8, batch_size=4)
    assert resumed.meta["computed_rows"] == 40 - 16
    clean = ex.extract(
        model, str(tiny_dataset), "train", chunk_size=8, batch_size=4, cache_dir=home / "other"
    )
    np.testing.assert_array_equal(resumed.array, clean.array)


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupt_cache_entry_is_detected_and_recomputed(
    tiny_models, tiny_dataset, home, damage, caplog
):
    model = str(tiny_models["bert"])
    good = np.array(ex.extract(model, str(tiny_dataset), "train").array)
    [entry] = (home / "embeddings").iterdir()
    array_path = entry / "embeddings.npy"
    raw = bytearray(array_path.read_bytes())
    if damage == "flip":
        raw[-5] ^= 0xFF
        array_path.write_bytes(bytes(raw))
    elif damage == "truncate":
        array_path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        (entry / "meta.json").write_text("{not json")
    again = ex.extract(model, str(tiny_dataset), "train")
    assert not again.meta["cached"]
    assert "corrupt" in caplog.text
    np.testing.assert_array_equal(again.array, good)

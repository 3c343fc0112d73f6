"""The extraction cache on tiny random models: keys, hits without model work, resumption
from finished chunks, corrupt entries recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from autolayer import extraction as ex
from autolayer.sources import transformer as tr

pytestmark = pytest.mark.usefixtures("one_thread")


def test_extract_caches_and_second_call_does_no_model_work(
    tiny_models, tiny_dataset, home, monkeypatch
):
    first = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert first.array.shape == (40, 5, 32) and not first.meta["cached"]

    def boom(*a, **k):
        raise AssertionError("model was loaded on a cache hit")

    monkeypatch.setattr(tr, "Backbone", boom)
    second = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", chunk_size=16)
    assert second.meta["cached"]
    np.testing.assert_array_equal(first.array, second.array)
    subset = ex.extract(str(tiny_models["llama"]), str(tiny_dataset), "train", layers=[-1, 1])
    np.testing.assert_array_equal(subset.array, first.array[:, [1, 4]])
    assert subset.layer(-1).shape == (40, 32)


def test_rows_come_from_a_whole_entry_or_are_cached_on_their_own(
    tiny_models, tiny_dataset, home, monkeypatch
):
    from autolayer.data import split_texts

    model, (_, texts) = str(tiny_models["bert"]), split_texts(str(tiny_dataset), "train")
    rows = np.array([3, 0, 17, 9])
    alone = ex.embed_texts(model, texts, rows=rows, layers=[1, 2])
    assert not alone.meta["cached"] and alone.meta["computed_rows"] == 4  # the rows only
    whole = ex.embed_texts(model, texts)
    np.testing.assert_allclose(alone.array, whole.array[rows][:, [1, 2]], atol=1e-5)

    def boom(*a, **k):
        raise AssertionError("model was loaded although the whole split is cached")

    monkeypatch.setattr(tr, "Backbone", boom)
    served = ex.embed_texts(model, texts, rows=[5, 2, 30], layers=[2])
    assert served.meta["cached"]
    np.testing.assert_array_equal(served.array, whole.array[[5, 2, 30]][:, [2]])


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
    assert resumed.meta["timed_rows"] == 40  # what a text costs knows the first run's chunks
    assert resumed.meta["timed_seconds"] > resumed.meta["seconds"] > 0
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

"""predict: output formats, rows and ids, interruptions, and saved models it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autolayer.errors import CacheError
from tests.conftest import one_error_line, run


def test_an_interrupted_predict_says_what_it_left(capsys, tmp_path, saved_model, monkeypatch):
    """No trials to resume: predict says that nothing was written, not that work is kept."""
    from autolayer import predictions

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predictions, "predict_file", interrupted)
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == 130
    assert one_error_line(err) == "error: interrupted: no predictions were written"


def test_predictions_are_written_in_the_format_the_extension_names(capsys, tmp_path, saved_model):
    import pyarrow.parquet as pq

    (tmp_path / "in.txt").write_text("good film\n\nbad plot\n")
    out = tmp_path / "p.parquet"
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt", "-o", out)
    assert code == 0, err
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == [0, 2]  # the blank line 1 is skipped, not renumbered
    assert {"text", "label", "p_neg", "p_pos"} <= set(table[0])
    code, _, err = run(
        capsys, "predict", saved_model, "-i", tmp_path / "in.txt", "-o", tmp_path / "p.csv"
    )
    assert code == 0, err
    written = (tmp_path / "p.csv").read_bytes()
    assert written.startswith(b"row,text,label,p_neg,p_pos\n") and b"\r" not in written


@pytest.mark.parametrize("flag", [True, False])
def test_predict_gives_trust_remote_code_to_every_extraction(
    capsys, tmp_path, saved_model, trust_seen, flag
):
    """predict's --trust-remote-code reaches every source it builds (a model whose backbone
    needs its own code labels texts, as apply trained it)."""
    (tmp_path / "in.txt").write_text("good film\n")
    args = ["predict", saved_model, "-i", tmp_path / "in.txt"]
    code, _, err = run(capsys, *args, *(["--trust-remote-code"] if flag else []))
    assert code == 0, err
    assert trust_seen and set(trust_seen) == {flag}


def test_predict_passes_an_id_column_through(capsys, tmp_path, saved_model):
    path = tmp_path / "in.csv"
    path.write_text("key,text\nr7,good film\nr9,   \nr8,bad plot\n")
    code, out, err = run(capsys, "predict", saved_model, "-i", path, "--id-column", "key")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["row"], r["key"]) for r in rows] == [(0, "r7"), (2, "r8")]


def test_predict_without_output_writes_jsonl_to_stdout(capsys, tmp_path, saved_model):
    (tmp_path / "in.txt").write_text("good film\nbad plot\n")
    code, out, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["row"] for r in rows] == [0, 1] and {r["label"] for r in rows} <= {"neg", "pos"}


def test_a_saved_model_whose_config_names_another_layer_is_refused(capsys, tmp_path, saved_model):
    (tmp_path / "in.txt").write_text("good film\n")
    path = saved_model / "config.yaml"
    edited = yaml.safe_load(path.read_text())
    edited["models"][0]["layer"] = 3
    path.write_text(yaml.safe_dump(edited))
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code != 0 and "layer 3 (trained on 2)" in one_error_line(err)


def test_a_saved_model_whose_config_names_another_task_is_refused(
    capsys, tmp_path, saved_model, monkeypatch
):
    """The head decides as the task it was trained for; a config.yaml edited to name
    another (registered) task no longer describes it."""
    from autolayer.task import TASKS, SingleLabel

    monkeypatch.setitem(TASKS, "other", type("Other", (SingleLabel,), {"name": "other"}))
    (tmp_path / "in.txt").write_text("good film\n")
    path = saved_model / "config.yaml"
    edited = yaml.safe_load(path.read_text())
    edited["task"] = "other"
    path.write_text(yaml.safe_dump(edited))
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code != 0
    assert "task 'other', but the head was trained for task 'single_label'" in one_error_line(err)


def test_a_corrupt_saved_head_is_one_line_not_a_bug(capsys, tmp_path, saved_model):
    (saved_model / "head.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == CacheError.exit_code and "is corrupt" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# predict and the embedding cache: none by default, --cache-dir to keep the embeddings


@pytest.fixture()
def model_for_predict(tmp_path, saved_model) -> Path:
    """A saved model and two texts to label (``in.txt``)."""
    (tmp_path / "in.txt").write_text("good film\nbad plot\n")
    return saved_model


@pytest.mark.parametrize("flags", [[], ["--no-cache"]])
def test_predict_uses_no_cache_by_default_so_a_read_only_one_is_no_problem(
    capsys, tmp_path, model_for_predict, monkeypatch, flags
):
    from autolayer.cache import CacheEntry

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "home" / "embeddings"))

    monkeypatch.setattr(CacheEntry, "__init__", read_only)  # any use of the cache fails
    args = ["predict", model_for_predict, "-i", tmp_path / "in.txt", *flags]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert [json.loads(line)["row"] for line in out.splitlines()] == [0, 1]


def test_predict_with_cache_dir_keeps_the_embeddings_there(
    capsys, tmp_path, model_for_predict, monkeypatch
):
    from autolayer.sources import transformer as tr

    cache = tmp_path / "predict-cache"
    args = ["predict", model_for_predict, "-i", tmp_path / "in.txt", "--cache-dir", cache]
    code, first, err = run(capsys, *args)
    assert code == 0, err
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1

    def boom(*a, **k):
        raise AssertionError("the model ran although the texts are cached")

    monkeypatch.setattr(tr, "Backbone", boom)
    code, again, err = run(capsys, *args)
    assert code == 0 and again == first, err
    code, _, err = run(capsys, *args, "--no-cache")
    assert code != 0 and "--no-cache and --cache-dir" in one_error_line(err)

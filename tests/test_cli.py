"""The CLI in-process: a working extract, and one-line errors (no traceback) for bad input."""

from __future__ import annotations

import json

import pytest

from autolayer import zoo
from tests.conftest import WORDS, run, write_jsonl


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("extract", "zoo"):
        assert command in out


def test_extract_prints_per_layer_summary_and_saves_array(capsys, tiny_models, tiny_dataset, home):
    import numpy as np

    target = home / "out.npy"
    args = ["extract", "-m", str(tiny_models["bert"]), "-d", str(tiny_dataset), "-o", str(target)]
    code, out, _ = run(capsys, *args)
    assert code == 0, out
    assert "per-layer summary" in out and "4 (last)" in out
    assert np.load(target).shape == (40, 5, 32)
    code, out, _ = run(capsys, *args)
    assert code == 0 and "cache hit" in out


def _rows(n: int = 10) -> list[dict]:
    return [{"text": f"text number {i}", "label": "a" if i % 2 else "b"} for i in range(n)]


def _bad_inputs(tmp_path):
    """(name, dataset path or None, model spec or None, expected message part)."""
    cases = {}
    cases["missing file"] = (str(tmp_path / "nope.jsonl"), None, "not found")
    (tmp_path / "data.xml").write_text("<a/>")
    cases["unsupported format"] = (str(tmp_path / "data.xml"), None, "supported")
    write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "x"}] * 4)
    cases["missing label column"] = (str(tmp_path / "nolabel.jsonl"), None, "label")
    (tmp_path / "empty.jsonl").write_text("")
    cases["empty dataset"] = (str(tmp_path / "empty.jsonl"), None, "empty")
    write_jsonl(tmp_path / "one.jsonl", [{"text": f"t {i}", "label": "a"} for i in range(5)])
    cases["one class"] = (str(tmp_path / "one.jsonl"), None, "class")
    (tmp_path / "latin1.jsonl").write_bytes(
        json.dumps({"text": "x", "label": "a"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n'
    )
    cases["non-utf8"] = (str(tmp_path / "latin1.jsonl"), None, "UTF-8")
    write_jsonl(tmp_path / "ok.jsonl", _rows())
    cases["unknown alias offline"] = (str(tmp_path / "ok.jsonl"), "not-a-model", "zoo install")
    cases["missing model folder"] = (
        str(tmp_path / "ok.jsonl"),
        "./no/such/model",
        "does not exist",
    )
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "unsupported format",
        "missing label column",
        "empty dataset",
        "one class",
        "non-utf8",
        "unknown alias offline",
        "missing model folder",
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(capsys, tmp_path, tiny_models, home, case):
    dataset, model, expected = _bad_inputs(tmp_path)[case]
    # Embedding needs no labels, so label problems are found by the commands that use them.
    command = "score" if case in ("missing label column", "one class") else "extract"
    code, _, err = run(capsys, command, "-m", model or str(tiny_models["bert"]), "-d", dataset)
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and expected.lower() in lines[0].lower()


def test_whitespace_texts_are_dropped_with_a_warning(capsys, tmp_path, tiny_models, home, caplog):
    rows = _rows() + [{"text": "   ", "label": "a"}, {"text": "", "label": "b"}]
    path = write_jsonl(tmp_path / "blank.jsonl", rows)
    code, out, _ = run(capsys, "extract", "-m", str(tiny_models["bert"]), "-d", str(path))
    assert code == 0
    assert "[10, 5, 32]" in out
    assert "2" in caplog.text and "empty" in caplog.text.lower()


def test_a_one_example_class_is_named_once(capsys, tmp_path, tiny_models, home, caplog):
    rows = [{"text": f"text {WORDS[i % 7]} {i % 5}", "label": "ab"[i % 2]} for i in range(40)]
    path = write_jsonl(tmp_path / "rare.jsonl", [*rows, {"text": "lonely", "label": "rare"}])
    code, *_ = run(
        capsys,
        *("recommend", "-d", path, "--models", f"{tiny_models['bert']},tfidf"),
        *("--n-trials", 2, "--max-length", 12, "-o", tmp_path / "out"),
    )
    assert code == 0
    shown = [r.getMessage() for r in caplog.records if "single example" in r.getMessage()]
    assert shown == ["1 class(es) with a single example among the rows probed, left out: 'rare'"]


def test_gguf_without_gguf_package_is_a_clear_error(capsys, tmp_path, home, monkeypatch):
    import importlib.util

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    write_jsonl(tmp_path / "ok.jsonl", _rows())
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    code, _, err = run(
        capsys, "extract", "-m", str(tmp_path / "m.gguf"), "-d", str(tmp_path / "ok.jsonl")
    )
    assert code == zoo.ModelError.exit_code
    assert "pip install 'autolayer[gguf]'" in err and "Traceback" not in err


def test_bad_layer_list_is_a_usage_error(capsys, tiny_models, tiny_dataset, home):
    code, _, err = run(capsys, "extract", "-m", str(tiny_models["bert"]), "--layers", "1,x")
    assert code == 2 and "comma-separated" in err
    code, _, err = run(
        capsys, "extract", "-m", str(tiny_models["bert"]), "-d", str(tiny_dataset), "--layers", "9"
    )
    assert code != 0 and "out of range" in err

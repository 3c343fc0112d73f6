"""The CLI in-process: a working extract, and one-line errors (no traceback) for bad input."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

from autolayer import zoo
from autolayer.config import load_config
from tests.conftest import WORDS, one_error_line, run, write_jsonl


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("extract", "zoo"):
        assert command in out


def test_extract_prints_per_layer_summary_and_saves_array(capsys, tiny_models, tiny_dataset, home):

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
    cases["missing file"] = (str(tmp_path / "nope.jsonl"), None, "no such file or folder")
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


# ---------------------------------------------------------------------------------------------
# What the CLI says: options it ignores, Python names, exit codes, interruptions


def test_options_a_run_ignores_are_said_once(
    capsys, caplog, tmp_path, tiny_models, tiny_dataset, home
):
    args = ["search", "-d", tiny_dataset, "--models", tiny_models["bert"], "--n-trials", 1]
    args += ["--max-length", 8, "--exhaustive"]

    def said() -> list[str]:
        messages = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return [m for m in messages if "ignored" in m or "--top-k" in m]

    (tmp_path / "file").write_text("")
    args += ["-o", tmp_path / "file" / "out"]  # refused: said before any work, or not at all
    code, _, err = run(capsys, *args, "--screen-size", 10, "--top-k", 9)
    assert code != 0 and "Traceback" not in err
    assert said() == [
        "--screen-size is ignored with --exhaustive (every training row is used)",
        f"--top-k 9 is more than the layers of {tiny_models['bert']} (5): all are offered",
    ]
    code, _, err = run(capsys, *args, "--top-k", 5)  # all of them, exactly; no screen size
    assert code != 0 and said() == []


PYTHON_NAMES = ("max_train_samples", "labels_per_class", "cv_folds", "n_folds", "max_examples")


@pytest.mark.parametrize(
    "args, said",
    [
        (
            ["recommend", "--max-train-samples", 8, "--labels-per-class", 2],
            "give --max-train-samples or --labels-per-class, not both",
        ),
        (["recommend", "--anchor", "BERT"], "cross-validation (--labels-per-class or --cv-folds)"),
        (["recommend", "--screen-size", 3], "--screen-size 3 is too small to screen"),
        (["score", "--folds", 50], "40 examples is fewer than --folds (50)"),
        (["score", "--max-examples", 0], "Invalid value for '--max-examples'"),
        (
            ["recommend", "--text-column", "label"],
            "--text-column and --label-column are both 'label'",
        ),
    ],
)
def test_messages_name_the_cli_options_not_python_arguments(
    capsys, tmp_path, home, tiny_models, tiny_dataset, args, said
):
    bert = str(tiny_models["bert"])
    args = [bert if a == "BERT" else a for a in args]
    if args[0] == "recommend":
        args += ["--models", bert, "-o", tmp_path / "o"]
    else:
        args += ["-m", bert]
    code, _, err = run(capsys, *args, "-d", tiny_dataset)
    line = one_error_line(err)
    assert code == 2 and said in " ".join(line.split()), err
    assert not [name for name in PYTHON_NAMES if name in line], line


def test_a_split_too_small_to_carve_suggests_an_option_the_cli_has(capsys, tmp_path, home):
    rows = [{"text": f"{word} {i}", "label": word} for i in range(2) for word in "abcd"]
    path = write_jsonl(tmp_path / "small.jsonl", rows)
    code, _, err = run(capsys, "recommend", "-d", path, "--models", "tfidf", "-o", tmp_path / "o")
    line = one_error_line(err)
    assert code == 2 and "split of 20%" in line and "(--cv-folds) instead" in line, err
    assert "size" not in line.replace("--", ""), line
    args = ["recommend", "-d", path, "--models", "tfidf", "-o", tmp_path / "o"]
    code, _, err = run(capsys, *args, "--max-train-samples", 3)
    assert code == 2 and "a sample of 3 rows cannot hold the 4 classes" in err, err


def test_usage_errors_exit_2_whoever_finds_them(capsys, tmp_path, tiny_dataset, home):
    """One rule: 2 when what was typed must change, found by click or by autolayer."""
    out_dir = ["-o", tmp_path / "o", "--models", "tfidf"]
    typed = {
        "click's": ["recommend", "--no-such-option"],
        "an option's value": ["recommend", "-d", tiny_dataset, "--anchor", "x", *out_dir],
        "two options together": ["recommend", "--max-train-samples", 8, "--labels-per-class", 2],
        "the data": ["recommend", "-d", tmp_path / "missing.csv", *out_dir],
    }
    for what, args in typed.items():
        code, _, err = run(capsys, *args)
        assert code == 2 and err.startswith("error:"), (what, err)
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Exit codes: 0 done; 2 fix what was typed" in " ".join(out.split())


NAP = """
import atexit, os, signal, sys, time
from autolayer import cli

@cli.cli.command("nap")
def nap():
    # a second Ctrl-C during shutdown (torch registers atexit handlers) must say nothing more
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    finally:  # and one while the first unwinds (cleanup of atomic writes, failed trials)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

sys.argv = ["autolayer", "nap"]
sys.exit(cli.main())
"""


def test_ctrl_c_twice_prints_one_line_and_no_traceback(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NAP], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 130, done.stderr
    assert one_error_line(done.stderr).startswith("error: interrupted:"), done.stderr


def test_main_in_process_gives_back_the_signal_handlers(capsys):
    import signal

    handlers = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(sig) for sig in handlers]
    code, *_ = run(capsys, "--version")
    assert code == 0 and [signal.getsignal(sig) for sig in handlers] == before


def _search(capsys, tiny_dataset, models, out, *extra):
    return run(capsys, "search", "-d", tiny_dataset, "--models", models, "-o", out, *extra)


def test_ctrl_c_is_one_line_and_an_interrupted_first_run_can_be_exported(
    capsys, tmp_path, home, tiny_models, tiny_dataset, monkeypatch, caplog
):
    from autolayer.heads.mlp import MLPHead

    calls = {"n": 0}
    real = MLPHead.fit

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(MLPHead, "fit", interrupted)
    logged = []  # what Optuna's own handlers print (after their filters)
    for handler in optuna.logging.get_logger("optuna").handlers:
        monkeypatch.setattr(handler, "emit", logged.append)
    out = tmp_path / "s"
    code, _, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, "--n-trials", "5")
    assert code == 130
    assert "interrupted: finished work is kept" in one_error_line(err)
    assert not [r for r in logged if r.exc_info or "KeyboardInterrupt" in r.getMessage()]
    code, _, err = run(capsys, "export", out, "-o", tmp_path / "c.yaml")
    assert code == 0, err
    assert load_config(tmp_path / "c.yaml").validation["trial"] in (0, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["extract", "apply"])
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, home, config, tiny_models, command):
    args = {
        "extract": ["extract", "-m", tiny_models["bert"]],
        "apply": ["apply", config, "-o", tmp_path / "m"],
    }[command]
    code, _, err = run(capsys, *args, "--device", "cuda")
    assert code != 0 and "CUDA" in one_error_line(err)


def test_an_unexpected_error_is_one_line_not_a_traceback(capsys, monkeypatch, home):
    from autolayer import zoo as zoo_module

    def broken():
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(zoo_module, "status", broken)
    code, _, err = run(capsys, "zoo", "list")
    assert code != 0
    line = one_error_line(err)
    assert "RuntimeError: boom" in line and "-v" in line


@pytest.mark.parametrize("command", ["score", "complementarity"])
def test_score_and_complementarity_take_pooling_and_max_length(
    capsys, tmp_path, home, tiny_models, tiny_dataset, command
):
    models = f"{tiny_models['bert']},{tiny_models['llama']}"
    code, _, err = run(
        capsys, command, "-m", models, "-d", tiny_dataset, "--pooling", "last", "--max-length", "8"
    )
    assert code == 0, err
    metas = [json.loads(p.read_text()) for p in (home / "embeddings").glob("*/meta.json")]
    assert metas and {(m["pooling"], m["max_length"]) for m in metas} == {("last", 8)}


def test_library_warnings_are_one_line(capsys, tmp_path, home, tiny_models, caplog):
    rows = [{"text": f"good film {i}", "label": "ab"[i % 2]} for i in range(9)]
    rows.append({"text": "one more bad plot", "label": "c"})  # a class of one: warned
    rows.append({"text": "another bad plot", "label": "c"})
    path = write_jsonl(tmp_path / "rare.jsonl", rows)
    code, _, err = run(capsys, "score", "-m", tiny_models["bert"], "-d", path, "--folds", "3")
    assert code == 0, err
    warned = [r for r in caplog.records if r.name == "autolayer" and "folds" in r.getMessage()]
    assert warned and "\n" not in warned[0].getMessage()
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_an_option_named_twice_in_a_message_is_spelled_as_a_flag_once(
    capsys, tmp_path, home, tiny_dataset, tiny_models
):
    """Only the parameter's first mention is the option; later ones are prose."""
    code, _, err = run(
        capsys,
        *("recommend", "-d", tiny_dataset, "--models", f"{tiny_models['bert']},tfidf"),
        *("--labels-per-class", 6, "--anchor", "tfidf", "-o", tmp_path / "o"),
    )
    assert code != 0
    assert "--anchor 'tfidf' is sparse: an anchor is a dense model" in err


def test_a_python_name_is_a_flag_at_every_mention_a_plain_word_only_at_the_first():
    """``text_column`` is code wherever it stands; "anchor" is also a word of prose."""
    from autolayer.cli import _in_cli_terms
    from autolayer.errors import DataError

    exc = DataError(
        "in.csv: text_column='text' is not a column (…; pass text_column)",
        params=("text_column",),
    )
    assert _in_cli_terms(exc, ["predict", "m", "-i", "in.csv"]) == (
        "in.csv: --text-column='text' is not a column (…; pass --text-column)"
    )
    exc = DataError("anchor 'x' is sparse: an anchor is dense", params=("anchor",))
    said = _in_cli_terms(exc, ["recommend", "-d", "x"])
    assert said == "--anchor 'x' is sparse: an anchor is dense"


def test_export_without_a_study_speaks_python_to_the_library_and_flags_to_the_cli(capsys, tmp_path):
    """The library's message names its arguments; the CLI shows them as its options."""
    from autolayer import pipeline
    from autolayer.errors import ConfigError

    with pytest.raises(ConfigError, match="or storage and study_name$"):
        pipeline.export()
    code, _, err = run(capsys, "export", "-o", tmp_path / "c.yaml")
    assert code == 2 and "or --storage and --study-name" in err, err
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("one", "two"):
        optuna.create_study(storage=storage, study_name=name)
    with pytest.raises(ConfigError, match="^pass study_name; studies in"):
        pipeline.export(storage)
    code, _, err = run(capsys, "export", "--storage", storage, "-o", tmp_path / "c.yaml")
    assert code == 2 and "pass --study-name; studies in" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_said_in_python_and_cli_terms(capsys, tmp_path):
    from autolayer.device import resolve_device
    from autolayer.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda")
    assert str(caught.value).startswith("device 'cuda' asked for") and "--" not in str(caught.value)
    code, _, err = run(capsys, "predict", tmp_path, "-i", tmp_path / "x.csv", "--device", "cuda")
    assert code == 2 and "--device 'cuda' asked for" in err and "use cpu (or auto)" in err, err


@pytest.mark.parametrize("name", ["fresh.csv", "fresh", "array.npy.txt"])
def test_extract_refuses_an_output_not_named_npy_before_any_work(
    capsys, tmp_path, tiny_models, tiny_dataset, home, name
):
    target = tmp_path / name
    args = ["extract", "-m", tiny_models["bert"], "-d", tiny_dataset, "-o", target]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert one_error_line(err) == (
        f"error: extract writes a NumPy array: name the output *.npy, not {name!r}"
    )
    assert not target.exists() and not home.exists()  # nothing embedded, nothing written


# ---------------------------------------------------------------------------------------------
# The search space from the command line: --heads, --baselines


@pytest.mark.parametrize("baselines", [True, False])
def test_heads_and_baselines_reach_the_search(
    capsys, tmp_path, home, tiny_models, tiny_dataset, one_thread, baselines
):
    """``--heads linear``: every trial trains the linear head; the baselines (each model's
    best layer, tfidf's linear SVM among them) are trained unless ``--no-baselines``."""
    from autolayer.selection import BASELINE

    flag = "--baselines" if baselines else "--no-baselines"
    models = f"{tiny_models['bert']},tfidf"
    extra = ("--heads", "linear", flag, "--n-trials", 2, "--max-length", 8)
    code, _, err = _search(capsys, tiny_dataset, models, tmp_path / "o", *extra)
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'o' / 'study.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    trained = [t for t in trials if t.state.name == "COMPLETE"]
    assert trained and {t.user_attrs["head"] for t in trained} == {"linear"}
    marked = {t.params["models"] for t in trials if t.user_attrs.get(BASELINE)}
    assert marked == ({str(tiny_models["bert"]), "tfidf"} if baselines else set())


@pytest.mark.parametrize("command", ["search", "recommend"])
@pytest.mark.parametrize("heads", ["bogus", "linear,bogus", ",", "linear,linear"])
def test_a_bad_head_kind_is_one_line_naming_the_kinds(capsys, tmp_path, home, command, heads):
    code, _, err = run(capsys, command, "--models", "tfidf", "-o", tmp_path / "o", "--heads", heads)
    line = one_error_line(err)
    assert code == 2 and "--heads" in line, err
    if "bogus" in heads or heads == ",":
        assert "the kinds are linear, late, mlp" in line
    assert not (tmp_path / "o").exists()  # refused while parsing, before any work


def test_help_names_the_head_kinds_and_the_baselines_flag(capsys):
    code, out, _ = run(capsys, "recommend", "--help")
    said = " ".join(out.split())
    assert code == 0 and "[default: mlp,linear,late]" in said
    assert "late (late fusion" in said and "--baselines / --no-baselines" in said

"""The bad-input table: every row is one command given one bad input, which must end with a
single `error:` line naming the problem and a non-zero exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autolayer import zoo
from autolayer.cli import main
from tests.conftest import write_jsonl


def _config(tmp: Path, model: Path, **changes) -> Path:
    data = {
        "schema_version": 1,
        "models": [
            {
                "spec": str(model),
                "identity": zoo.resolve(str(model)).identity,
                "layer": 2,
                "n_hidden_states": 5,
            }
        ],
        "operator": "concat",
        "width": 16,
        "hidden": 8,
        "dropout": 0.0,
        "lr": 0.003,
        "batch_size": 8,
        "epochs": 2,
        "label_names": ["neg", "pos"],
    }
    data.update(changes)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(tmp: Path, model: Path, dataset: Path) -> dict[str, tuple[list, str]]:
    """name -> (CLI arguments, text the error line must contain)."""
    rows: dict[str, tuple[list, str]] = {}
    (tmp / "bad.yaml").write_text("models: [unclosed\n")
    rows["malformed config yaml"] = (
        ["apply", tmp / "bad.yaml", "-d", dataset, "-o", tmp / "m"],
        "not valid YAML",
    )
    (tmp / "list.yaml").write_text("- a\n- b\n")
    rows["tampered config (not a mapping)"] = (
        ["apply", tmp / "list.yaml", "-d", dataset, "-o", tmp / "m"],
        "mapping",
    )
    config = _config(tmp, model, schema_version=99)
    rows["unknown schema version"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "m"],
        "schema_version 99",
    )
    (tmp / "v").mkdir()
    config = _config(tmp / "v", model, operator="tensor")
    rows["unknown operator in config"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "m"],
        "operator",
    )
    (tmp / "w").mkdir()
    config = _config(
        tmp / "w",
        model,
        models=[{"spec": "no-such-model", "identity": "x", "layer": 1, "n_hidden_states": 3}],
    )
    rows["config names a model that is not available"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "m"],
        "zoo install",
    )
    (tmp / "x").mkdir()
    config = _config(tmp / "x", model)
    (tmp / "afile").write_text("x")
    rows["output folder not writable"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "afile" / "m"],
        "cannot write",
    )
    write_jsonl(
        tmp / "only" / "train.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(8)]
    )
    write_jsonl(tmp / "only" / "test.jsonl", [{"text": "t", "label": "c"}])
    rows["label only in test"] = (["extract", "-m", model, "-d", tmp / "only"], "'c'")
    write_jsonl(
        tmp / "notest" / "train.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(8)]
    )
    rows["apply on data without a test split"] = (
        ["apply", config, "-d", tmp / "notest", "-o", tmp / "m"],
        "no test split",
    )
    rows["unreachable storage URL"] = (
        [
            "export",
            "--storage",
            "postgresql://u@127.0.0.1:1/db",
            "--study-name",
            "s",
            "-o",
            tmp / "c.yaml",
        ],
        "cannot open storage",
    )
    rows["unsupported storage URL"] = (
        ["export", "--storage", "redis://localhost", "--study-name", "s", "-o", tmp / "c.yaml"],
        "storage must be",
    )
    rows["unknown study name"] = (
        [
            "export",
            "--storage",
            f"sqlite:///{tmp / 'empty.db'}",
            "--study-name",
            "nope",
            "-o",
            tmp / "c.yaml",
        ],
        "no study named",
    )
    (tmp / "nomodel").mkdir()
    rows["predict with a folder that is no model"] = (
        ["predict", tmp / "nomodel", "-i", tmp / "bad.yaml", "-o", tmp / "p.jsonl"],
        "not a saved autolayer model",
    )
    write_jsonl(
        tmp / "tiny3" / "train.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(4)]
    )
    rows["fewer examples than folds"] = (
        ["score", "-m", model, "-d", tmp / "tiny3", "--folds", "5"],
        "",
    )
    rows["complementarity of one model"] = (
        ["complementarity", "-m", model, "-d", dataset],
        "at least 2 models",
    )
    rows["unknown zoo alias to install"] = (["zoo", "install", "bert-huge"], "unknown zoo alias")
    return rows


NAMES = [
    "malformed config yaml",
    "tampered config (not a mapping)",
    "unknown schema version",
    "unknown operator in config",
    "config names a model that is not available",
    "output folder not writable",
    "label only in test",
    "apply on data without a test split",
    "unreachable storage URL",
    "unsupported storage URL",
    "unknown study name",
    "predict with a folder that is no model",
    "fewer examples than folds",
    "complementarity of one model",
    "unknown zoo alias to install",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_table(name, capsys, tmp_path, home, tiny_models, tiny_dataset):
    args, expected = _rows(tmp_path, tiny_models["bert"], tiny_dataset)[name]
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert code != 0, err
    assert "Traceback" not in err
    lines = [
        line for line in err.strip().splitlines() if line.strip() and not line.startswith("WARNING")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]


def test_a_one_megabyte_text_is_truncated_not_a_crash(capsys, tmp_path, home, tiny_models):
    rows = [{"text": "good " * 200_000, "label": "pos"}, {"text": "bad plot", "label": "neg"}]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    assert (
        main(["extract", "-m", str(tiny_models["llama"]), "-d", str(path), "--max-length", "64"])
        == 0
    )


def test_duplicate_texts_with_conflicting_labels_warn(capsys, tmp_path, home, caplog):
    from autolayer.data import load_dataset

    rows = [
        {"text": "same", "label": "a"},
        {"text": "same", "label": "b"},
        {"text": "x", "label": "a"},
    ]
    load_dataset(write_jsonl(tmp_path / "dup.jsonl", rows))
    assert "conflicting labels" in caplog.text


def test_truncated_cache_file_is_recomputed_by_the_cli(
    capsys, home, tiny_models, tiny_dataset, caplog
):
    args = ["extract", "-m", str(tiny_models["bert"]), "-d", str(tiny_dataset)]
    assert main(args) == 0
    [entry] = (home / "embeddings").iterdir()
    array = entry / "embeddings.npy"
    array.write_bytes(array.read_bytes()[:100])
    assert main(args) == 0
    assert "corrupt" in caplog.text

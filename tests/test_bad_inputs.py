"""The bad-input table: every row is one command given one bad input, which must end with a
single `error:` line naming the problem and a non-zero exit code, never a traceback. Rows
with a check also assert what must *not* have happened (a file lost, work done first).

The behaviours behind these refusals (what happens to existing files and studies, Ctrl-C,
prediction formats, …) are pinned in the test files of the modules they belong to
(test_files, test_apply, test_predict, test_storage, test_cli, …).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autolayer.cli import main
from tests.conftest import write_config, write_jsonl


def _config(tmp: Path, model: Path, **changes) -> Path:
    return write_config(tmp, model, **changes)


def _rows(tmp: Path, model: Path, dataset: Path) -> dict[str, tuple[list, str]]:
    """name -> (CLI arguments, text the error line must contain)."""
    rows: dict[str, tuple[list, str]] = {}
    (tmp / "bad.yaml").write_text("models: [unclosed\n")
    rows["malformed config yaml"] = (
        ["apply", tmp / "bad.yaml", "-d", dataset, "-o", tmp / "m"],
        "not valid YAML",
    )
    (tmp / "run").mkdir()
    (tmp / "run" / "recommendation.yaml").write_text("models: []\n")
    rows["a recommend folder given as the config"] = (
        ["apply", tmp / "run", "-d", dataset, "-o", tmp / "m"],
        f"is a folder; did you mean '{tmp / 'run' / 'recommendation.yaml'}'?",
    )
    rows["a folder without a config given as the config"] = (
        ["apply", tmp, "-d", dataset, "-o", tmp / "m"],
        "is a folder, not a config file",
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
    config = _config(tmp / "v", model, head={"kind": "mlp", "params": {"operator": "tensor"}})
    rows["unknown operator in config"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "m"],
        "operator",
    )
    (tmp / "o").mkdir()
    config = _config(tmp / "o", model, dataset={"origin": {"source": 3}})
    rows["tampered config (where its data was read)"] = (
        ["apply", config, "-o", tmp / "m"],
        "dataset.origin must map source",
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
    rows["label only in test"] = (["score", "-m", model, "-d", tmp / "only"], "'c'")
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
    rows.update(_trust_rows(tmp, model, dataset))
    return rows


def _user_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "data.csv").write_text("text,label\n")
    return folder


def _trust_rows(tmp: Path, model: Path, dataset: Path) -> dict[str, tuple[list, str]]:
    """Issue #10's rows: lost files, wrong output paths, devices and threads, model lists."""
    rows: dict[str, tuple[list, str]] = {}
    (tmp / "t").mkdir()
    config = _config(tmp / "t", model)
    rows["apply into a folder of the user's files"] = (
        ["apply", config, "-d", dataset, "-o", _user_files(tmp / "mine")],
        "did not write",
    )
    rows["apply --overwrite into a folder of the user's files"] = (
        ["apply", config, "-d", dataset, "-o", _user_files(tmp / "mine2"), "--overwrite"],
        "did not write",
    )
    (tmp / "in.txt").write_text("good film\nbad plot\n")
    rows["predict output is the input"] = (
        ["predict", tmp / "nomodel", "-i", tmp / "in.txt", "-o", tmp / "in.txt"],
        "is the input",
    )
    rows["predict output in an unknown format"] = (
        ["predict", tmp / "nomodel", "-i", tmp / "in.txt", "-o", tmp / "out.txt"],
        "cannot write predictions",
    )
    other = tmp / "other-out"
    other.mkdir()
    (other / "recommendation.yaml").write_text(
        yaml.safe_dump({"dataset": {"name": "mr", "fingerprint": "0" * 64}})
    )
    rows["recommend into a folder made for other data"] = (
        ["recommend", "-d", dataset, "--models", model, "-o", other],
        "made for other data",
    )
    foreign = tmp / "foreign-out"
    foreign.mkdir()
    (foreign / "recommendation.yaml").write_text("my own notes\n")
    rows["recommend into a folder with someone else's recommendation.yaml"] = (
        ["recommend", "-d", dataset, "--models", model, "-o", foreign, "--overwrite"],
        "not an autolayer recommendation",
    )
    rows["export from a SQLite file that does not exist"] = (
        ["export", "--storage", f"sqlite:///{tmp / 'missing.db'}", "-o", tmp / "c.yaml"],
        "does not exist",
    )
    rows["export from a folder with no study"] = (
        ["export", tmp / "t", "-o", tmp / "c.yaml"],
        "does not exist",
    )
    rows["unknown device"] = (
        ["extract", "-m", model, "-d", dataset, "--device", "bogus"],
        "device",
    )
    rows["apply with an unknown device"] = (
        ["apply", config, "-d", dataset, "-o", tmp / "m", "--device", "gpu0"],
        "device",
    )
    rows["zero threads"] = (["extract", "-m", model, "-d", dataset, "--threads", "0"], "--threads")
    rows["negative threads"] = (
        ["extract", "-m", model, "-d", dataset, "--threads", "-3"],
        "--threads",
    )
    rows["max-length below 2"] = (
        ["extract", "-m", model, "-d", dataset, "--max-length", "1"],
        "--max-length",
    )
    rows["zero trials"] = (
        ["search", "-d", dataset, "--models", model, "--n-trials", "0", "-o", tmp / "s0"],
        "--n-trials",
    )
    rows["complementarity of one model named twice"] = (
        ["complementarity", "-m", f"{model},{model}", "-d", dataset],
        "named twice",
    )
    rows["an empty model list"] = (
        ["search", "-d", dataset, "--models", ",", "-o", tmp / "s1"],
        "no model named",
    )
    (tmp / "k").mkdir()
    rows["unknown key in a config"] = (
        ["apply", _config(tmp / "k", model, colour="blue"), "-d", dataset, "-o", tmp / "m"],
        "unknown field(s) 'colour'",
    )
    (tmp / "k2").mkdir()
    bad_model = {
        "spec": str(model),
        "identity": "x",
        "layer": 1,
        "n_hidden_states": 5,
        "pooling_mode": "max",
    }
    rows["unknown key in a config's model"] = (
        ["apply", _config(tmp / "k2", model, models=[bad_model]), "-d", dataset, "-o", tmp / "m"],
        "'pooling_mode'",
    )
    (tmp / "l").mkdir()
    rows["config label absent from the data"] = (
        [
            "apply",
            _config(tmp / "l", model, label_names=["neg", "neutral", "pos"]),
            "-d",
            dataset,
            "-o",
            tmp / "m",
        ],
        "'neutral', absent from dataset",
    )
    (tmp / "afile2").write_text("x")
    rows["score --json under a file: found before extraction"] = (
        ["score", "-m", model, "-d", dataset, "--json", tmp / "afile2" / "s.json"],
        "cannot write",
    )
    rows["extract -o under a file: found before extraction"] = (
        ["extract", "-m", model, "-d", dataset, "-o", tmp / "afile2" / "x.npy"],
        "cannot write",
    )
    rows.update(_tryout_rows(tmp, model, dataset, config))
    return rows


def _tryout_rows(tmp: Path, model: Path, dataset: Path, config: Path) -> dict:
    """Found by trying the tool as a new user after the first round of fixes."""
    rows: dict[str, tuple[list, str]] = {}
    (tmp / "st").mkdir()
    (tmp / "st" / "study.db").write_bytes(b"SQLite format 3\x00 not really")
    rows["export over its own study storage"] = (
        ["export", tmp / "st", "-o", tmp / "st" / "study.db"],
        "not a config file autolayer wrote",
    )
    rows["score --json onto the input data"] = (
        ["score", "-m", model, "-d", dataset, "--json", dataset / "train.jsonl"],
        "not a scores file autolayer wrote",
    )
    rows["extract -o onto the input data"] = (
        ["extract", "-m", model, "-d", dataset / "test.jsonl", "-o", dataset / "test.jsonl"],
        "is the input data; choose another output",
    )
    own = tmp / "own"
    own.mkdir()
    (own / "config.yaml").write_text(config.read_text() + "# my precious comments\n")
    rows["apply --overwrite into a folder holding only the user's config.yaml"] = (
        ["apply", own / "config.yaml", "-d", dataset, "-o", own, "--overwrite"],
        "did not write",
    )
    pics = tmp / "pics"
    pics.mkdir()
    (pics / "layers.png").write_bytes(b"\x89PNG\r\n\x1a\n my own figure")
    rows["recommend into a folder holding the user's layers.png"] = (
        ["recommend", "-d", dataset, "--models", model, "-o", pics],
        "not a plot autolayer wrote",
    )
    (tmp / "ids.csv").write_text("label,text\nTRUTH,good film\n")
    rows["predict --id-column that collides with an output field"] = (
        ["predict", tmp / "nomodel", "-i", tmp / "ids.csv", "--id-column", "label"],
        "would overwrite the predictions' own 'label'",
    )
    (tmp / "keep.csv").write_text("my data\n")
    rows["predict -o onto the user's existing file"] = (
        ["predict", tmp / "nomodel", "-i", tmp / "ids.csv", "-o", tmp / "keep.csv"],
        "not a predictions file autolayer wrote",
    )
    rows["predict with a model folder that does not exist"] = (
        ["predict", tmp / "gone", "-i", tmp / "ids.csv"],
        "does not exist",
    )
    rows["complementarity with a missing second model: found before extraction"] = (
        ["complementarity", "-m", f"{model},{tmp / 'no-model'}", "-d", dataset],
        "does not exist",
    )
    rows["one column for both text and label"] = (
        ["score", "-m", model, "-d", dataset, "--text-column", "label"],
        "both 'label'",
    )
    rows["complementarity --layers naming a model not compared"] = (
        ["complementarity", "-m", f"{model},{model}/", "-d", dataset, "--layers", "foo:2"],
        "foo",
    )
    rows["one fold"] = (["score", "-m", model, "-d", dataset, "--folds", "1"], "--folds")
    (tmp / "afile3").write_text("x")
    rows["recommend -o onto a file"] = (
        ["recommend", "-d", dataset, "--models", model, "-o", tmp / "afile3"],
        "it is a file",
    )
    rows.update(_data_rows(tmp, model))
    return rows


def _data_rows(tmp: Path, model: Path) -> dict:
    """Data that loads but cannot serve: found before any extraction."""
    rows: dict[str, tuple[list, str]] = {}
    one = tmp / "one-class-validation"
    write_jsonl(one / "train.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(8)])
    write_jsonl(one / "validation.jsonl", [{"text": f"v {i}", "label": "a"} for i in range(3)])
    rows["a validation file of one class"] = (
        ["recommend", "-d", one, "--models", model, "-o", tmp / "r1"],
        "single class ('a': 3)",
    )
    emoji = [{"text": "😀" * (i % 3 + 1) + " !", "label": "ab"[i % 2]} for i in range(8)]
    write_jsonl(tmp / "emoji" / "train.jsonl", emoji)
    rows["texts without words with tfidf in the pool"] = (
        ["recommend", "-d", tmp / "emoji", "--models", f"{model},tfidf", "-o", tmp / "r2"],
        "leave tfidf out of --models",
    )
    rows["a mistyped dataset path"] = (
        ["recommend", "-d", tmp / "tyni", "--models", model, "-o", tmp / "r3"],
        f"no such file or folder: '{tmp / 'tyni'}'",
    )
    return rows


def _intact(folder: Path) -> None:
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "notes.txt"]


def _unchanged(path: Path, start: bytes) -> None:
    assert path.read_bytes().startswith(start), f"{path} was overwritten"


# What must not have happened, per row (tmp, home) -> None.
CHECKS = {
    "export over its own study storage": lambda tmp, home: _unchanged(
        tmp / "st" / "study.db", b"SQLite format 3"
    ),
    "score --json onto the input data": lambda tmp, home: _unchanged(
        tmp / "tiny" / "train.jsonl", b'{"text"'
    ),
    "extract -o onto the input data": lambda tmp, home: _unchanged(
        tmp / "tiny" / "test.jsonl", b'{"text"'
    ),
    "apply --overwrite into a folder holding only the user's config.yaml": lambda tmp, home: (
        "precious" in (tmp / "own" / "config.yaml").read_text() or pytest.fail("config lost")
    ),
    "recommend into a folder holding the user's layers.png": lambda tmp, home: _unchanged(
        tmp / "pics" / "layers.png", b"\x89PNG\r\n\x1a\n my own"
    ),
    "predict -o onto the user's existing file": lambda tmp, home: _unchanged(
        tmp / "keep.csv", b"my data"
    ),
    "complementarity with a missing second model: found before extraction": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "apply into a folder of the user's files": lambda tmp, home: _intact(tmp / "mine"),
    "apply --overwrite into a folder of the user's files": lambda tmp, home: _intact(tmp / "mine2"),
    "predict output is the input": lambda tmp, home: (
        (tmp / "in.txt").read_text() == "good film\nbad plot\n" or pytest.fail("input lost")
    ),
    "recommend into a folder made for other data": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "export from a SQLite file that does not exist": lambda tmp, home: (
        not (tmp / "missing.db").exists() or pytest.fail("created a storage")
    ),
    "export from a folder with no study": lambda tmp, home: (
        not (tmp / "t" / "study.db").exists() or pytest.fail("created a storage")
    ),
    "score --json under a file: found before extraction": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "extract -o under a file: found before extraction": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "output folder not writable": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "a validation file of one class": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
    "texts without words with tfidf in the pool": lambda tmp, home: (
        not (home / "embeddings").exists() or pytest.fail("extracted before refusing")
    ),
}


NAMES = [
    "malformed config yaml",
    "tampered config (not a mapping)",
    "unknown schema version",
    "unknown operator in config",
    "config names a model that is not available",
    "output folder not writable",
    "label only in test",
    "unreachable storage URL",
    "unsupported storage URL",
    "unknown study name",
    "predict with a folder that is no model",
    "fewer examples than folds",
    "complementarity of one model",
    "unknown zoo alias to install",
    "apply into a folder of the user's files",
    "apply --overwrite into a folder of the user's files",
    "predict output is the input",
    "predict output in an unknown format",
    "recommend into a folder made for other data",
    "recommend into a folder with someone else's recommendation.yaml",
    "export from a SQLite file that does not exist",
    "export from a folder with no study",
    "unknown device",
    "apply with an unknown device",
    "zero threads",
    "negative threads",
    "max-length below 2",
    "zero trials",
    "complementarity of one model named twice",
    "an empty model list",
    "unknown key in a config",
    "unknown key in a config's model",
    "config label absent from the data",
    "score --json under a file: found before extraction",
    "extract -o under a file: found before extraction",
    "export over its own study storage",
    "score --json onto the input data",
    "extract -o onto the input data",
    "apply --overwrite into a folder holding only the user's config.yaml",
    "recommend into a folder holding the user's layers.png",
    "predict --id-column that collides with an output field",
    "predict -o onto the user's existing file",
    "predict with a model folder that does not exist",
    "complementarity with a missing second model: found before extraction",
    "one column for both text and label",
    "complementarity --layers naming a model not compared",
    "one fold",
    "recommend -o onto a file",
    "a validation file of one class",
    "texts without words with tfidf in the pool",
    "a mistyped dataset path",
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
    if name in CHECKS:
        CHECKS[name](tmp_path, home)


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

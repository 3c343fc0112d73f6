"""autolayer.files: an existing file is replaced only on positive proof that autolayer wrote
it (and it is unchanged since), and a path that cannot be written is found before the work."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from autolayer.errors import ConfigError
from autolayer.files import (
    atomic_write_bytes,
    check_output,
    check_owned_folder,
    check_writable,
    is_ours,
    mark_ours,
)
from tests.conftest import one_error_line, run, write_config


def _parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"row": [0, 1], "text": ["a", "b"], "label": ["x", "y"]}), path)


# A user's own files that look like what autolayer writes (the guesses of earlier versions).
LOOKALIKES = {
    "gold.csv": ("predictions", lambda p: p.write_text("row,text,label\n0,good film,pos\n")),
    "gold.tsv": ("predictions", lambda p: p.write_text("row\ttext\tlabel\n0\tgood film\tpos\n")),
    "log.jsonl": ("predictions", lambda p: p.write_text('{"row": 17, "event": "start"}\n')),
    "mine.parquet": ("predictions", _parquet),
    "mine.npy": ("array", lambda p: np.save(p, np.ones((2, 3, 4), dtype=np.float32))),
    "scores.json": ("scores", lambda p: p.write_text('[{"model": "m", "layers": [1]}]')),
    "cka.json": ("complementarity", lambda p: p.write_text('{"models": [], "matrix": []}')),
    "config.yaml": ("config", lambda p: p.write_text("schema_version: 1\nmodels: []\n")),
}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_a_users_file_that_looks_like_ours_is_refused_and_kept(tmp_path, name):
    kind, write = LOOKALIKES[name]
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=f"is not an? {kind} file autolayer wrote"):
        check_output(path, kind)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_overwrite_lets_a_users_file_be_replaced(tmp_path, name):
    kind, write = LOOKALIKES[name]
    write(tmp_path / name)
    assert check_output(tmp_path / name, kind, overwrite=True) == tmp_path / name


def test_a_file_autolayer_wrote_is_ours_until_it_is_changed(tmp_path):
    path = tmp_path / "p.csv"
    atomic_write_bytes(path, b"row,text,label\n0,good film,pos\n")
    mark_ours(path, "predictions")
    assert check_output(path, "predictions") == path  # a re-run may replace it
    assert not is_ours(path, "array")  # proof of one kind is not proof of another
    path.write_bytes(b"row,text,label\n0,good film,neg\n")  # the user corrects a label
    with pytest.raises(ConfigError, match="changed since"):
        check_output(path, "predictions")


def test_a_file_of_another_kind_autolayer_wrote_is_named_as_such(tmp_path):
    path = tmp_path / "recommendation.yaml"
    path.write_text("schema_version: 1\nmodels: []\n")
    mark_ours(path, "recommendation")
    for overwrite in (None, False):
        with pytest.raises(ConfigError) as refused:
            check_output(path, "config", overwrite=overwrite)
        message = str(refused.value)
        assert f"{str(path)!r} is autolayer's recommendation file, not a config file" in message
        assert "changed since" not in message and "did not write" not in message
    assert check_output(path, "config", overwrite=True) == path  # --overwrite is the user's word


def test_a_folder_of_outputs_is_refused_naming_the_outputs_not_their_proofs(tmp_path):
    for name, kind in (("c.yaml", "config"), ("emb.npy", "array")):
        (tmp_path / name).write_bytes(b"x")
        mark_ours(tmp_path / name, kind)
    with pytest.raises(ConfigError, match=r"did not write \(c\.yaml, emb\.npy\);") as refused:
        check_owned_folder(tmp_path, ("m",), ("m",), overwrite=True, what="model folder")
    assert ".autolayer.json" not in str(refused.value)
    (tmp_path / "notes.txt").write_text("mine")  # the user's own file is named first
    with pytest.raises(ConfigError, match=r"did not write \(notes\.txt, c\.yaml, emb\.npy\);"):
        check_owned_folder(tmp_path, ("m",), ("m",), overwrite=True, what="model folder")


def test_the_proof_is_a_hidden_file_beside_the_output(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"row": 0}\n')
    mark_ours(path, "predictions")
    (proof,) = [p for p in tmp_path.iterdir() if p != path]
    assert proof.name.startswith(".p.jsonl")
    assert json.loads(proof.read_text())["kind"] == "predictions"


def test_a_png_is_ours_only_with_autolayers_software_chunk(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    fig.savefig(tmp_path / "ours.png", metadata={"Software": "autolayer"})
    fig.savefig(tmp_path / "theirs.png", metadata={"Title": "autolayer results"})
    plt.close(fig)
    assert is_ours(tmp_path / "ours.png", "plot")
    assert not is_ours(tmp_path / "theirs.png", "plot")  # the word alone is no mark


def test_a_folder_nobody_may_write_is_refused_even_when_os_access_says_yes(monkeypatch):
    """As root, ``os.access`` passes every path; writing is tested by creating a file."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, a folder where no one may create files")
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: True)  # what root is told
    with pytest.raises(ConfigError, match="cannot write array '/proc/x.npy'"):
        check_writable("/proc/x.npy", "array")


def test_checking_a_folder_leaves_nothing_in_it(tmp_path):
    check_writable(tmp_path / "new" / "x.npy", "array")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_file_is_refused_even_as_root(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("row,text,label\n")
    mark_ours(path, "predictions")
    path.chmod(0o444)  # the user protected it: ours or not, --overwrite or not
    with pytest.raises(ConfigError, match="the file is read-only"):
        check_output(path, "predictions", overwrite=True)


def test_a_file_os_access_says_we_may_not_write_is_refused(tmp_path, monkeypatch):
    """Another user's 0644 file has a write bit, but not for us, and a rename in a folder we
    may write would replace it all the same: ``os.access`` is asked besides the mode."""
    path = tmp_path / "p.csv"
    path.write_text("row,text,label\n")
    mark_ours(path, "predictions")
    real_access = os.access

    def access(where, mode, **kwargs) -> bool:  # what a non-root user is told of it
        return Path(where) != path and real_access(where, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ConfigError, match="you may not write it"):
        check_output(path, "predictions", overwrite=True)
    assert path.read_text() == "row,text,label\n"


def test_files_and_folders_follow_the_umask(capsys, tmp_path, home, config, tiny_dataset):
    previous = os.umask(0o022)
    try:
        code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "m")
        assert code == 0, err
        (tmp_path / "in.txt").write_text("good film\n")
        out = tmp_path / "p.jsonl"
        assert run(capsys, "predict", tmp_path / "m", "-i", tmp_path / "in.txt", "-o", out)[0] == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    for path in [*(tmp_path / "m").iterdir(), out]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---------------------------------------------------------------------------------------------
# Output files: replaced only when autolayer wrote them, or with --overwrite


def _users_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"row": [3], "text": ["fine"], "label": ["pos"]}), path)


USERS_PREDICTION_LOOKALIKES = {
    "gold.csv": lambda p: p.write_text("row,text,label\n0,good film,pos\n1,bad plot,neg\n"),
    "log.jsonl": lambda p: p.write_text('{"row": 17, "event": "started"}\n'),
    "mine.parquet": _users_parquet,
}


@pytest.mark.parametrize("name", sorted(USERS_PREDICTION_LOOKALIKES))
def test_predict_never_replaces_a_users_file_that_looks_like_predictions(
    capsys, tmp_path, home, name
):
    target = tmp_path / name
    USERS_PREDICTION_LOOKALIKES[name](target)
    before = target.read_bytes()
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", tmp_path, "-i", tmp_path / "in.txt", "-o", target)
    assert code != 0 and "not a predictions file autolayer wrote" in one_error_line(err)
    assert "--overwrite" in err
    assert target.read_bytes() == before


def test_extract_never_replaces_a_users_array(capsys, tmp_path, home, tiny_models, tiny_dataset):
    target = tmp_path / "mine.npy"
    np.save(target, np.ones((40, 5, 32), dtype=np.float32))
    before = target.read_bytes()
    args = ["extract", "-m", tiny_models["bert"], "-d", tiny_dataset, "-o", target]
    code, _, err = run(capsys, *args)
    assert code != 0 and "not an array file autolayer wrote" in one_error_line(err)
    assert target.read_bytes() == before and not (home / "embeddings").exists()
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert np.load(target).shape == (40, 5, 32) and target.read_bytes() != before
    code, _, err = run(capsys, *args)  # now autolayer's: a re-run replaces it
    assert code == 0, err
    data = tiny_dataset / "test.jsonl"
    before = data.read_bytes()
    args = ["extract", "-m", tiny_models["bert"], "-d", data, "-o", data]
    for extra in ([], ["--overwrite"]):  # said at once, not "pass --overwrite" first
        code, _, err = run(capsys, *args, *extra)
        line = one_error_line(err)
        assert code != 0 and "is the input data" in line and "--overwrite" not in line
    assert data.read_bytes() == before


def test_predict_replaces_its_own_output_and_a_users_file_only_with_overwrite(
    capsys, tmp_path, saved_model
):
    (tmp_path / "in.txt").write_text("good film\nbad plot\n")
    out = tmp_path / "gold.csv"
    args = ["predict", saved_model, "-i", tmp_path / "in.txt", "-o", out]
    for _ in range(2):  # the second run replaces what the first wrote
        code, _, err = run(capsys, *args)
        assert code == 0, err
    out.write_text("row,text,label\n0,good film,pos\n")  # the user's labels, by hand
    code, _, err = run(capsys, *args)
    assert code != 0 and "changed since" in one_error_line(err)
    assert out.read_text() == "row,text,label\n0,good film,pos\n"
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert out.read_text().startswith("row,text,label,p_neg,p_pos\n")


def test_predict_says_a_folder_given_as_input_is_a_folder(capsys, tmp_path, saved_model):
    (tmp_path / "texts").mkdir()
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "texts")
    assert code != 0
    assert f"input '{tmp_path / 'texts'}' is a folder, not a file of texts" in one_error_line(err)


@pytest.mark.parametrize("output", [".", "out", "out.csv"])
def test_predict_says_a_folder_given_as_output_is_a_folder(
    capsys, tmp_path, monkeypatch, home, output
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / output).mkdir(exist_ok=True)
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", tmp_path / "model", "-i", "in.txt", "-o", output)
    suggestion = str(Path(output) / "predictions.jsonl")
    assert code != 0
    assert f"output '{output}' is a folder; name a file in it, such as '{suggestion}'" in (
        one_error_line(err)
    )


def test_predict_to_a_name_without_extension_says_so(capsys, tmp_path, home):
    (tmp_path / "in.txt").write_text("good film\n")
    out = tmp_path / "preds"
    code, _, err = run(capsys, "predict", tmp_path, "-i", tmp_path / "in.txt", "-o", out)
    assert code != 0
    assert "cannot write predictions to 'preds' (no extension)" in one_error_line(err)


def test_apply_into_a_recommend_folder_says_it_is_one(capsys, tmp_path, home, tiny_models):

    run_dir = tmp_path / "autolayer-out"
    config = write_config(run_dir, tiny_models["bert"]).rename(run_dir / "recommendation.yaml")
    (run_dir / "study.db").write_bytes(b"SQLite format 3\x00")
    (run_dir / "layers.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "apply", config, "-o", run_dir, *extra)
        line = one_error_line(err)
        assert code != 0 and "did not write" not in line
        assert f"'{run_dir}' is recommend's output folder" in line and "not a model" in line
        assert f"such as '{run_dir / 'model'}'" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "layers.png",
        "recommendation.yaml",
        "study.db",
    ]

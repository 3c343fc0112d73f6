"""The whole flow on tiny random models: recommend → export → apply → predict, via the CLI,
and the output folder a recommend holds while it runs. Budgets and resumption are in
test_search.py, the estimator in test_classifier.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from autolayer.config import load_config
from autolayer.errors import ConfigError
from tests.conftest import one_error_line, run


def test_cli_flow_recommend_export_apply_predict(capsys, tmp_path, home, tiny_dataset, models):
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys,
        "recommend",
        "-d",
        tiny_dataset,
        "--models",
        models,
        "--n-trials",
        4,
        "--max-length",
        12,
        "-o",
        out_dir,
    )
    assert code == 0, err
    words = " ".join(out.split())  # a table title wraps at the console width (tmp path length)
    assert "recommended:" in out and "linear-probe accuracy per layer" in words
    assert (out_dir / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "cka.png").exists()
    config = load_config(out_dir / "recommendation.yaml")
    assert config.dataset["fingerprint"] and config.versions["torch"]
    assert config.dataset["validation"]["split"] == "carved"
    assert config.dataset["validation"]["size"] == 0.2
    assert {m.max_length for m in config.models} == {12}
    storage = f"sqlite:///{out_dir / 'study.db'}"
    study_name = config.validation["study"]
    code, said, err = run(
        capsys,
        "export",
        "--storage",
        storage,
        "--study-name",
        study_name,
        "--trial",
        0,
        "-o",
        tmp_path / "trial0.yaml",
    )
    assert code == 0, err
    trial0 = load_config(tmp_path / "trial0.yaml")
    assert trial0.validation["trial"] == 0
    score = f"{100 * trial0.validation['accuracy']:.1f}%"
    assert f"trial0.yaml: trial #0, validation accuracy {score}" in " ".join(said.split())

    code, out, err = run(
        capsys,
        "apply",
        out_dir / "recommendation.yaml",
        "-d",
        tiny_dataset,
        "-o",
        tmp_path / "model",
    )
    assert code == 0, err
    assert "test accuracy" in out
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["n_test"] == 20 and 0 <= metrics["accuracy"] <= 1

    (tmp_path / "new.txt").write_text("the movie was good\nawful plot\n\n")
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "model",
        "-i",
        tmp_path / "new.txt",
        "-o",
        tmp_path / "pred.csv",
    )
    assert code == 0, err
    lines = (tmp_path / "pred.csv").read_text().strip().splitlines()
    assert lines[0].startswith("row,text,label,p_neg,p_pos") and len(lines) == 3


def test_a_model_path_holding_the_models_separator_works_end_to_end(
    capsys, tmp_path, home, tiny_dataset, tiny_models
):
    """A model folder named ``a + b`` is one model through recommend, apply and predict,
    although the search joins model names with " + " into its choices."""
    import shutil

    folder = tmp_path / "a + b" / "model"
    shutil.copytree(tiny_models["bert"], folder)
    out_dir = tmp_path / "out"
    pool = f"{folder},tfidf"  # fused, the choice is "…/a + b/model + tfidf"
    args = ["-d", tiny_dataset, "--models", pool, "--max-length", 12, "--n-trials", 4]
    code, _, err = run(capsys, "recommend", *args, "--exhaustive", "-o", out_dir)
    assert code == 0, err
    config = load_config(out_dir / "recommendation.yaml")
    assert {m.spec for m in config.models} <= {str(folder), "tfidf"}
    model = tmp_path / "model"
    code, _, err = run(capsys, "apply", out_dir / "recommendation.yaml", "-o", model)
    assert code == 0, err
    texts, predicted = tmp_path / "new.txt", tmp_path / "predicted.csv"
    texts.write_text("the movie was good\nawful plot\n")
    code, _, err = run(capsys, "predict", model, "-i", texts, "-o", predicted)
    assert code == 0, err
    assert len(predicted.read_text().strip().splitlines()) == 3


def test_a_pool_where_a_model_path_is_a_join_of_two_others_is_refused(
    capsys, tmp_path, home, tiny_dataset, tiny_models
):
    """With ``m``, ``tfidf`` and ``m + tfidf`` in the pool, the pair (m, tfidf) and the model
    ``m + tfidf`` would be one choice: the pool is refused in one line."""
    import shutil

    alone, joined = tmp_path / "m", tmp_path / "m + tfidf"
    for folder in (alone, joined):
        shutil.copytree(tiny_models["bert"], folder)
    pool = f"{alone},tfidf,{joined}"
    code, _, err = run(
        capsys, "recommend", "-d", tiny_dataset, "--models", pool, "-o", tmp_path / "o"
    )
    assert code == ConfigError.exit_code
    assert f"model '{joined}' is also '{alone}' and 'tfidf' joined with" in one_error_line(err)
    assert not (home / "embeddings").exists() and not (tmp_path / "o").exists()


def test_a_dense_source_that_learns_from_texts_works_end_to_end(
    capsys, tmp_path, home, tiny_dataset, word_counts
):
    """A source is fitted on the training rows because it ``learns``, whether or not its
    features are sparse: a dense one is searched (as its one state), applied and saved."""
    out_dir, model = tmp_path / "out", tmp_path / "model"
    args = ["-d", tiny_dataset, "--models", "counts", "--n-trials", 2, "--exhaustive"]
    code, _, err = run(capsys, "recommend", *args, "-o", out_dir)
    assert code == 0, err
    assert [m.spec for m in load_config(out_dir / "recommendation.yaml").models] == ["counts"]
    code, _, err = run(capsys, "apply", out_dir / "recommendation.yaml", "-o", model)
    assert code == 0, err
    assert (model / "counts.json").is_file()
    (tmp_path / "new.txt").write_text("good fun\nawful plot\n")
    code, out, err = run(capsys, "predict", model, "-i", tmp_path / "new.txt")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2


def test_a_recommend_on_other_data_into_a_folder_a_running_one_holds_is_refused(
    home, tmp_path, tiny_dataset
):
    from autolayer import claims, pipeline
    from autolayer.budgets import Budget

    out_dir, refused = tmp_path / "out", []
    run_one = {"models": ["tfidf"], "output_dir": out_dir}

    def second_run(study, trial) -> None:  # while the first run searches: deterministic
        if refused:
            return
        try:
            budget = Budget(n_trials=1)
            pipeline.recommend(str(tiny_dataset), max_train_samples=10, budget=budget, **run_one)
        except ConfigError as exc:
            refused.append(str(exc))
        else:
            refused.append("")

    rec = pipeline.recommend(
        str(tiny_dataset), budget=Budget(n_trials=1), callbacks=[second_run], **run_one
    )
    assert refused[0].startswith(f"{out_dir} is in use by a recommend on other data (pid ")
    assert "wait for it to end, or choose another output folder" in refused[0]
    assert load_config(out_dir / "recommendation.yaml").dataset == rec.config.dataset
    assert claims.CLAIM not in {p.name for p in out_dir.iterdir()}  # released when done


def test_a_claim_on_the_output_folder_is_shared_by_runs_on_the_same_data(tmp_path):
    from autolayer import claims

    with claims.claim_output_dir(tmp_path, "a" * 64):
        with claims.claim_output_dir(tmp_path, "a" * 64):  # a worker of the same study
            pass
        assert [p.name for p in tmp_path.iterdir()] == [claims.CLAIM]  # still held
    assert not list(tmp_path.iterdir())


def test_claiming_the_output_folder_locks_no_folder(tmp_path, monkeypatch):
    """On NFS, ``flock`` is emulated with POSIX locks, which a folder cannot take, nor a file
    opened read-only an exclusive one (EBADF): only regular files opened O_RDWR are locked."""
    import errno
    import fcntl
    import stat

    from autolayer import claims

    real_flock = fcntl.flock

    def nfs_flock(fd, operation):
        fd = fd if isinstance(fd, int) else fd.fileno()
        read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        if stat.S_ISDIR(os.fstat(fd).st_mode) or (operation & fcntl.LOCK_EX and read_only):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    with claims.claim_output_dir(tmp_path, "a" * 64):
        assert [p.name for p in tmp_path.iterdir()] == [claims.CLAIM]
    assert not list(tmp_path.iterdir())


def test_a_run_that_waited_for_the_folder_lock_takes_the_new_lock_file(tmp_path, monkeypatch):
    """The lock's holder removes its file when done: a run that opened that file and waited
    then holds a removed file, which locks nothing, so it takes a new one."""
    import fcntl
    import threading

    from autolayer import claims

    real_flock, waiting, order = fcntl.flock, threading.Event(), []

    def flock(fd, operation):
        if threading.current_thread().name == "second":
            waiting.set()  # its file is open: the first run's
        return real_flock(fd, operation)

    def second() -> None:
        with claims._folder_locked(tmp_path):
            order.append(("second", (tmp_path / claims.CLAIM_LOCK).exists()))

    monkeypatch.setattr(fcntl, "flock", flock)
    thread = threading.Thread(target=second, name="second")
    with claims._folder_locked(tmp_path):
        thread.start()
        assert waiting.wait(10)
        order.append(("first", True))
    thread.join(10)
    assert order == [("first", True), ("second", True)]
    assert not list(tmp_path.iterdir())


CLAIM_HOLDER = """
import sys, time
from pathlib import Path
from autolayer import claims
with claims.claim_output_dir(Path(sys.argv[1]), "b" * 64):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_claim_left_by_a_killed_run_blocks_nothing(tmp_path):
    """A run on other data is refused while another process holds the folder, and not once
    that process is killed (SIGKILL: no clean-up), though its claim file is left behind."""
    import subprocess
    import sys

    from autolayer import claims

    holder = [sys.executable, "-c", CLAIM_HOLDER, str(tmp_path)]
    child = subprocess.Popen(holder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        refused = f"in use by a recommend on other data \\(pid {child.pid} "
        with (
            pytest.raises(ConfigError, match=refused),
            claims.claim_output_dir(tmp_path, "a" * 64),
        ):
            pass
    finally:
        child.kill()
        child.communicate()
    assert '"b' in (tmp_path / claims.CLAIM).read_text()  # what the killed run left
    with claims.claim_output_dir(tmp_path, "a" * 64):
        assert '"a' in (tmp_path / claims.CLAIM).read_text()
    assert not list(tmp_path.iterdir())


def test_a_recommend_that_fails_before_writing_leaves_no_output_folder(home, tmp_path):
    from autolayer import claims

    out_dir = tmp_path / "out"
    with pytest.raises(ConfigError), claims.claim_output_dir(out_dir, "a" * 64):
        raise ConfigError("a bad input found after the claim")
    assert not out_dir.exists()


def test_recommend_refuses_a_folder_made_for_other_data_unless_overwrite(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "out"
    out.mkdir()
    earlier = yaml.safe_dump({"dataset": {"name": "mr", "fingerprint": "0" * 64}})
    (out / "recommendation.yaml").write_text(earlier)
    args = ["recommend", "-d", tiny_dataset, "--models", tiny_models["bert"], "-o", out]
    code, _, err = run(capsys, *args, "--n-trials", "2")
    assert code != 0 and "other data" in one_error_line(err)
    assert (out / "recommendation.yaml").read_text() == earlier

    from autolayer.report import plot_cka_matrix

    plot_cka_matrix(["a", "b"], np.eye(2), out / "cka.png")  # the earlier run's, two models
    assert (out / "cka.png").is_file()
    code, _, err = run(capsys, *args, "--n-trials", "2", "--overwrite")
    assert code == 0, err
    assert load_config(out / "recommendation.yaml").dataset["name"] == "tiny"
    assert not (out / "cka.png").exists()  # one model now: no stale plot beside the result


def test_recommend_replaces_only_a_recommendation_it_wrote_unless_overwrite(
    capsys, tmp_path, home, tiny_dataset
):
    """Ownership of ``recommendation.yaml`` is proved by its hashed sidecar, not guessed from
    its content: a re-run on the same data replaces its own file, but not one edited by
    hand or written before the proof, unless --overwrite."""
    from autolayer.files import is_ours, proof_path

    out = tmp_path / "out"
    args = ["recommend", "-d", tiny_dataset, "--models", "tfidf", "-o", out, "--n-trials", "1"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    path = out / "recommendation.yaml"
    assert is_ours(path, "recommendation")
    assert run(capsys, *args)[0] == 0  # its own, unchanged: replaced without a word

    edited = path.read_text() + "# my note\n"
    path.write_text(edited)
    code, _, err = run(capsys, *args)
    line = one_error_line(err)
    assert code != 0 and f"{path} was changed since autolayer wrote it" in line
    assert "pass --overwrite to replace it" in line and path.read_text() == edited

    path.write_text(edited.replace("# my note\n", ""))
    proof_path(path).unlink()  # as an autolayer from before the proof left it
    code, _, err = run(capsys, *args)
    assert code != 0 and "pass --overwrite to replace it" in one_error_line(err)

    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert is_ours(path, "recommendation")


def test_recommend_never_replaces_a_read_only_recommendation(tmp_path, tiny_dataset):
    from autolayer import claims
    from autolayer.data import load_dataset
    from autolayer.files import mark_ours

    data = load_dataset(tiny_dataset)
    path = tmp_path / "recommendation.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"name": "tiny", "fingerprint": data.fingerprint}}))
    mark_ours(path, "recommendation")
    path.chmod(0o444)  # the user protected it: ours or not, --overwrite or not
    with pytest.raises(ConfigError, match="the file is read-only"):
        claims.check_output_dir(tmp_path, data, overwrite=True)


def test_the_library_says_each_warning_once_per_call(tmp_path, home, tiny_models, recwarn):
    """The same warning comes from several stages (screen, pairs, search), each a call site
    of its own: from Python, as on the command line, it is said once."""
    import autolayer
    from tests.conftest import WORDS, write_jsonl

    rows = [{"text": f"text {WORDS[i % 7]} {i % 5}", "label": "ab"[i % 2]} for i in range(40)]
    path = write_jsonl(tmp_path / "rare.jsonl", [*rows, {"text": "lonely", "label": "rare"}])
    models = [str(tiny_models["bert"]), "tfidf"]
    budget = autolayer.Budget(n_trials=2)
    autolayer.recommend(path, models, budget=budget, max_length=12, output_dir=tmp_path / "o")
    said = [str(w.message) for w in recwarn if "single example" in str(w.message)]
    assert said == ["1 class(es) with a single example among the rows probed, left out: 'rare'"]

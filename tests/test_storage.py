"""Shared study storage: workers racing to create it, and retries of a dead worker's trial."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autolayer import search
from autolayer.errors import ConfigError
from autolayer.selection import INFEASIBLE, REPEAT, RUNGS, SURPLUS, trained_count
from autolayer.storage import WORKER, make_storage, this_worker
from tests.conftest import one_error_line, run, write_jsonl


@pytest.mark.parametrize("mark", [SURPLUS, REPEAT, INFEASIBLE])
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell, as a worker's trial
def test_a_dead_workers_trial_is_retried_without_what_it_had_decided(tmp_path, mark):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_categorical("models", ["m"])
    trial.set_user_attr(mark, True)  # then the worker was killed while it waited
    trial.set_user_attr("latency_ms", 5.0)
    [stale] = study.get_trials()
    storage.get_heartbeat_stale_trial_callback()(study, stale)
    [retry] = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert mark not in retry.user_attrs and retry.user_attrs["latency_ms"] == 5.0
    assert retry.params == {"models": "m"}
    again = study.ask()  # another worker trains the retry: it counts against the budget
    assert again.number == retry.number
    study.tell(again, 0.9)
    assert trained_count(study) == (1, 1)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_retried_trial_climbs_its_rungs_afresh(tmp_path):
    """A dead worker's trial had climbed a rung: its retry keeps neither the record nor the
    successive-halving pruner's mark, or the rung would be counted twice and skipped."""
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=2)
    study = optuna.create_study(storage=storage, direction="maximize", pruner=pruner)
    trial = study.ask()
    trial.suggest_categorical("models", ["m"])
    trial.set_user_attr(RUNGS, [[10, 0.7, 1.0]])
    trial.report(0.7, 10)
    assert not trial.should_prune()  # the pruner recorded the rung: completed_rung_0
    [stale] = study.get_trials()
    assert any(k.startswith("completed_rung_") for k in stale.system_attrs)
    storage.get_heartbeat_stale_trial_callback()(study, stale)
    [retry] = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert RUNGS not in retry.user_attrs
    assert not any(k.startswith("completed_rung_") for k in retry.system_attrs)


def test_workers_creating_one_sqlite_storage_together_retry(tmp_path, monkeypatch):
    from autolayer import storage

    real, calls = storage._WorkerStorage, []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # what SQLite says when another worker created the tables first
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version")
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "_WorkerStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    assert make_storage(f"sqlite:///{tmp_path / 'study.db'}") is not None
    assert len(calls) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_retry_still_waiting_holds_its_slot_against_a_later_trial(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    study.tell(study.ask(), 0.5)  # trial 0: trained
    study.ask()  # trial 1: its worker dies; the next worker to start fails it, queues a retry
    [stale] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    storage.get_heartbeat_stale_trial_callback()(study, stale)
    [retry] = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    later = storage.create_new_trial(study._study_id)  # a third worker's, before it is taken
    number = storage.get_trial(later).number
    assert number > retry.number
    # With one slot left, the trial created later is the surplus one; the retry trains.
    assert search.slots_taken(study, number) == 2
    assert search.slots_taken(study, retry.number) == 1


@pytest.mark.parametrize("records_after", [True, False])
def test_a_trial_failed_under_a_live_worker_does_not_end_its_run(tmp_path, caplog, records_after):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, direction="maximize")
    failed = optuna.trial.TrialState.FAIL

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:  # meanwhile another worker took this worker for dead
            storage.set_trial_state_values(trial._trial_id, failed)
        if records_after:  # as the search does after training: refused for a failed trial
            trial.set_user_attr("epochs_run", 3)
        return x

    def stop_at_three(study: optuna.Study, _trial) -> None:
        if len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 3:
            study.stop()

    search._optimize(study, objective, None, [stop_at_three])
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, failed] + 2 * [states[0]]
    assert "trial 1 was failed by another worker" in caplog.text


def test_an_error_of_the_objective_still_ends_the_run(tmp_path):
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}"))

    def broken(trial: optuna.Trial) -> float:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        search._optimize(study, broken, None, [])


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_storage_is_refused(url):
    with pytest.raises(ConfigError, match=r"^storage .* names no database file: .* lost"):
        make_storage(url)


@pytest.mark.parametrize("url", ["redis://localhost", "sqlite:///"])
def test_a_refused_storage_is_named_as_the_python_argument(url):
    # the library speaks Python; the CLI shows the argument as its option (--storage)
    with pytest.raises(ConfigError) as refused:
        make_storage(url)
    assert str(refused.value).startswith("storage ") and "--" not in str(refused.value)
    assert refused.value.params == ("storage",)


def test_a_study_of_other_settings_is_refused_in_python_terms(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.set_user_attr("signature", {"metric": "accuracy"})
    with pytest.raises(ConfigError, match="differs in its metric") as refused:
        search.check_same_study(storage, "url", "s", {"metric": "macro_f1"})
    assert "pass another study_name" in str(refused.value) and "--" not in str(refused.value)
    assert refused.value.params == ("study_name",)


def test_an_empty_sqlite_path_is_refused_before_any_work(capsys, home, tmp_path, tiny_dataset):
    code, _, err = run(
        capsys, "search", "-d", tiny_dataset, "--models", "tfidf", "--storage", "sqlite:///",
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == ConfigError.exit_code and "Traceback" not in err
    assert err.count("error:") == 1 and "sqlite:///study.db" in err
    assert "error: --storage 'sqlite:///' names no database file" in err
    assert not home.exists()  # refused before any features were computed


@pytest.mark.parametrize("command", ["search", "recommend"])
def test_an_empty_storage_is_refused_not_taken_for_the_default(
    capsys, home, tmp_path, tiny_dataset, command
):
    # --storage "$URL" with URL unset: not the output folder's study.db, which would give
    # each of several workers its own local study without a word
    out = tmp_path / "out"
    code, _, err = run(
        capsys, command, "-d", tiny_dataset, "--models", "tfidf", "--storage", "", "-o", out
    )
    assert code == ConfigError.exit_code
    assert one_error_line(err) == "error: --storage '' is empty: is a variable in it unset?"
    assert not home.exists() and not (out / "study.db").exists()  # nothing computed


def test_export_from_an_empty_storage_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "export", "--storage", "", "-o", tmp_path / "c.yaml")
    assert code == ConfigError.exit_code
    assert one_error_line(err) == "error: --storage '' is empty: is a variable in it unset?"


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped: no such process now)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_whose_worker_on_this_host_is_gone_is_retried_at_once(tmp_path):
    import socket

    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=30)  # grace: 90 s
    study = optuna.create_study(storage=storage, direction="maximize")
    host = socket.gethostname()
    workers = [
        {**this_worker(), "pid": _dead_pid()},
        f"{host}:{_dead_pid()}",  # as an earlier version recorded it
        {**this_worker(), "pid": 1},
        f"{host}:1",
        f"elsewhere:{_dead_pid()}",
    ]
    trials = [study.ask() for _ in workers]  # each recorded as this process's at first
    assert all(t.system_attrs[WORKER] == this_worker() for t in study.get_trials())
    for trial, worker in zip(trials, workers, strict=True):
        storage.set_trial_system_attr(trial._trial_id, WORKER, worker)
    optuna.storages.fail_stale_trials(study)  # as a resumed run does before its first trial
    states = [t.state.name for t in study.get_trials()]
    # the dead pids' trials failed and queued again; a live pid, another host: heartbeats
    assert states == ["FAIL", "FAIL"] + 3 * ["RUNNING"] + 2 * ["WAITING"]
    retries = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert not [t for t in retries if WORKER in t.system_attrs]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("other", ["pid_ns", "boot_id"])
def test_a_worker_in_another_pid_namespace_or_boot_is_never_taken_for_gone(tmp_path, other):
    # Two containers may share a hostname: a pid of the other's namespace (or of an earlier
    # boot) says nothing about a process here.
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=30)  # grace: 90 s
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    worker = {**this_worker(), "pid": _dead_pid(), other: "another"}
    storage.set_trial_system_attr(trial._trial_id, WORKER, worker)
    optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("worker", [None, "elsewhere:1", "this host, alive"])
def test_a_running_trial_without_a_heartbeat_is_stale_after_the_grace_period(tmp_path, worker):
    from datetime import datetime, timedelta

    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=30)  # grace: 90 s
    study = optuna.create_study(storage=storage, direction="maximize")
    record = this_worker() if worker == "this host, alive" else worker
    for age, beats in ((100, False), (10, False), (100, True)):
        # its worker was stopped (or killed on another host) before its first beat
        template = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING)
        template.state = optuna.trial.TrialState.RUNNING
        template.datetime_start = datetime.now() - timedelta(seconds=age)
        template.system_attrs = {WORKER: record} if record else {}
        trial_id = storage.create_new_trial(study._study_id, template)
        if beats:  # a live worker beating: Optuna's own rule (beats missed) decides
            storage.record_heartbeat(trial_id)
    optuna.storages.fail_stale_trials(study)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "RUNNING", "RUNNING", "WAITING"]


def test_each_trial_records_its_worker_once(tmp_path):
    import os

    import numpy as np

    from autolayer.budgets import Budget
    from autolayer.search import run_search
    from autolayer.space import Candidate, LayerCost, Space
    from autolayer.task import make_task

    features = np.random.default_rng(0).normal(size=(30, 2, 8)).astype("float32")
    model = Candidate("a", (1,), 3, features[:20], features[20:], 1.0, {1: LayerCost(0.5, 1.0)})
    url = f"sqlite:///{tmp_path / 's.db'}"
    run_search(
        [model], np.arange(20) % 2, np.arange(10) % 2, task=make_task(), storage=url,
        study_name="s",
        budget=Budget(n_trials=1), space=Space(heads=("linear",)), prune=False,
    )  # fmt: skip
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trials and all(t.system_attrs[WORKER]["pid"] == os.getpid() for t in trials)
    assert not [t for t in trials if "worker" in t.user_attrs]


def test_an_interruption_fails_the_trial_this_worker_just_started(tmp_path, monkeypatch):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")

    def interrupted(study, trial) -> None:  # Ctrl-C after the trial exists, before its beat
        raise KeyboardInterrupt

    monkeypatch.setattr(study.sampler, "before_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search._optimize(study, lambda trial: 1.0, None, [])
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]


def _search(capsys, tiny_dataset, models, out, *extra):
    return run(capsys, "search", "-d", tiny_dataset, "--models", models, "-o", out, *extra)


def _n_trials(out: Path) -> int:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    return sum(len(storage.get_all_trials(s._study_id)) for s in storage.get_all_studies())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--multi-objective"], "objectives"),
        (["--metric", "macro_f1"], "metric"),
        (["--top-k", "1"], "search space"),
        (["--max-models", "1"], "search space"),
        (["--pooling", "last"], "pooling"),
        (["--seed", "1"], "validation split"),
    ],
)
def test_a_study_of_other_settings_is_refused_before_any_training(
    capsys, tmp_path, home, tiny_models, tiny_dataset, change, named
):
    models = f"{tiny_models['bert']},{tiny_models['llama']}"
    out = tmp_path / "s"
    code, _, err = _search(capsys, tiny_dataset, models, out, "--n-trials", "3")
    assert code == 0, err
    before = _n_trials(out)
    code, _, err = _search(capsys, tiny_dataset, models, out, "--n-trials", "5", *change)
    line = one_error_line(err)
    assert code != 0 and named in line and "--study-name" in line
    assert _n_trials(out) == before


def test_a_study_name_reused_with_other_data_is_refused(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "s"
    model = str(tiny_models["bert"])
    code, _, err = _search(capsys, tiny_dataset, model, out, "--n-trials", "2", "--study-name", "x")
    assert code == 0, err
    other = tmp_path / "other"
    rows = [json.loads(line) for line in (tiny_dataset / "train.jsonl").read_text().splitlines()]
    write_jsonl(other / "train.jsonl", rows[:-2])
    code, _, err = _search(capsys, other, model, out, "--n-trials", "2", "--study-name", "x")
    assert code != 0 and "dataset fingerprint" in one_error_line(err)
    study = optuna.load_study(study_name="x", storage=f"sqlite:///{out / 'study.db'}")
    assert all(t.state.name != "FAIL" for t in study.trials)


def test_a_users_own_sqlite_file_named_study_db_is_never_written_into(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    import sqlite3
    from contextlib import closing

    out = tmp_path / "mine"
    out.mkdir()
    with closing(sqlite3.connect(out / "study.db")) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
        db.commit()
    before = (out / "study.db").read_bytes()
    code, _, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, "--n-trials", "2")
    assert code != 0 and "not a study database" in one_error_line(err)
    assert (out / "study.db").read_bytes() == before

"""Shared study storage: workers racing to create it, and retries of a dead worker's trial."""

from __future__ import annotations

import optuna
import pytest

from autolayer import search
from autolayer.search import INFEASIBLE, REPEAT, SURPLUS, make_storage, trained_count


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


def test_workers_creating_one_sqlite_storage_together_retry(tmp_path, monkeypatch):
    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # what SQLite says when another worker created the tables first
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version")
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(search.time, "sleep", lambda seconds: None)
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

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

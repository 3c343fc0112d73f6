"""Where studies live: an Optuna storage opened from a URL, and the coordination of the
workers that share one (each running trial records its worker; a dead worker's trial is
failed and retried once, never left running)."""

from __future__ import annotations

import copy
import os
import socket
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import optuna

from autolayer.errors import ConfigError
from autolayer.selection import INFEASIBLE, REPEAT, RUNGS, SURPLUS


def make_storage(url: str, heartbeat: float = 30.0) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a killed worker's trial is marked failed and retried
    once, never left RUNNING forever.

    A running trial's worker beats every ``heartbeat`` seconds; after three missed beats
    the next worker to start a trial fails it and queues its retry.
    """
    check_storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _rdb_storage(url, heartbeat)
        except ImportError:  # Optuna re-raises a missing driver as a bare ImportError
            raise ConfigError(
                f"cannot open storage {url!r}: its database driver is not installed "
                "(PostgreSQL: pip install 'autolayer[postgres]')"
            ) from None
        except Exception as exc:  # noqa: BLE001 - drivers raise many types; report one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"cannot open storage {url!r}: {reason}") from None


def check_storage_url(url: str) -> None:
    """Refuse, before any work, a URL no study can live in: another scheme, or an SQLite
    URL without a file (``sqlite:///``, what ``sqlite:///$UNSET`` expands to), which
    SQLAlchemy opens as an in-memory database: the study would end with the run, and the
    export command the report prints could not find it. An empty URL is what
    ``--storage "$URL"`` gives with URL unset: said so, not taken for the default."""
    if not url.strip():
        raise ConfigError(
            f"storage {url!r} is empty: is a variable in it unset?", params=("storage",)
        )
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        raise ConfigError(
            f"storage must be an sqlite://, postgresql:// or mysql:// URL; got {url!r}",
            params=("storage",),
        )
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: opening it says why in one line
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            f"storage {url!r} names no database file: the study would be kept in memory "
            "and lost when the run ends; give a file, such as sqlite:///study.db (is a "
            "variable in it unset?)",
            params=("storage",),
        )


def open_existing_storage(url: str, study_name: str | None = None) -> optuna.storages.BaseStorage:
    """A storage to read from: a SQLite file that does not exist is an error, not a new
    empty database left behind by a mistyped path."""
    missing = missing_sqlite_file(url)
    if missing:
        named = f"no study named {study_name!r}: " if study_name else ""
        raise ConfigError(f"{named}storage file {missing!r} does not exist")
    return make_storage(url)


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite storage whose file does not exist (opening it would create it),
    else None; read with SQLAlchemy's own parser (``sqlite+pysqlite:///x.db?timeout=60``)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: make_storage says so in one line
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.is_file() else str(path)


class _RetryUndecided(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead worker's trial, without the marks of what that attempt
    decided (surplus, repeat, infeasible, the rungs it climbed and the successive-halving
    pruner's record of them) or of who ran it. Optuna copies the attributes into the retry;
    a copied surplus mark would leave the retry's trained head uncounted, and the study
    would train one more than its budget; copied rungs would be climbed twice in its record
    and skipped by the pruner, which reads a rung it holds as passed."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        decided = (SURPLUS, REPEAT, INFEASIBLE, RUNGS, "worker")
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in decided}
        trial.system_attrs = {
            k: v
            for k, v in trial.system_attrs.items()
            if k != WORKER and not k.startswith(PRUNER_RUNG)
        }
        super().__call__(study, trial)


PRUNER_RUNG = "completed_rung_"  # Optuna's successive halving: a rung's value, by its index


# System attribute of a running trial: its worker, as :func:`this_worker` describes it
# (earlier versions recorded "host:pid", still read).
WORKER = "autolayer:worker"


def this_worker() -> dict:
    """This process, as :data:`WORKER` records it: its host and pid, and what makes the pid
    meaningful — the PID namespace (containers sharing a hostname each have their own) and
    the boot (pids restart at each one); ``None`` where the system does not say."""
    return {"host": socket.gethostname(), "pid": os.getpid(), **_pid_space()}


def _pid_space() -> dict:
    """The PID namespace's inode and the boot id of this process (Linux), else ``None``."""
    try:
        namespace: int | None = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    try:
        boot: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    return {"pid_ns": namespace, "boot_id": boot}


class _WorkerStorage(optuna.storages.RDBStorage):
    """An RDB storage whose running trials record their worker, and whose stale trials
    include two kinds that Optuna's heartbeat alone never finds, or finds late:

    - a trial whose worker ran in this process's PID space (same host, PID namespace and
      boot) and no longer exists (killed): stale at once, not after three missed beats (a
      resumed run would otherwise wait them out, adding a surplus trial each time);
    - a trial with no heartbeat at all (its worker was stopped or killed between creating
      it and its first beat), past the grace period, whoever its worker was: Optuna never
      calls a trial without a heartbeat stale, and every later run would wait on it forever.

    Optuna reads these through its storage's private methods (``_create_new_trial``,
    ``_get_stale_trial_ids``), which are overridden here.
    """

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        if template_trial is None:  # a new running trial: its worker stored with it
            template_trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, system_attrs={WORKER: this_worker()}
            )
            template_trial.state = optuna.trial.TrialState.RUNNING
            template_trial.datetime_start = datetime.now()
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(
        self,
        trial_id: int,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None = None,
    ) -> bool:
        taken = super().set_trial_state_values(trial_id, state=state, values=values)
        if taken and state == optuna.trial.TrialState.RUNNING:  # a queued trial, taken
            self.set_trial_system_attr(trial_id, WORKER, this_worker())
        return taken

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        stale += [i for i in self._never_beaten(study_id) if i not in stale]
        running = self.get_all_trials(
            study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        stale += [t._trial_id for t in running if t._trial_id not in stale and _gone_worker(t)]
        return stale

    def _never_beaten(self, study_id: int) -> list[int]:
        """Running trials with no heartbeat row, started longer ago than the grace period,
        whoever their worker: read as Optuna's own ``_get_stale_trial_ids`` reads heartbeats
        (the trial's rows of ``trial_heartbeats``); the start, stored in UTC, is compared with
        this host's clock."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        grace = self.grace_period or 2 * self.heartbeat_interval
        started_before = datetime.now() - timedelta(seconds=grace)
        trial = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            silent = (
                session.query(trial)
                .filter(trial.study_id == study_id)
                .filter(trial.state == optuna.trial.TrialState.RUNNING)
                .filter(~trial.heartbeats.any())
                .order_by(trial.trial_id)
                .all()
            )
            return [
                t.trial_id
                for t in silent
                if t.datetime_start is not None and t.datetime_start < started_before
            ]


def _gone_worker(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the worker that ran ``trial`` is known to be gone (see :func:`_gone`)."""
    # (the user attribute: a trial stored by an earlier version, before its system one)
    worker = trial.system_attrs.get(WORKER) or trial.user_attrs.get("worker")
    return _gone(worker) if worker else False


def _gone(worker: dict | str) -> bool:
    """Whether a worker ran in this process's PID space and its process no longer exists.
    A pid from anywhere else says nothing about a process here (two containers may share a
    hostname): such a worker is left to its heartbeat."""
    record = _worker_record(worker)
    pid = record.get("pid")
    if not _in_this_pid_space(record) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def _worker_record(worker: dict | str) -> dict:
    """A :data:`WORKER` record as a dict; an earlier version's "host:pid" gives host and pid."""
    if isinstance(worker, dict):
        return worker
    host, _, pid = str(worker).rpartition(":")
    return {"host": host, "pid": int(pid) if pid.isdigit() else None}


def _in_this_pid_space(record: dict) -> bool:
    """Whether the record's pid would name a process here: same host, PID namespace and boot
    (a "host:pid" record of an earlier version says only its host, compared alone)."""
    mine = this_worker()
    known = [key for key in ("host", "pid_ns", "boot_id") if key in record]
    return "host" in known and all(record[key] == mine[key] for key in known)


# Workers that open a new storage together race to create its tables; each database says
# so in its own words (PostgreSQL: the first two; SQLite: the third).
_CREATION_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed")


def _rdb_storage(url: str, heartbeat: float, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open the storage; retry when workers starting together race to create its tables."""

    def open_storage() -> optuna.storages.RDBStorage:
        return _WorkerStorage(
            url,
            heartbeat_interval=max(1, round(heartbeat)),
            grace_period=max(2, round(3 * heartbeat)),
            heartbeat_stale_trial_callback=_RetryUndecided(max_retry=1),
        )

    for attempt in range(attempts - 1):
        try:
            return open_storage()
        except Exception as exc:
            if not any(words in str(exc) for words in _CREATION_RACE):
                raise
            time.sleep(0.5 * (attempt + 1))
    return open_storage()

"""An Optuna RDB storage that rides out a database outage (connection lost or refused, server
restarting) for a bounded time, then stops the worker in a way the next run resumes.

Every storage call that hits a transient database error is retried with exponential backoff
(0.5 s, doubling, at most 10 s between tries) until the outage has lasted `retry_seconds`; the
bound is per outage, shared by all threads, so a call made late in an outage gets only what is
left of it. One line goes to stderr when an outage starts and one when the storage answers again.
After the bound, the call raises `StorageLost`. Real errors (IntegrityError, a finished trial,
KeyError, ValueError, bad data) are never retried.

StorageLost is a KeyboardInterrupt, so `study.optimize(catch=(Exception,))` does not record it as
an ordinary failed trial: Optuna re-raises it and the session stops. On its way out Optuna reads the
cut trial and tells it FAIL through this (unreachable) storage; a storage that has raised
StorageLost is therefore *lost for good*: it serves that read from the last copy it read, skips the
FAIL (the trial stays RUNNING in the database, so the next run on this host retries it from its
checkpoint at once, as it does for a worker that died, and other hosts do after the heartbeat's
grace period), skips heartbeats, and answers everything else with StorageLost at once, without
waiting out another bound. A worker that means to go on opens a new storage.

Heartbeats (Optuna's thread) are tried once per beat and never raise a transient error: a missed
beat is made up by the next, and a heartbeat thread stuck in backoff would hold up the end of the
trial.

Writes that must not happen twice: an error raised after the COMMIT was sent leaves it unknown
whether the write was stored.
- `set_trial_state_values`: the next try first reads the trial; when it is already in the state
  asked for (with the values asked for), the write went through and is not repeated.
- `create_new_trial` (a new trial, or a retry queued as WAITING): not retried, neither by this
  class nor by Optuna's own retry loop; it raises StorageLost, since a second try could create a
  duplicate trial.

Known gaps: after such an unknown `create_new_trial` the trial may exist, left RUNNING with no
heartbeat and no owner (Optuna never counts it stale; `hpsearch status` shows it), or, for a queued
retry, not exist (the failed trial it replaces is then not retried). A `set_trial_state_values`
that moves a WAITING trial to RUNNING and finds it RUNNING after an unknown commit takes it as its
own, although another worker could have claimed it in that instant. A server that stops answering
on an open connection (no reset, no refusal) is noticed only by the operating system's TCP timeouts.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import sys
import threading
import time
from typing import Any, Callable

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from hpsearch.tracking.urls import mask

FIRST_WAIT_S = 0.5
LONGEST_WAIT_S = 10.0


class StorageLost(KeyboardInterrupt):
    """The Optuna storage stayed unreachable past `recovery.storage_retry_seconds`. A KeyboardInterrupt,
    like hpsearch.study.interrupt.Interrupted, so that Optuna stops the session instead of recording
    an ordinary failed trial and starting the next one. Its message is one line, password masked."""


class _MaybeStored(Exception):
    """A new trial's COMMIT was sent and failed: it may exist. Not a StorageInternalError, so that
    Optuna's own retry loop in `_create_new_trial` lets it through instead of creating it again."""


def transient_cause(err: BaseException) -> BaseException | None:
    """The database error behind `err` when it is one that goes away by itself (a lost or refused
    connection, a server restarting); None for a real error."""
    if isinstance(err, StorageInternalError):  # Optuna wraps SQLAlchemy's errors raised in a session
        err = err.__cause__
    if isinstance(err, (OperationalError, InterfaceError)) or (isinstance(err, DBAPIError) and err.connection_invalidated):
        # SQLite: a lock held past the 60 s timeout is contention, not a lost connection.
        return None if "database is locked" in str(err.orig) else err
    return None


def describe(err: BaseException, url: str) -> str:
    """`OperationalError: <first line of the driver's message>`, password masked."""
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return f"{type(err).__name__}: {(text[0] if text else '')[:300]}".replace(url, mask(url))


class _Outage:
    """The storage's current outage, shared by every thread that calls it."""

    def __init__(self, label: str, bound: float):
        self.label, self.bound = label, bound
        self.lock = threading.Lock()
        self.started: float | None = None  # time.monotonic() of the first failed call
        self.reason = ""
        self.lost = False
        self.message = ""  # StorageLost's, once lost
        self.gone = threading.Event()  # set when lost: wakes the threads waiting out a backoff

    def failed(self, reason: str) -> float:
        """A call failed; returns the seconds left of the bound (<= 0: give up)."""
        with self.lock:
            now = time.monotonic()
            if self.started is None:
                self.started = now
                if self.bound > 0:
                    _say(f"optuna storage {self.label}: connection lost ({reason}); "
                         f"retrying for up to {self.bound:g} s")
            self.reason = reason
            return self.started + self.bound - now

    def answered(self) -> None:
        with self.lock:
            if self.started is not None:
                _say(f"optuna storage {self.label}: reachable again after {time.monotonic() - self.started:.1f} s")
                self.started = None

    def lose(self, why: str | None = None) -> StorageLost:
        """Give up for good (see the module docstring); the StorageLost to raise."""
        with self.lock:
            if not self.lost:
                lasted = 0.0 if self.started is None else time.monotonic() - self.started
                why = why or f"unreachable for {lasted:.0f} s ({self.reason})"
                self.message = (f"optuna storage {self.label}: {why}; stopped: the running trial is checkpointed "
                                "and continues when the same command is run again")
                self.lost = True
                self.gone.set()
        _quiet_optuna_about_the_cut_trial()
        return StorageLost(self.message)

    def stopped(self) -> StorageLost:
        """For a call after the loss: the same one line (a `finally` on the way out may replace the
        first StorageLost by this one)."""
        return StorageLost(self.message)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ResilientRDBStorage(RDBStorage):
    """`optuna.storages.RDBStorage` whose calls survive an outage of up to `retry_seconds` (see the
    module docstring). A subclass, so that Optuna still wraps it in its cache and runs heartbeats."""

    def __init__(self, url: str, *, retry_seconds: float, **kwargs: Any):
        self.retry_seconds = retry_seconds
        super().__init__(url, **kwargs)
        self._start_watching()

    def _start_watching(self) -> None:
        self._outage = _Outage(mask(self.url), self.retry_seconds)
        self._local = threading.local()  # per thread: nesting depth, whether a COMMIT was sent
        self._last_read: dict[int, FrozenTrial] = {}  # unfinished trials as last read (for when lost)
        event.listen(self.engine, "commit", self._commit_sent)

    def _commit_sent(self, connection) -> None:
        self._local.commit_sent = True

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for unpicklable in ("_outage", "_local", "_last_read"):
            state.pop(unpicklable, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._start_watching()

    @property
    def lost(self) -> bool:
        return self._outage.lost

    def _retried(self, method: Callable, args: tuple, kwargs: dict, *, once: bool = False,
                 reconcile: Callable[[], Any] | None = None, never_twice: bool = False) -> Any:
        """Call `method` until it returns, a real error, or the outage's bound (see the module docstring)."""
        local = self._local
        if getattr(local, "depth", 0):  # a storage method calling another: the outer call retries
            return method(self, *args, **kwargs)
        wait = FIRST_WAIT_S
        unknown = False  # an earlier try failed after sending its COMMIT
        while True:
            local.depth, local.commit_sent = 1, False
            try:
                if unknown and reconcile is not None and (done := reconcile()) is not None:
                    result = done
                else:
                    result = method(self, *args, **kwargs)
            except _MaybeStored:
                raise self._outage.lose("connection lost while a new trial was being stored; not tried again, "
                                        "as that could create it twice") from None
            except BaseException as err:
                cause = transient_cause(err)
                if cause is None:
                    raise
                reason = describe(cause, self.url)
                if never_twice and local.commit_sent:
                    raise self._outage.lose(f"connection lost while a new trial was being stored ({reason}); "
                                            "not tried again, as that could create it twice") from None
                unknown = unknown or local.commit_sent
                left = self._outage.failed(reason)
                if once:
                    raise
                if left <= 0 or self._outage.lost:
                    raise self._outage.lose() from None
                self._outage.gone.wait(min(wait, left))
                wait = min(2 * wait, LONGEST_WAIT_S)
                continue
            finally:
                local.depth = 0
            self._outage.answered()
            return result

    def _get_prepared_new_trial(self, study_id, template_trial, session):
        # Optuna retries a failed new-trial transaction itself; after a sent COMMIT, the first one
        # may be stored: stop that loop rather than create the trial twice.
        if getattr(self._local, "commit_sent", False):
            raise _MaybeStored()
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    # The calls Optuna makes during a trial that need more than a plain retry:

    def record_heartbeat(self, trial_id: int) -> None:
        if self.lost:
            return
        try:
            self._retried(RDBStorage.record_heartbeat, (trial_id,), {}, once=True)
        except BaseException as err:  # once=True: only real errors and transient ones come here
            if transient_cause(err) is None:
                raise

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if self.lost:  # Optuna reads the cut trial to tell it FAIL: the last copy read will do
            if trial_id in self._last_read:
                return copy.deepcopy(self._last_read[trial_id])
            raise self._outage.stopped()
        trial = self._retried(RDBStorage.get_trial, (trial_id,), {})
        if trial.state.is_finished():
            self._last_read.pop(trial_id, None)
        else:
            self._last_read[trial_id] = trial
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if self.lost:
            if state == TrialState.FAIL:  # the cut trial: left RUNNING, for the retry rules (see above)
                return True
            raise self._outage.stopped()

        def already_done() -> bool | None:
            stored = RDBStorage.get_trial(self, trial_id)
            same = stored.state == state and (values is None or stored.values == [float(v) for v in values])
            return True if same else None

        done = self._retried(RDBStorage.set_trial_state_values, (trial_id, state, values), {}, reconcile=already_done)
        if state.is_finished():
            self._last_read.pop(trial_id, None)
        return done


def _plain(name: str) -> Callable:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args, **kwargs):
        if self.lost:
            raise self._outage.stopped()
        return self._retried(method, args, kwargs, never_twice=name in NEVER_TWICE)
    return call


# Reads, and writes that may be repeated (upserts; a duplicate param or study is an IntegrityError
# that Optuna ignores or turns into "exists"). The private ones are what Optuna's cache calls.
RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
           "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
           "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
           "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_intermediate_value",
           "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
           "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids",
           "create_new_trial", "_create_new_trial")
NEVER_TWICE = ("create_new_trial", "_create_new_trial")
for _name in RETRIED:
    setattr(ResilientRDBStorage, _name, _plain(_name))


_CUT = re.compile(r"Trial (\d+) failed")


class _CutTrialFilter(logging.Filter):
    """Optuna logs the trial that StorageLost stopped as failed, with a traceback, then its value:
    it did not fail (it continues on the next run) and hpsearch says so in one line; drop both."""

    def __init__(self):
        super().__init__()
        self.cut: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        found = _CUT.match(record.getMessage())
        if record.exc_info and isinstance(record.exc_info[1], StorageLost):
            if found:
                self.cut.add(found.group(1))
            return False
        return not (found and found.group(1) in self.cut and "failed with value" in record.getMessage())


_FILTER = _CutTrialFilter()


def _quiet_optuna_about_the_cut_trial() -> None:
    logger = logging.getLogger("optuna")
    for target in (logger, *logger.handlers):  # a logger's filters do not see its children's records
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)

"""Riding out an MLflow backend that is away for a while (a tracking server restarted, a network
blip, a locked SQLite file): each call is retried with backoff for at most `retry_seconds` per
outage, saying once when the outage starts and once when it ends; after that, TrackingUnavailable.

Only transient failures are retried: a refused or reset connection, a timeout, HTTP 5xx and 429,
a database that is locked or gone. A 4xx (a bad param, a deleted run) is raised at once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Callable, TypeVar

from hpsearch.tracking.urls import mask

T = TypeVar("T")

FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between attempts: doubling, capped
# MLflow's error codes for a backend that is busy or away (a SQL store's OperationalError is
# TEMPORARILY_UNAVAILABLE; a server's 503 and 429 map to these too).
TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
# MLflow's HTTP client retries on its own, 7 times with a backoff reaching 2 min (~4 min per call),
# and waits 120 s for an answer: one attempt here would outlast `retry_seconds`. Attempts are
# counted here instead; the user's own settings of these variables win.
# (And MLflow prints "View run ... at: URL" on stdout for each run ended on a server, in the middle
# of the console's trial table.)
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingUnavailable(KeyboardInterrupt):
    """The MLflow backend stayed away longer than `tracking.retry_seconds`. A KeyboardInterrupt, as
    hpsearch's Interrupted is: it stops the study (Optuna re-raises it) instead of failing trial
    after trial; the trial keeps its checkpoint and continues when the study is run again."""


def is_transient(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) says the backend is away or busy, not that the call is wrong."""
    return _transient_cause(err) is not None


def _transient_cause(err: BaseException) -> BaseException | None:
    import requests
    import sqlalchemy.exc

    for link in _chain(err):
        if isinstance(link, requests.exceptions.SSLError):
            return None  # a TLS misconfiguration does not heal by waiting
        if isinstance(link, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError,  # 5xx / 429 once MLflow's own retries are spent
                             requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError,
                             sqlalchemy.exc.OperationalError)):
            return link
        if getattr(link, "error_code", None) in TRANSIENT_CODES:
            return link
    return None


def _chain(err: BaseException):
    """`err` and what it was raised from or during (MLflow wraps requests' errors without `from`),
    up to an earlier TrackingUnavailable (a call made while one propagates)."""
    seen = set()
    while err is not None and id(err) not in seen and not (seen and isinstance(err, KeyboardInterrupt)):
        seen.add(id(err))
        yield err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def describe(err: BaseException) -> str:
    """One short line: the transient error's type and the innermost message ("ConnectionError:
    [Errno 111] Connection refused"), not urllib3's paragraph."""
    found = _transient_cause(err) or err
    innermost = list(_chain(err))[-1]
    detail = str(innermost).splitlines()[0] if str(innermost) else type(innermost).__name__
    return f"{type(found).__name__}: {detail[:160]}"


def use_http_client_defaults() -> None:
    for name, value in HTTP_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


class Outage:
    """The state of one tracking backend, shared by every thread that calls it (the trial's and its
    metric writer's), so that an outage is announced once and bounded once."""

    def __init__(self, tracking_uri: str, retry_seconds: float, say: Callable[[str], None] | None = None):
        self.where = mask(tracking_uri)
        self.retry_seconds = retry_seconds
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage started (monotonic)
        self._given_up = False  # retry_seconds ran out: from then on each call gets one attempt

    def call(self, action: Callable[[], T]) -> T:
        """`action()`, retried while the backend is away; TrackingUnavailable after `retry_seconds`."""
        delay = FIRST_DELAY
        while True:
            try:
                result = action()
            except Exception as err:
                if not is_transient(err):
                    raise
                wait = self._failed(err)
                time.sleep(min(delay, wait))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self._succeeded()
            return result

    def _failed(self, err: Exception) -> float:
        """Record a transient failure; how long the caller may still wait, or TrackingUnavailable."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                self._say(f"MLflow {self.where} unreachable ({describe(err)}); training goes on, metrics are "
                          f"queued; retrying for up to {self.retry_seconds:g} s")
            left = self.retry_seconds - (now - self._since)
            if self._given_up or left <= 0:
                self._given_up = True
                _quiet_optuna_about_the_stopped_trial()
                raise TrackingUnavailable(
                    f"MLflow {self.where} unreachable for over {self.retry_seconds:g} s (tracking.retry_seconds): "
                    f"{describe(err)}") from err
        return left

    def _succeeded(self) -> None:
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._since is not None:
                self._say(f"MLflow {self.where} is back after {time.monotonic() - self._since:.0f} s")
                self._since, self._given_up = None, False


class _StoppedTrialFilter(logging.Filter):
    """Optuna logs the trial that TrackingUnavailable stopped as failed, with a traceback, then its
    value: it continues on the next run, and the command says so in one line; both are dropped."""

    NUMBER = re.compile(r"Trial (\d+) failed")

    def __init__(self):
        super().__init__()
        self.stopped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.NUMBER.match(record.getMessage())
        if record.exc_info and isinstance(record.exc_info[1], TrackingUnavailable):
            self.stopped.update(found.groups() if found else ())
            return False
        return not (found and found.group(1) in self.stopped)


_FILTER = _StoppedTrialFilter()


def _quiet_optuna_about_the_stopped_trial() -> None:
    logger = logging.getLogger("optuna")  # by name: this layer needs no Optuna
    for target in (logger, *logger.handlers):  # a logger's filters do not see its children's records
        if _FILTER not in target.filters:
            # First: a filter before it that drops the traceback record would hide the trial's number.
            target.filters.insert(0, _FILTER)

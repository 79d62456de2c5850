"""Graceful interrupt: the first SIGINT/SIGTERM lets the running trial finish its step and save a
checkpoint; a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
    """Raised at a step boundary after a stop was requested. A KeyboardInterrupt, so Optuna records
    the trial as failed and re-raises instead of starting the next trial."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Installs SIGINT/SIGTERM handlers for its `with` block (main thread only; elsewhere it is inert)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Call at a step boundary: raises Interrupted if a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: the user does not want to wait
            print(f"\n{signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint "
              "(again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

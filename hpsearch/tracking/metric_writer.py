"""Writing a run's metrics from a background thread, so training never waits for MLflow.

A locked SQLite backend makes each MLflow call wait up to 20 s, and an unreachable server
fails outright: either way the epoch's metrics stay queued (bounded), in order, and are retried
with backoff until the backend answers again.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from typing import Callable

MAX_PENDING = 100_000  # metric batches (one per evaluated epoch); beyond it the oldest are dropped


class MetricWriter:
    def __init__(self, write: Callable[[dict[str, float], int, int], None]):
        """`write(metrics, step, timestamp_ms)` performs one batched MLflow call."""
        self._write = write
        self._pending: deque[tuple[dict[str, float], int, int]] = deque(maxlen=MAX_PENDING)
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-writer", daemon=True)
        self._thread.start()

    def put(self, metrics: dict[str, float], step: int) -> None:
        with self._changed:
            self._pending.append((metrics, step, int(time.time() * 1000)))
            self._changed.notify()

    def close(self, timeout: float) -> int:
        """Wait up to `timeout` s for the queue to drain; returns how many batches are still unwritten."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)
        return len(self._pending)

    def _run(self) -> None:
        delay, failing = 0.5, False
        while True:
            with self._changed:
                while not self._pending and not self._closing:
                    self._changed.wait()
                if not self._pending:
                    return
                metrics, step, stamp = self._pending[0]
            try:
                self._write(metrics, step, stamp)
            except Exception as err:  # MLflow raises many types for a locked or unreachable backend
                if not failing:
                    warnings.warn(f"MLflow unavailable ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                                  "training goes on, metrics are kept until it is back")
                    failing = True
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
                continue
            with self._changed:
                self._pending.popleft()
            if failing:
                warnings.warn("MLflow is back; buffered metrics written")
                failing, delay = False, 0.5

"""Writing a run's metrics from a background thread, so training never waits for MLflow.

A locked SQLite backend makes each MLflow call wait up to 20 s, and a tracking server being
restarted refuses connections: either way the epoch's metrics stay queued (bounded), in order,
and the writer retries them through the backend's Outage, for at most `tracking.retry_seconds`.
Past that the writer stops with TrackingUnavailable, which the trial's next call receives: the
batches still queued are in the trial's checkpoint, and recorded when it continues.

A batch is sent again with its first timestamp: MLflow stores a metric identical in key, value,
step and timestamp once, so a batch whose answer was lost is not recorded twice.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from typing import Callable

from hpsearch.tracking.outage import Outage, TrackingUnavailable

MAX_PENDING = 100_000  # metric batches (one per evaluated epoch); beyond it the oldest are dropped


class MetricWriter:
    def __init__(self, write: Callable[[dict[str, float], int, int], None], outage: Outage):
        """`write(metrics, step, timestamp_ms)` performs one batched MLflow call."""
        self._write, self._outage = write, outage
        self._pending: deque[tuple[dict[str, float], int, int]] = deque(maxlen=MAX_PENDING)
        self._changed = threading.Condition()
        self._closing = False
        self.gave_up: TrackingUnavailable | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-writer", daemon=True)
        self._thread.start()

    def put(self, metrics: dict[str, float], step: int) -> None:
        """Queue one batch; TrackingUnavailable once the writer has given up on the backend."""
        self.raise_if_gave_up()
        with self._changed:
            self._pending.append((metrics, step, int(time.time() * 1000)))
            self._changed.notify()

    def close(self) -> None:
        """Wait for the queue to drain, or for the writer to give up (so at most one outage of
        `retry_seconds`)."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()

    def raise_if_gave_up(self) -> None:
        if self.gave_up is not None:
            raise TrackingUnavailable(*self.gave_up.args)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closing:
                    self._changed.wait()
                if not self._pending:
                    return
                metrics, step, stamp = self._pending[0]
            try:
                self._outage.call(lambda: self._write(metrics, step, stamp))
            except TrackingUnavailable as err:
                self.gave_up = err  # what is still queued is in the trial's checkpoint
                return
            except Exception as err:  # refused by MLflow (a bad value, a deleted run): retrying cannot help
                warnings.warn(f"MLflow refused the metrics of step {step} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); they are not logged")
            with self._changed:
                self._pending.popleft()

"""What replaying an epoch costs: one unit (`--cost epochs`), or the seconds it took when the table
was recorded (`--cost seconds`: a BYOL or DINO epoch costs more than a SimCLR one, so a pruner that
keeps the cheap methods running is credited for it).

Tables keep each trial's wall clock (`Recording.seconds`, start to end: its epochs, proxies and
final metric), not one figure per epoch, so a trial's seconds are spread evenly over its epochs.
"""

from __future__ import annotations

import numpy as np

from hpsearch.replay import COSTS
from hpsearch.replay.table import Table, TableError


def cumulative_costs(table: Table, unit: str = "epochs") -> list[np.ndarray]:
    """Per recording, the cost of its first e epochs at index e (index 0 is 0)."""
    if unit not in COSTS:
        raise ValueError(f"unknown cost {unit!r}; expected one of: {', '.join(COSTS)}")
    if unit == "seconds":
        untimed = [r.number for r in table.trials if r.seconds is None or not r.seconds > 0]
        if untimed:
            raise TableError(f"--cost seconds: study {table.study!r} keeps no timings for {len(untimed)} of its "
                             f"{len(table.trials)} trials (e.g. trial {untimed[0]}); replay it with --cost epochs")
    per_epoch = [r.seconds / r.epochs if unit == "seconds" else 1.0 for r in table.trials]
    return [np.arange(r.epochs + 1) * cost for r, cost in zip(table.trials, per_epoch)]


def budget(costs: list[np.ndarray]) -> float:
    """The cost of training every configuration to its end: exhaustive search."""
    return float(sum(c[-1] for c in costs))

"""Thaw policies: when a worker is free, continue a paused trial or sample a new configuration.

`RungThaw` is ASHA's promotion made explicit: a paused trial is continued once it is among the top
1/eta of every trial that has reached its rung (the quota grows as trials arrive, so a trial paused
by the first wave, judged against two others, is promoted when the rung fills up). The deepest
rung goes first: finishing a trial is what the study is waiting for.

`CalibratedThaw` adds the calibration as it stands now (`CalibratedPruner.estimate`: P(final >=
the top-k bar - margin) from the proxy that ranks the finished trials best at the paused epoch,
within the trial's method when enough of it finished). A paused trial whose probability reaches
`p_thaw` is thawed even outside the quota: a slow starter (BYOL, SimSiam), or a trial paused during
the cold start or on a proxy that has since lost its trust, is re-judged. A promotion the
calibration finds hopeless (probability below `p_skip`) is not made: the rung quota alone spends
epochs on configurations the finished trials already rule out. Until `min_trials` have finished,
or where no proxy is trusted at the paused epoch, it is `RungThaw`.

When the study has no new configuration left, both continue the most promising paused trial
(rather than leave the worker idle): deepest rung, then rank there, then probability.

References: ASHA's promotions (Li et al. 2020); freeze-thaw Bayesian optimisation (Swersky et al.
2014) and ifBO (Rakotoarison et al. 2024) for continuing paused curves on a model's forecast.
"""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import FrozenTrial

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.pruning.rungs import RungPruner, paused_trials, sign_of

# The thaw policy's defaults, chosen on benchmarks/tables/cifar10_record.json.gz (the first
# recording) and reported on cifar10_record2 (benchmarks/replay_pruners.py).
THAW_DEFAULTS = {"reduction_factor": 5, "p_thaw": 0.5, "p_skip": 0.0}


class RungThaw:
    """ASHA's promotions of paused trials."""

    def __init__(self, pruner: RungPruner):
        self.pruner = pruner
        self.reasons: dict[int, str] = {}  # paused trial number -> why it was thawed

    def choose(self, study: optuna.Study, *, exhausted: bool = False, unavailable: frozenset[int] = frozenset()) -> FrozenTrial | None:
        """The paused trial to continue now, or None: sample a new configuration. `unavailable`:
        paused trials that cannot be continued (their checkpoint was evicted)."""
        trials = study.get_trials(deepcopy=False)
        paused = [t for t in paused_trials(trials) if t.number not in unavailable]
        if not paused:
            return None
        standings = self.pruner.standings(trials, paused, sign_of(study))
        picks = []
        for trial, (rung, better, quota) in zip(paused, standings):
            reason = self._reason(study, trial, rung, better, quota)
            # Deepest rung first, then the better rank there; with nothing new to run, anyone.
            key = (reason is not None, rung, -better / max(quota * self.pruner.eta, 1), -trial.number)
            if reason is not None or exhausted:
                picks.append((key, trial, reason or "no new configuration left: the most promising paused trial"))
        if not picks:
            return None
        _, trial, reason = max(picks, key=lambda pick: pick[0])
        self.reasons[trial.number] = reason
        return trial

    def _reason(self, study, trial: FrozenTrial, rung: int, better: int, quota: int) -> str | None:
        if better < quota:
            return f"promoted at rung {rung}: now in the top {quota} of the trials that reached it"
        return None


class CalibratedThaw(RungThaw):
    """ASHA's promotions, vetoed or extended by the calibrated pruner's estimate."""

    def __init__(self, pruner: RungPruner, calibrated: CalibratedPruner, *, p_thaw: float = 0.5, p_skip: float = 0.0):
        if not 0 <= p_skip <= p_thaw <= 1:
            raise ValueError(f"expected 0 <= p_skip <= p_thaw <= 1, got p_skip {p_skip}, p_thaw {p_thaw}")
        super().__init__(pruner)
        self.calibrated, self.p_thaw, self.p_skip = calibrated, p_thaw, p_skip
        self._estimates: dict[tuple[int, int], float | None] = {}  # (trial, finished trials) -> estimate
        self._finished_now = 0

    def choose(self, study: optuna.Study, *, exhausted: bool = False, unavailable: frozenset[int] = frozenset()) -> FrozenTrial | None:
        self._finished_now = self.calibrated.finished_count(study)
        return super().choose(study, exhausted=exhausted, unavailable=unavailable)

    def _reason(self, study, trial: FrozenTrial, rung: int, better: int, quota: int) -> str | None:
        p = self._estimate(study, trial)
        if p is not None and p >= self.p_thaw:
            return f"thawed: P(final >= top-{self.calibrated.top_k} bar) = {p:.2f} as calibrated now (paused at {rung})"
        if better < quota and (p is None or p >= self.p_skip):
            return super()._reason(study, trial, rung, better, quota)
        return None

    def _estimate(self, study, trial: FrozenTrial) -> float | None:
        # An estimate moves only when the finished trials do: cached on their number.
        key = (trial.number, self._finished_now)
        if key not in self._estimates:
            self._estimates[key] = self.calibrated.estimate(study, trial)
        return self._estimates[key]


def pausing_calibrated(args: dict, build: Callable[[type, dict], CalibratedPruner]) -> RungPruner:
    """The `calibrated` pruner of a real study: ASHA rungs that pause (reduction_factor,
    min_resource), a calibrated thaw policy (p_thaw, p_skip) on `thaw`, the calibration's own
    arguments (min_trials, top_k, ...) for the rest; `build` constructs the calibration, checking them."""
    args = dict(args)
    rungs = RungPruner(reduction_factor=args.pop("reduction_factor", THAW_DEFAULTS["reduction_factor"]),
                       min_resource=args.pop("min_resource", 1))
    p_thaw, p_skip = args.pop("p_thaw", THAW_DEFAULTS["p_thaw"]), args.pop("p_skip", THAW_DEFAULTS["p_skip"])
    rungs.thaw = CalibratedThaw(rungs, build(CalibratedPruner, args), p_thaw=p_thaw, p_skip=p_skip)
    return rungs

"""Which recorded configuration a simulated study's next trial replays, and the Optuna trial that
replays it.

Random sampling draws the table's configurations in a seeded order without replacement. TPE
proposes, and the proposal is mapped to the nearest configuration not yet run (floats compared on
their [0, 1] position in the searched range, log where searched on log, categoricals equal or not;
parameters a configuration lacks, such as another method's, ignored). The replaying trial then
carries the *replayed configuration's* parameters, not TPE's proposal: TPE must learn from what was
run, or its model drifts away from the curves it is shown (62% of trials mismatched before).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, json_to_distribution
from optuna.trial import TrialState

from hpsearch.replay.table import Table

PROPOSAL_ATTR = "replay_proposal"  # on the failed trial that carried a sampler's proposal


class Chooser:
    """Draws configurations (each once) and opens the trial replaying one."""

    def __init__(self, table: Table, sampler: str, seed: int):
        self.table, self.sampler = table, sampler
        self.used = np.zeros(len(table.trials), bool)
        self.order = list(np.random.default_rng(seed).permutation(len(table.trials)))
        self.space = {name: json_to_distribution(text) for name, text in table.space.items()}
        self.matrix = np.array([[self._position(name, r.params.get(name)) for name in self.space] for r in table.trials])
        if sampler == "tpe" and not self.space:
            raise ValueError(f"study {table.study!r} records no search space; replay it with --sampler random")

    def exhausted(self) -> bool:
        return bool(self.used.all())

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, int] | None:
        """A new trial and the index of the configuration it replays; None when every one has run."""
        if self.exhausted():
            return None
        if self.sampler == "random":
            index = int(self.order.pop(0))
        else:
            index = self._nearest(self._proposal(study))
        self.used[index] = True
        return open_trial(study, self.table.trials[index].params, self._distributions(index)), index

    def _distributions(self, index: int) -> dict | None:
        """The searched distributions of a configuration's parameters (None: the table keeps none)."""
        params = self.table.trials[index].params
        return {name: self.space[name] for name in params if name in self.space} or None

    def _proposal(self, study: optuna.Study) -> dict:
        """What the sampler proposes for the next trial. Optuna can fix a trial's parameters only
        before it is created, and its samplers propose only for a live trial, so the proposal is
        drawn on a trial of its own, which then ends FAIL (no sampler or pruner learns from a failed
        trial) with user attr `replay_proposal`; the replaying trial comes next."""
        proposal = study.ask(self.space)
        params = dict(proposal.params)
        proposal.set_user_attr(PROPOSAL_ATTR, True)
        study.tell(proposal, state=TrialState.FAIL)
        return params

    def _nearest(self, params: dict) -> int:
        proposal = np.array([self._position(name, params.get(name)) for name in self.space])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: configurations sharing no param
            distance = np.nansum(self._difference(proposal), axis=1)
        distance[self.used] = np.inf
        return int(np.argmin(distance))

    def _position(self, name: str, value) -> float:
        """A parameter value as a number: [0, 1] position for numbers, choice index for categoricals."""
        if value is None:
            return np.nan
        dist = self.space[name]
        if isinstance(dist, CategoricalDistribution):
            return float(dist.choices.index(value)) if value in dist.choices else np.nan
        low, high, value = float(dist.low), float(dist.high), float(value)
        if getattr(dist, "log", False):
            low, high, value = math.log(low), math.log(high), math.log(max(value, 1e-300))
        return (value - low) / (high - low) if high > low else 0.0

    def _difference(self, proposal: np.ndarray) -> np.ndarray:
        difference = np.abs(self.matrix - proposal)
        for column, dist in enumerate(self.space.values()):
            if isinstance(dist, CategoricalDistribution):
                difference[:, column] = np.where(np.isnan(difference[:, column]), np.nan, difference[:, column] > 0)
        return difference


def open_trial(study: optuna.Study, params: dict, distributions: dict | None, user_attrs: dict | None = None) -> optuna.Trial:
    """A running trial with exactly these parameters: enqueued, so the sampler is not asked for them
    (Optuna's own way of fixing a trial's parameters before it runs)."""
    if distributions is None:
        return study.ask()
    study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)
    return study.ask(distributions)

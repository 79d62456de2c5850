"""Simulate one study against a recorded table: a real Optuna study, sampler and pruner, with trials
whose curves are read from the table instead of trained.

`workers` asynchronous workers each run one trial at a time, an epoch costing one unit of time;
events are handled in time order, so a pruner sees exactly the trials a real multi-worker study
would have seen finished at that moment. Random sampling draws the table's configurations in a
seeded order without replacement; TPE's proposals are mapped to the nearest configuration not yet
run (floats compared on their [0, 1] position in the searched range, log where searched on log,
categoricals equal or not; parameters a configuration lacks, such as another method's, ignored).
"""

from __future__ import annotations

import heapq
import math
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, json_to_distribution

from hpsearch.config.study_attrs import keep_proxy_history
from hpsearch.pruning.calibration import REPORTED
from hpsearch.replay import SAMPLERS
from hpsearch.replay.strategies import make_pruner
from hpsearch.replay.table import Recording, Table


@dataclass(frozen=True)
class Run:
    """What one simulated study did."""

    epochs_to_target: float  # epochs spent by all workers until a target trial finished; inf if none did
    completions: tuple[tuple[float, float], ...]  # (epochs spent when it finished, its final value), in order
    top_pruned: bool  # whether one of the table's top configurations was pruned
    top_lost: bool  # ... or started and not run to its last epoch when the simulated study ended
    trials: int
    pruned: int


class _Job:
    """A trial replaying one recording, step by step."""

    def __init__(self, trial: optuna.Trial, index: int, recording: Recording, primary: str, history: bool):
        self.trial, self.index, self.recording = trial, index, recording
        self.curve = recording.curves.get(primary, {})  # empty: diverged before its first evaluation
        self.steps = sorted(self.curve)
        self.position = 0
        self.history = history

    def step_cost(self) -> float:
        if not self.steps:
            return self.recording.epochs
        end = self.steps[self.position] if self.position < len(self.steps) - 1 else self.recording.epochs
        start = self.steps[self.position - 1] if self.position else 0
        return max(end - start, 0)

    def advance(self) -> str | None:
        """Report the next step; returns "complete", "pruned" or None (keeps running)."""
        if not self.steps:
            return "pruned"
        step = self.steps[self.position]
        self.trial.report(self.curve[step], step)
        if self.history:
            keep_proxy_history(self.trial, [
                {"epoch": s, **{p: c[s] for p, c in self.recording.curves.items() if s in c}}
                for s in self.steps[:self.position + 1]])
        self.position += 1
        if self.position == len(self.steps):
            return "complete" if self.recording.final is not None else "pruned"  # a diverged recording stops here
        return "pruned" if self.trial.should_prune() else None


class _Chooser:
    """Which recorded configuration the next trial replays."""

    def __init__(self, table: Table, sampler: str, seed: int):
        self.table, self.sampler = table, sampler
        self.used = np.zeros(len(table.trials), bool)
        self.order = list(np.random.default_rng(seed).permutation(len(table.trials)))
        self.space = {name: json_to_distribution(text) for name, text in table.space.items()}
        self.matrix = np.array([[self._position(name, r.params.get(name)) for name in self.space] for r in table.trials])
        if sampler == "tpe" and not self.space:
            raise ValueError(f"study {table.study!r} records no search space; replay it with --sampler random")

    def distributions(self) -> dict | None:
        return self.space if self.sampler == "tpe" else None

    def next(self, params: dict) -> int | None:
        if self.used.all():
            return None
        if self.sampler == "random":
            index = int(self.order.pop(0))
        else:
            proposal = np.array([self._position(name, params.get(name)) for name in self.space])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: configurations sharing no param
                distance = np.nansum(self._difference(proposal), axis=1)
            distance[self.used] = np.inf
            index = int(np.argmin(distance))
        self.used[index] = True
        return index

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


def target_value(table: Table, gap: float) -> float:
    """The value a trial must reach: within `gap` points (1 point = 0.01) of the table's best."""
    return table.best() - gap / 100 if table.direction == "maximize" else table.best() + gap / 100


def top_indices(table: Table, k: int = 3) -> set[int]:
    ranked = sorted((i for i, r in enumerate(table.trials) if r.final is not None),
                    key=lambda i: table.trials[i].final, reverse=table.direction == "maximize")
    return set(ranked[:k])


def simulate(table: Table, strategy: str, *, sampler: str = "random", seed: int = 0, workers: int = 1,
             gap: float = 1.0, horizon: float = 0.2) -> Run:
    """Run one simulated study until a target trial has finished and `horizon` of the exhaustive
    budget is spent, or every configuration has run."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")
    optuna_sampler = (optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1) if sampler == "tpe"
                      else optuna.samplers.RandomSampler(seed=seed))
    epochs = max(r.epochs for r in table.trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # thousands of in-memory studies: no line each
    # A fixed name: Hyperband assigns brackets by hashing the study name with the trial number.
    study = optuna.create_study(study_name=f"replay-{seed}", direction=table.direction, sampler=optuna_sampler, pruner=make_pruner(strategy, epochs, seed))
    chooser = _Chooser(table, sampler, seed)
    target, top = target_value(table, gap), top_indices(table)
    better = (lambda v: v >= target) if table.direction == "maximize" else (lambda v: v <= target)
    history = table.primary != REPORTED

    clock: list[tuple[float, int]] = [(0.0, w) for w in range(workers)]
    jobs: dict[int, _Job | None] = dict.fromkeys(range(workers))
    spent, reached, completions, top_pruned, trials, pruned = 0.0, math.inf, [], False, 0, 0
    while clock:
        now, worker = heapq.heappop(clock)
        job = jobs[worker]
        if job is not None:
            spent += job.step_cost()
            outcome = job.advance()
            if outcome is None:
                heapq.heappush(clock, (now + jobs[worker].step_cost(), worker))
                continue
            jobs[worker] = None
            if outcome == "complete":
                study.tell(job.trial, job.recording.final)
                completions.append((spent, job.recording.final))
                if better(job.recording.final) and reached == math.inf:
                    reached = spent
            else:
                study.tell(job.trial, state=optuna.trial.TrialState.PRUNED)
                pruned += 1
                top_pruned |= job.index in top
        if reached < math.inf and spent >= horizon * table.budget:
            break
        trial = study.ask(chooser.distributions())
        index = chooser.next(trial.params)
        if index is None:  # every configuration has run: this worker retires
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        trials += 1
        jobs[worker] = _Job(trial, index, table.trials[index], table.primary, history)
        heapq.heappush(clock, (now + jobs[worker].step_cost(), worker))
    unfinished = any(job is not None and job.index in top for job in jobs.values())
    return Run(reached, tuple(completions), top_pruned, top_pruned or unfinished, trials, pruned)

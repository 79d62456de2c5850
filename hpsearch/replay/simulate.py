"""Simulate one study against a recorded table: a real Optuna study, sampler and pruner, with trials
whose curves are read from the table instead of trained.

`workers` asynchronous workers each run one trial at a time, an epoch costing one unit of time (or
its recorded seconds, `cost="seconds"`); events are handled in time order, so a pruner sees exactly
the trials a real multi-worker study would have seen at that moment. What a study has spent at a
moment counts every worker's work up to it, the epochs still in progress on other workers
included: a 16-worker study that finds its target has paid for all 16 (`Spend`).

With a reversible strategy a stopped trial is paused (PRUNED in Optuna, user attr `paused_at`)
and, when a worker is free, the strategy's thaw policy may continue it instead of sampling a new
configuration: a new Optuna trial with the same parameters (user attr `thaw_of`) reports the paused
curve again at no cost and goes on from the paused epoch, paying only for the epochs left.
Configurations come from `chooser.py` (random order, or TPE's proposals mapped to the nearest).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import optuna

from hpsearch.config.study_attrs import keep_proxy_history
from hpsearch.pruning.calibration import REPORTED
from hpsearch.pruning.rungs import PAUSED_ATTR, THAW_ATTR
from hpsearch.replay import SAMPLERS
from hpsearch.replay.chooser import Chooser, open_trial
from hpsearch.replay.cost import budget, cumulative_costs
from hpsearch.replay.strategies import make_strategy
from hpsearch.replay.table import Recording, Table

@dataclass(frozen=True)
class Run:
    """What one simulated study did. Spending is in the cost unit (epochs, or seconds)."""

    epochs_to_target: float  # spent by all workers (in progress included) when a target trial finished; inf if none did
    completions: tuple[tuple[float, float], ...]  # (spent when it finished, its final value), in order
    top_pruned: bool  # whether one of the table's top configurations was stopped and not continued
    top_lost: bool  # ... or started and not run to its last epoch when the simulated study ended
    trials: int  # configurations started
    pruned: int  # trials stopped for good or paused
    paused: int = 0
    thawed: int = 0
    top_paused: bool = False  # one of the top configurations was paused at some point (maybe thawed later)


class _Job:
    """A trial replaying one recording, step by step, from `position` (a thaw starts further on)."""

    def __init__(self, trial: optuna.Trial, index: int, recording: Recording, costs: np.ndarray, primary: str,
                 history: bool, position: int = 0):
        self.trial, self.index, self.recording, self.costs = trial, index, recording, costs
        self.curve = recording.curves.get(primary, {})  # empty: diverged before its first evaluation
        self.steps = sorted(self.curve)
        self.position = position
        self.history = history
        self.started = 0.0  # when its current step began
        for step in self.steps[:position]:  # a thaw: the paused curve is reported again, at no cost
            self.trial.report(self.curve[step], step)
        if position:
            self._keep_history()

    def step_cost(self) -> float:
        if not self.steps:
            return float(self.costs[self.recording.epochs])
        end = self.steps[self.position] if self.position < len(self.steps) - 1 else self.recording.epochs
        start = self.steps[self.position - 1] if self.position else 0
        return float(self.costs[min(max(end, start), self.recording.epochs)] - self.costs[min(start, self.recording.epochs)])

    def advance(self) -> str | None:
        """Report the next step; returns "complete", "pruned" or None (keeps running)."""
        if not self.steps:
            return "pruned"
        step = self.steps[self.position]
        self.trial.report(self.curve[step], step)
        self.position += 1
        self._keep_history()
        if self.position == len(self.steps):
            return "complete" if self.recording.final is not None else "pruned"  # a diverged recording stops here
        return "pruned" if self.trial.should_prune() else None

    def _keep_history(self) -> None:
        if self.history:
            keep_proxy_history(self.trial, [
                {"epoch": s, **{p: c[s] for p, c in self.recording.curves.items() if s in c}}
                for s in self.steps[:self.position]])


class Spend:
    """What all workers have spent by a moment: finished steps plus the running parts of current ones
    (kept as a count and a sum of start times, so a moment costs O(1) even with 1,024 workers)."""

    def __init__(self):
        self.done, self.running, self.starts = 0.0, 0, 0.0

    def start(self, job: _Job, now: float) -> None:
        job.started = now
        self.running += 1
        self.starts += now

    def finish(self, job: _Job) -> None:
        self.done += job.step_cost()
        self.running -= 1
        self.starts -= job.started

    def at(self, now: float) -> float:
        return self.done + self.running * now - self.starts


def target_value(table: Table, gap: float) -> float:
    """The value a trial must reach: within `gap` points (1 point = 0.01) of the table's best."""
    return table.best() - gap / 100 if table.direction == "maximize" else table.best() + gap / 100


def top_indices(table: Table, k: int = 3) -> set[int]:
    ranked = sorted((i for i, r in enumerate(table.trials) if r.final is not None),
                    key=lambda i: table.trials[i].final, reverse=table.direction == "maximize")
    return set(ranked[:k])


def simulate(table: Table, strategy: str, *, sampler: str = "random", seed: int = 0, workers: int = 1,
             gap: float = 1.0, horizon: float = 0.2, cost: str = "epochs") -> Run:
    """Run one simulated study until a target trial has finished and `horizon` of the exhaustive
    budget is spent, or there is nothing left to run (every configuration ran, nothing is paused)."""
    return simulate_study(table, strategy, sampler=sampler, seed=seed, workers=workers, gap=gap, horizon=horizon,
                          cost=cost)[0]


def simulate_study(table: Table, strategy: str, *, sampler: str = "random", seed: int = 0, workers: int = 1,
                   gap: float = 1.0, horizon: float = 0.2, cost: str = "epochs") -> tuple[Run, optuna.Study]:
    """`simulate`, with the Optuna study it drove (to look at its trials)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")
    optuna_sampler = (optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1) if sampler == "tpe"
                      else optuna.samplers.RandomSampler(seed=seed))
    epochs = max(r.epochs for r in table.trials)
    pruner, thaw = make_strategy(strategy, epochs, seed)
    reversible = getattr(pruner, "reversible", False)
    costs = cumulative_costs(table, cost)
    exhaustive = budget(costs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # thousands of in-memory studies: no line each
    # A fixed name: Hyperband assigns brackets by hashing the study name with the trial number.
    study = optuna.create_study(study_name=f"replay-{seed}", direction=table.direction, sampler=optuna_sampler, pruner=pruner)
    chooser = Chooser(table, sampler, seed)
    target, top = target_value(table, gap), top_indices(table)
    better = (lambda v: v >= target) if table.direction == "maximize" else (lambda v: v <= target)
    history = table.primary != REPORTED

    def next_job() -> _Job | None:
        """Thaw a paused trial when the policy says so, else start a new configuration."""
        paused = thaw.choose(study, exhausted=chooser.exhausted()) if thaw is not None else None
        if paused is not None:
            index = indices[paused.number]
            trial = open_trial(study, paused.params, paused.distributions or None, {THAW_ATTR: paused.number})
            indices[trial.number] = index
            resumed.add(paused.number)
            counts["thawed"] += 1
            position = sum(s <= paused.user_attrs[PAUSED_ATTR] for s in table.trials[index].curves.get(table.primary, {}))
            return _Job(trial, index, table.trials[index], costs[index], table.primary, history, position)
        asked = chooser.ask(study)
        if asked is None:
            return None
        trial, index = asked
        indices[trial.number] = index
        started.add(index)
        return _Job(trial, index, table.trials[index], costs[index], table.primary, history)

    clock: list[tuple[float, int]] = [(0.0, w) for w in range(workers)]
    jobs: dict[int, _Job | None] = dict.fromkeys(range(workers))
    spend, reached, completions = Spend(), math.inf, []
    indices: dict[int, int] = {}  # trial number -> configuration
    started, finished, stopped, paused_numbers, resumed = set(), set(), set(), {}, set()
    counts = {"pruned": 0, "paused": 0, "thawed": 0}
    while clock:
        now, worker = heapq.heappop(clock)
        job = jobs[worker]
        if job is not None:
            spend.finish(job)
            outcome = job.advance()
            if outcome is None:
                spend.start(job, now)
                heapq.heappush(clock, (now + job.step_cost(), worker))
                continue
            jobs[worker] = None
            if outcome == "complete":
                study.tell(job.trial, job.recording.final)
                finished.add(job.index)
                completions.append((spend.at(now), job.recording.final))
                if better(job.recording.final) and reached == math.inf:
                    reached = spend.at(now)
            else:
                if reversible and job.position < len(job.steps):  # a pause (a diverged curve's end is not)
                    job.trial.set_user_attr(PAUSED_ATTR, job.steps[job.position - 1])
                    paused_numbers[job.trial.number] = job.index
                    counts["paused"] += 1
                else:
                    stopped.add(job.index)
                study.tell(job.trial, state=optuna.trial.TrialState.PRUNED)
                counts["pruned"] += 1
        if reached < math.inf and spend.at(now) >= horizon * exhaustive:
            break
        job = next_job()
        if job is None:  # nothing to run or thaw: this worker retires
            continue
        jobs[worker] = job
        spend.start(job, now)
        heapq.heappush(clock, (now + job.step_cost(), worker))
    still_paused = {index for number, index in paused_numbers.items() if number not in resumed}
    top_pruned = bool(top & (stopped | still_paused))
    top_paused = bool(top & set(paused_numbers.values()))
    run = Run(reached, tuple(completions), top_pruned, top_pruned or bool(top & (started - finished)), len(started),
              counts["pruned"], counts["paused"], counts["thawed"], top_paused)
    return run, study

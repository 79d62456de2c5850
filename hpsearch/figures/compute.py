"""Compute a study spent, and what pruning saved against running every finished trial to the end.

Epochs are counted exactly: a trial's `epochs_trained` against its budget (`training.epochs`, or the
value the trial sampled when the search space holds it). Seconds are an estimate, and the text says
how it is made: what was spent is the sum of the finished trials' Optuna durations; an epoch not
trained is costed at the mean duration per epoch of the complete trials, which counts the proxies
evaluated each epoch and the final metric (a pruned trial skips those too), where MLflow's
`epoch_time_s` counts the training step alone and would understate the saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
EPOCHS_PARAM = "training.epochs"  # a searched epoch budget: each trial's own


def epochs_trained(trial: FrozenTrial, budget: int | None) -> int:
    """Epochs the trial trained: hpsearch's `epochs_trained`, else (a study hpsearch did not run) its
    budget when complete or its last reported step."""
    if "epochs_trained" in trial.user_attrs:
        return int(trial.user_attrs["epochs_trained"])
    if trial.state == TrialState.COMPLETE and budget is not None:
        return budget
    return max(trial.intermediate_values, default=0)


def budget_of(trial: FrozenTrial, epochs: int | None) -> int | None:
    return int(trial.params.get(EPOCHS_PARAM, epochs)) if epochs is not None else None


@dataclass(frozen=True)
class Compute:
    n_trials: int  # finished trials that count (a retried trial counts once, as its retry)
    epochs: int | None  # training.epochs of the stored config; None: not an hpsearch study
    searched_epochs: bool
    spent_epochs: int
    full_epochs: int | None  # every counted trial run to its budget
    saved_epochs: int  # not trained because the trial was pruned
    unrun_epochs: int  # not trained because the trial failed
    n_pruned: int
    n_failed: int
    spent_s: float  # Optuna durations of every finished trial, retried ones included
    seconds_per_epoch: float | None
    rate_from: str  # which trials the per-epoch seconds come from

    @property
    def saved_s(self) -> float | None:
        return None if self.seconds_per_epoch is None else self.saved_epochs * self.seconds_per_epoch

    @property
    def full_s(self) -> float | None:
        if self.seconds_per_epoch is None:
            return None
        return self.spent_s + (self.saved_epochs + self.unrun_epochs) * self.seconds_per_epoch

    def lines(self) -> list[str]:
        """The figures in words (the terminal and the HTML page both print these)."""
        if self.full_epochs is None:
            return [f"epochs: {self.spent_epochs} trained by {self.n_trials} finished trials (no stored hpsearch "
                    "config, so no epoch budget to compare with)"]
        budget = "each trial's sampled training.epochs" if self.searched_epochs else f"{self.n_trials} x {self.epochs}"
        lines = [f"epochs: {self.spent_epochs} trained of the {self.full_epochs} that running all {self.n_trials} "
                 f"finished trials to the end takes ({budget}): {self.saved_epochs} saved by pruning "
                 f"{self.n_pruned} trial(s) ({_share(self.saved_epochs, self.full_epochs)})"
                 + (f", {self.unrun_epochs} not trained by {self.n_failed} failed trial(s)" if self.n_failed else "")]
        if self.seconds_per_epoch is None:
            lines.append(f"seconds: {self.spent_s:.1f} spent (Optuna trial durations); no trial to cost an epoch from")
            return lines
        lines.append(f"seconds: {self.spent_s:.1f} spent (the finished trials' Optuna durations); about "
                     f"{self.saved_s:.1f} saved by pruning ({_share(self.saved_s, self.full_s)} of an estimated "
                     f"{self.full_s:.1f} for every trial to the end)")
        lines.append(f"  estimate: each epoch not trained costs {self.seconds_per_epoch:.2f} s, the mean duration per "
                     f"epoch of the {self.rate_from} (proxies and final metric included; MLflow's epoch_time_s "
                     "counts the training step alone)")
        return lines


def compute_of(study: optuna.Study, counted: list[FrozenTrial], epochs: int | None) -> Compute:
    """`counted`: the finished trials that count toward n_trials (hpsearch.study.retry.finished_trials),
    so a retried configuration is counted once, by its retry, which inherits the epochs trained."""
    trained = {t.number: epochs_trained(t, budget_of(t, epochs)) for t in counted}
    unrun = {t.number: max(0, (budget_of(t, epochs) or 0) - trained[t.number]) for t in counted}
    pruned = [t for t in counted if t.state == TrialState.PRUNED]
    failed = [t for t in counted if t.state == TrialState.FAIL]
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    rate, rate_from = _seconds_per_epoch(counted, trained)
    return Compute(
        n_trials=len(counted), epochs=epochs, searched_epochs=any(EPOCHS_PARAM in t.params for t in counted),
        spent_epochs=sum(trained.values()),
        full_epochs=None if epochs is None else sum(budget_of(t, epochs) for t in counted),
        saved_epochs=sum(unrun[t.number] for t in pruned), unrun_epochs=sum(unrun[t.number] for t in failed),
        n_pruned=len(pruned), n_failed=len(failed),
        spent_s=sum(t.duration.total_seconds() for t in finished if t.duration is not None),
        seconds_per_epoch=rate, rate_from=rate_from)


def _seconds_per_epoch(counted: list[FrozenTrial], trained: dict[int, int]) -> tuple[float | None, str]:
    """Mean seconds per epoch over the complete trials (else every finished one). A retry's duration
    covers only the epochs it trained itself, so retries are left out."""
    whole = [t for t in counted if t.duration is not None and "retry_of" not in t.user_attrs and trained[t.number]]
    for trials, label in (([t for t in whole if t.state == TrialState.COMPLETE], "complete trials"),
                          (whole, "finished trials (none complete)")):
        if trials:
            seconds = sum(t.duration.total_seconds() for t in trials)
            return seconds / sum(trained[t.number] for t in trials), label
    return None, ""


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"

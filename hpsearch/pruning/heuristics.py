"""SSL early-stopping heuristics: small rules, each a pure decision that returns its reason.

Each rule reads the trial's evaluation history (one dict of metrics per evaluated epoch, oldest
first, as `trial.py` records it) and returns why the trial should stop, or None. Divergence (a
NaN or infinite loss or features) is not a rule here: the trainer raises it where it happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Rule(Protocol):
    def reason_to_stop(self, history: list[dict[str, float]]) -> str | None: ...


@dataclass(frozen=True)
class Collapse:
    """The std of L2-normalised embeddings (x sqrt(d); ~1 healthy) stays below `threshold` for
    `patience` evaluations in a row: the embeddings are collapsing toward a point."""

    threshold: float
    patience: int

    def reason_to_stop(self, history):
        recent = [h["normalised_std"] for h in history if "normalised_std" in h][-self.patience:]
        if len(recent) == self.patience and all(v < self.threshold for v in recent):
            return f"collapse: normalised std {recent[-1]:.3f} < {self.threshold} for {self.patience} evaluations"
        return None


@dataclass(frozen=True)
class NoLearning:
    """From `after_epoch` on, kNN at or below the randomly initialised encoder's: training has
    not learnt anything a random network does not already give (the BYOL/SimSiam failure sign)."""

    random_init_knn: float
    after_epoch: int

    def reason_to_stop(self, history):
        evaluated = [h for h in history if "knn_accuracy" in h]
        if evaluated and evaluated[-1]["epoch"] >= self.after_epoch and evaluated[-1]["knn_accuracy"] <= self.random_init_knn:
            last = evaluated[-1]
            return (f"no learning: kNN {last['knn_accuracy']:.4f} <= random-init {self.random_init_knn:.4f} "
                    f"at epoch {last['epoch']}")
        return None


@dataclass(frozen=True)
class Plateau:
    """No kNN gain of at least `min_delta` over the best so far in the last `patience` evaluations."""

    patience: int
    min_delta: float

    def reason_to_stop(self, history):
        knn = [h["knn_accuracy"] for h in history if "knn_accuracy" in h]
        if len(knn) <= self.patience:
            return None
        before = max(knn[: -self.patience])
        if max(knn[-self.patience:]) < before + self.min_delta:
            return f"plateau: no kNN gain of {self.min_delta} over {before:.4f} in {self.patience} evaluations"
        return None


def rules_for(cfg, collapse_meaningful: bool, random_init_knn: float | None) -> list[Rule]:
    """The enabled rules of `pruning.heuristics`, leaving out those that mean nothing here."""
    rules: list[Rule] = []
    if cfg.collapse.enabled and collapse_meaningful:
        rules.append(Collapse(cfg.collapse.threshold, cfg.collapse.patience))
    if cfg.no_learning.enabled and random_init_knn is not None:
        rules.append(NoLearning(random_init_knn, cfg.no_learning.after_epoch))
    if cfg.plateau.enabled:
        rules.append(Plateau(cfg.plateau.patience, cfg.plateau.min_delta))
    return rules


def first_reason(rules: list[Rule], history: list[dict[str, float]]) -> str | None:
    return next((reason for rule in rules if (reason := rule.reason_to_stop(history)) is not None), None)

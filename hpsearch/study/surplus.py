"""Surplus trials: what keeps a study at exactly `n_trials` finished trials however many workers
share it.

A worker that asks Optuna for a trial while the others already hold the last configurations would
add one trial too many. So a fresh trial (not a retry: no `retry_of`) decides at its start whether
it has a place: its rank among the study's fresh trials, ordered by trial number, must be below
`n_trials`. Trial numbers are unique and given in order by the storage, so two workers can never
both take the last place. A trial without a place is surplus: it trains nothing, ends FAIL at once
with user attr `surplus`, and counts nowhere (hpsearch.study.retry.finished_trials leaves it out).

Surplus trials earlier in the order do not take places (so that a study whose `n_trials` is raised
later still reaches it); a trial still deciding counts as taking one, which can only make a later
trial surplus too, never let one too many through.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

SURPLUS_ATTR = "surplus"  # user attr: True on a trial that had no place


class Surplus(Exception):
    """Ends a surplus trial (Optuna records it FAIL; the session keeps Optuna's warning quiet)."""


def is_surplus(trials: list[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether the fresh trial `number` has no place among the study's first `n_trials` fresh trials."""
    taken = sum(1 for t in trials if t.number < number and "retry_of" not in t.user_attrs
                and not t.user_attrs.get(SURPLUS_ATTR))
    return taken >= n_trials


def end_if_surplus(trial: optuna.Trial, n_trials: int) -> None:
    """Call first thing in a trial, before sampling: raises Surplus when the trial has no place."""
    if "retry_of" in trial.user_attrs:  # a retry continues a configuration that has its place
        return
    if is_surplus(trial.study.get_trials(deepcopy=False), trial.number, n_trials):
        trial.set_user_attr(SURPLUS_ATTR, True)
        reason = f"surplus: the study already has its {n_trials} trials; this one trains nothing and is not counted"
        trial.set_user_attr("reason", reason)
        raise Surplus(reason)

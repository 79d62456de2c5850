"""The end of a study, done once however many workers share it: the test-split measurement, the
report on the parent run and the parent run's end belong to the one worker that claims them.

The claim (study system attr `hpsearch:finalised`) names the worker and how many finished trials
the study held when it ended. Workers that end a study together race for it and one wins; a worker
that starts after the study ended finds it claimed for the same count and finalises nothing again;
a study continued with a larger `n_trials` ends with a new count, and is claimed anew.
"""

from __future__ import annotations

import os
import socket

import optuna

from hpsearch.study.claims import claim

FINALISED_ATTR = "hpsearch:finalised"  # study system attr: {"worker": "HOST:PID", "finished": N}
ROLE_ENV = "HPSEARCH_ROLE"  # "worker" in `hpsearch worker` processes


def is_worker() -> bool:
    """Whether this process is an `hpsearch worker` (one of many) rather than `hpsearch run`."""
    return os.environ.get(ROLE_ENV) == "worker"


def worker_id() -> str:
    """This process as the workers of a study name it: HOST:PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def finalisation(study: optuna.Study) -> dict | None:
    """Who finalised the study last, and at how many finished trials (None: never)."""
    return study._storage.get_study_system_attrs(study._study_id).get(FINALISED_ATTR)


def claim_finalisation(study: optuna.Study, finished: int) -> tuple[bool, dict]:
    """(whether this worker finalises the study that now holds `finished` trials, the claim held)."""
    current = finalisation(study)
    if current is not None and current.get("finished") == finished:
        return False, current  # this ending was claimed already
    mine = {"worker": worker_id(), "finished": finished}
    held = claim(study, FINALISED_ATTR, mine, replacing=current, system=True)
    return held == mine, held

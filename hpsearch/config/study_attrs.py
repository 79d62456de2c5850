"""What hpsearch keeps in a study's Optuna storage besides its trials' params and values, and where.

The large items, the study's config, its test-split results and each trial's proxy history, are
system attrs: `optuna
studies` and `optuna trials` print every user attr in full, and these made a row thousands of
characters wide. User attrs keep the small, readable facts (run id, epochs trained, reason, worker).
Optuna 5 dropped `Study.system_attrs` and `Trial.system_attrs`, so writing (and reading the study's)
goes through its storage API; `FrozenTrial.system_attrs` is still public. Studies recorded before
this change kept them in user attrs, and are read from there.
"""

from __future__ import annotations

from typing import Any

CONFIG_ATTR = "hpsearch_config"  # the study's resolved config, as JSON
TEST_ATTR = "test_results"  # {"<trial number>" | "random_init": {"value": ..., "metrics": {...}}}
LOOP_ATTR = "training_loop"  # user attr: "own" for a study whose trials run the user's loop (hpsearch.optimize)
HISTORY_ATTR = "proxy_history"  # per trial: [{"epoch": e, "knn_accuracy": ..., ...}, ...], evaluated epochs


def study_config(study) -> dict | None:
    """The config kept with `study` (an optuna.Study), or None when hpsearch did not create it."""
    return _study_attr(study, CONFIG_ATTR)


def keep_study_config(study, tree: dict) -> None:
    study._storage.set_study_system_attr(study._study_id, CONFIG_ATTR, tree)


def test_results(study) -> dict[str, dict]:
    """What has been measured on the test split so far (hpsearch.study.on_test), keyed as TEST_ATTR says."""
    return dict(_study_attr(study, TEST_ATTR) or {})


def keep_test_results(study, results: dict[str, dict]) -> None:
    study._storage.set_study_system_attr(study._study_id, TEST_ATTR, results)


def _study_attr(study, key: str):
    kept = study._storage.get_study_system_attrs(study._study_id).get(key)
    return kept if kept is not None else study.user_attrs.get(key)


def proxy_history(trial) -> list[dict] | None:
    """A FrozenTrial's proxy history, or None when hpsearch recorded none."""
    kept = trial.system_attrs.get(HISTORY_ATTR)
    return kept if kept is not None else trial.user_attrs.get(HISTORY_ATTR)


def keep_proxy_history(trial, history: list[dict[str, Any]]) -> None:
    """Record the history of a live optuna.Trial (replacing what it held)."""
    trial.study._storage.set_trial_system_attr(trial._trial_id, HISTORY_ATTR, history)

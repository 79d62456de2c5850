"""The config a study was created with, kept in the study itself so that `hpsearch resume NAME`
needs no YAML, and so that a changed study file cannot silently change a running search."""

from __future__ import annotations

import difflib

import optuna
import yaml

from hpsearch.config.schema import StudyConfig
from hpsearch.config.study_attrs import LOOP_ATTR, keep_study_config, study_config
from hpsearch.study.studyfile import StudyFileError
from hpsearch.tracking.urls import mask
from hpsearch.tracking.tracker import flatten

# Sections whose change alters what is searched or how trials are scored. Budget fields such as
# n_trials, the work dir, storage, tracking and recovery settings may change freely.
SEARCH_DEFINING = ("seed", "data", "model", "objective", "augment", "training", "evaluation",
                   "search_space", "sampler", "pruning")
# Fields inside those sections that change where or how fast data is read, never the results.
RESULT_NEUTRAL = ("data.stream", "data.workers", "data.memory_limit_gb", "data.cache_dir")


class ConfigChanged(Exception):
    """The study file changes the search of an existing study; str(err) holds a readable diff."""


def store_config(study: optuna.Study, cfg: StudyConfig) -> None:
    """Keep the config in the study, with any password in the storage or tracking URL masked."""
    tree = cfg.model_dump(mode="json")
    tree["storage"] = cfg.storage and mask(cfg.storage)
    tree["tracking"]["uri"] = cfg.tracking.uri and mask(cfg.tracking.uri)
    keep_study_config(study, tree)  # once: the YAML the parent run keeps is made from it (config_yaml)


def config_yaml(study: optuna.Study) -> str:
    """The stored config as YAML, for the study's MLflow parent run."""
    return _yaml(stored_config(study))


def without_secrets(text: str, cfg: StudyConfig) -> str:
    """The study file's text with the passwords of its URLs masked, fit to be stored as an artifact."""
    for url in (cfg.storage, cfg.tracking.uri):
        if url:
            text = text.replace(url, mask(url))
    return text


def stored_config(study: optuna.Study) -> dict | None:
    return study_config(study)


def method_study_config(study: optuna.Study, cannot: str) -> dict:
    """The stored config of a study whose trials hpsearch's method library trains; StudyFileError
    saying what hpsearch `cannot` do for any other (a study hpsearch did not create, or one that
    runs a training loop of the user's own, whose model hpsearch cannot rebuild)."""
    stored = stored_config(study)
    if stored is None:
        raise StudyFileError(f"study {study.study_name!r} was not created by hpsearch: {cannot}")
    if study.user_attrs.get(LOOP_ATTR) == "own":
        raise StudyFileError(f"study {study.study_name!r} runs a training loop of your own (hpsearch.optimize): "
                             f"{cannot}; rerun your script to continue it")
    return stored


def check_unchanged(study: optuna.Study, cfg: StudyConfig, force: bool) -> None:
    """Raise ConfigChanged when `cfg` differs from the stored config in a search-defining section."""
    stored = stored_config(study)
    if stored is None or force:
        return
    if "val_size" not in (stored.get("data") or {}):
        raise ConfigChanged(
            f"study {cfg.name!r} was created by an hpsearch that measured trial values on the test split; this one "
            "measures them on a validation split (data.val_size), so old and new values would not compare. Give the "
            "study a new name, or rerun `hpsearch run STUDY_FILE --force` to continue it with validation values")
    old = flatten({k: stored.get(k) for k in SEARCH_DEFINING})
    new = flatten({k: v for k, v in cfg.model_dump(mode="json").items() if k in SEARCH_DEFINING})
    # A field a newer hpsearch added is not a change while it keeps its default: the study's
    # trials ran with the behaviour that default preserves.
    defaults = flatten(StudyConfig.model_validate({"name": cfg.name, "objective": {"method": cfg.objective.method}})
                       .model_dump(mode="json"))
    new = {k: v for k, v in new.items() if k in old or k not in defaults or v != defaults[k]}
    old, new = ({k: v for k, v in tree.items() if k not in RESULT_NEUTRAL} for tree in (old, new))
    if old == new:
        return
    # One "path: value" line per field, so each changed line names its field in full.
    old_lines, new_lines = ([f"{k}: {v!r}" for k, v in tree.items()] for tree in (old, new))
    diff = difflib.unified_diff(old_lines, new_lines, "stored with the study", "this study file", lineterm="", n=0)
    raise ConfigChanged(
        f"study {cfg.name!r} exists with a different search; rerun with --force to continue it anyway, "
        "or give the study a new name:\n" + "\n".join(diff)
    )


def _yaml(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False)

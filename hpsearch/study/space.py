"""The search space: which config fields a trial samples, and the trial's config built from them.

A search-space key is the dotted path of the study-file field it overrides (for example
`training.optimizer.lr` or `augment.crop_scale.0`), so anything in the schema can be searched
and every sampled value is validated by the same schema as the study file itself.
"""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import ValidationError

from hpsearch.config.schema import FieldError, ParamSpec, StudyConfig, did_you_mean
from hpsearch.tracking.tracker import flatten

# Fields that define the study rather than a trial: searching them makes no sense.
NOT_SEARCHABLE = ("name", "n_trials", "workdir", "storage", "search_space", "sampler", "pruning", "tracking", "recovery")


def set_path(tree: dict, path: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for path "a.b.c"; numeric parts index lists; missing sections are created."""
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        if isinstance(node, (list, tuple)):
            node = node[int(part)]
            continue
        if node.get(part) is None:
            node[part] = {}
        elif isinstance(node[part], tuple):
            node[part] = list(node[part])
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise FieldError(path, f"cannot set a field inside {part!r}, which is a {type(node).__name__}")
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise FieldError(path, f"expected an index below {len(node)}, got {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def with_values(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """The config of one trial: `cfg` with `values` set at their paths, validated again."""
    tree = cfg.model_dump()
    del tree["search_space"]  # a trial's config samples nothing itself
    method = values.get("objective.method")
    if method is not None and method != tree["objective"]["method"]:
        # The study's settings for one method do not apply to another: a sampled method starts
        # from its own defaults, then takes the sampled objective.* values.
        tree["objective"] = {"method": method}
    for path, value in values.items():
        set_path(tree, path, value)
    return StudyConfig.model_validate(tree)


def is_active(spec: ParamSpec, sampled: dict[str, Any]) -> bool:
    """A conditional parameter is sampled only when every `when` parameter has one of its listed values."""
    for other, allowed in (spec.when or {}).items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if sampled.get(other) not in allowed:
            return False
    return True


def sample(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample the active parameters in declaration order (so a condition's parameter comes first)."""
    sampled: dict[str, Any] = {}
    for path, spec in space.items():
        if not is_active(spec, sampled):
            continue
        if spec.type == "categorical":
            sampled[path] = trial.suggest_categorical(path, spec.choices)
        elif spec.type == "int":
            sampled[path] = trial.suggest_int(path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            sampled[path] = trial.suggest_float(path, spec.low, spec.high, step=spec.step, log=spec.log)
    return sampled


def check_space(cfg: StudyConfig) -> None:
    """Raise FieldError unless every parameter names a real field and every value it can take is valid."""
    declared: dict[str, ParamSpec] = {}
    for path, spec in cfg.search_space.items():
        where = f"search_space.{path}"
        if path.split(".")[0] in NOT_SEARCHABLE:
            raise FieldError(where, f"{path.split('.')[0]!r} defines the study and cannot be searched")
        _check_condition(where, spec, declared)
        if spec.type == "categorical":
            for choice in spec.choices:
                if not (choice is None or isinstance(choice, (bool, int, float, str))):
                    raise FieldError(where + ".choices", f"expected scalar choices (Optuna's rule), got {choice!r}")
        condition = {k: (v[0] if isinstance(v, list) else v) for k, v in (spec.when or {}).items()}
        for value in spec.choices if spec.type == "categorical" else (spec.low, spec.high):
            if spec.type == "int":
                value = int(value)
            try:
                with_values(cfg, {**condition, path: value})
            except ValidationError as err:
                first = err.errors()[0]
                if first["type"] == "extra_forbidden":
                    raise FieldError(where, f"not a field of the study file{did_you_mean(path, _searchable(cfg))}; "
                                            "keys are dotted field paths such as training.optimizer.lr") from None
                raise FieldError(where, f"the value {value!r} is invalid for this field: {first['msg']}") from None
            except FieldError as err:
                raise FieldError(where, err.message) from None
        declared[path] = spec


def _searchable(cfg: StudyConfig) -> list[str]:
    """Every dotted path a search space may name, for suggestions."""
    tree = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_SEARCHABLE}
    return list(flatten(tree))


def _check_condition(where: str, spec: ParamSpec, declared: dict[str, ParamSpec]) -> None:
    for other, allowed in (spec.when or {}).items():
        parent = declared.get(other)
        if parent is None or parent.type != "categorical":
            raise FieldError(f"{where}.when", f"expected a categorical parameter declared above, got {other!r}")
        for value in allowed if isinstance(allowed, list) else [allowed]:
            if value not in parent.choices:
                raise FieldError(f"{where}.when.{other}", f"expected one of {parent.choices}, got {value!r}")

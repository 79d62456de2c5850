"""Reading a study file: YAML, command-line overrides, schema validation, one-line errors.

Every error a user can make in a study file becomes a StudyFileError whose message is one line:
`<file>:<line>: <field path>: <what was expected>`. Nothing is created before a file validates.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hpsearch.config.schema import FieldError, StudyConfig, did_you_mean
from hpsearch.pruning.pruners import build_pruner
from hpsearch.study.prior import resolve_prior
from hpsearch.study.space import check_space, set_path
from objectives import METHODS


class StudyFileError(Exception):
    """A study file (or an override) is invalid; str(err) is the one-line message for the user."""


# Command-line options that are shorthands for a field of the study file.
SHORTHANDS = {"n_trials": "n_trials", "storage": "storage", "tracking_uri": "tracking.uri",
              "workdir": "workdir", "seed": "seed"}


def load_study(source: str | Path | dict | StudyConfig, sets: list[str] | dict | None = None, *,
               own_loop: bool = False, **shorthands: Any) -> tuple[StudyConfig, str | None]:
    """Validate a study file (a path, a dict or a StudyConfig) with overrides applied. `own_loop`:
    for hpsearch.optimize, whose objective may suggest every parameter (`search_space` may be empty).

    `sets` are "a.b.c=value" strings (value parsed as YAML) or a {path: value} dict; `shorthands`
    are the keys of SHORTHANDS. Returns the config and the study file's text (None for a dict).
    """
    text, lines, label = None, {}, "<config>"
    if isinstance(source, StudyConfig):
        raw = source.model_dump()
    elif isinstance(source, dict):
        raw = source
    else:
        label = str(source)
        text, raw, lines = _read_yaml(Path(source))
    raw = dict(raw)
    overrides = _parse_sets(sets)
    for key, value in shorthands.items():
        if key not in SHORTHANDS:
            raise TypeError(f"unknown override {key!r}; expected one of: {', '.join(SHORTHANDS)}")
        if value is not None:
            overrides[SHORTHANDS[key]] = value
    try:
        for path, value in overrides.items():
            set_path(raw, path, value)
        cfg = StudyConfig.model_validate(raw, context={"own_loop": own_loop})
        check_space(cfg)
        _check_pruner(cfg)
    except ValidationError as err:
        path, message = _describe(err.errors()[0], raw)
        raise StudyFileError(_locate(label, lines, overrides, path) + f"{path}: {message}") from None
    except FieldError as err:
        raise StudyFileError(_locate(label, lines, overrides, err.path) + f"{err.path}: {err.message}") from None
    return cfg, text



def _check_pruner(cfg: StudyConfig) -> None:
    """Build the pruner once, so that a bad `pruning.args` is a study-file error, not a failed run."""
    try:
        build_pruner(cfg.pruning.name, resolve_prior(cfg.pruning.args)[0])
    except ValueError as err:
        raise FieldError("pruning.args", str(err)) from None


def _read_yaml(path: Path) -> tuple[str, dict, dict[str, int]]:
    try:
        text = path.read_text()
    except OSError as err:
        raise StudyFileError(f"{path}: cannot read the study file ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
        lines = _line_numbers(yaml.compose(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise StudyFileError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path}: expected a mapping of study settings (name, data, model, ...), "
                             f"got {type(raw).__name__}")
    return text, raw, lines


def _line_numbers(node, prefix: str = "") -> dict[str, int]:
    """Map each dotted field path of a composed YAML document to its 1-based line."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}{key.value}"
            lines[path] = key.start_mark.line + 1
            lines.update(_line_numbers(value, path + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}{i}"] = item.start_mark.line + 1
            lines.update(_line_numbers(item, f"{prefix}{i}."))
    return lines


def _parse_sets(sets: list[str] | dict | None) -> dict[str, Any]:
    if isinstance(sets, dict):
        return dict(sets)
    parsed = {}
    for item in sets or []:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise StudyFileError(f"--set {item}: expected PATH=VALUE, for example training.epochs=5")
        try:
            parsed[path.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise StudyFileError(f"--set {item}: the value is not valid YAML") from None
    return parsed


def _locate(label: str, lines: dict[str, int], overrides: dict, path: str) -> str:
    for override in overrides:
        if path == override or path.startswith(override + ".") or override.startswith(path + "."):
            return f"{label}: (command-line override {override}) "
    while path and path not in lines:
        path = path.rpartition(".")[0]
    return f"{label}:{lines[path]}: " if path else f"{label}: "


def _describe(error: dict, raw: dict) -> tuple[str, str]:
    """Turn a pydantic error into (field path, what was expected)."""
    loc = [str(part) for part in error["loc"]]
    if loc[:1] == ["objective"] and len(loc) > 1 and loc[1] in METHODS:
        del loc[1]  # pydantic puts the union tag in the path; users never wrote it
    path, kind, msg = ".".join(loc), error["type"], error["msg"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1], raw)
        return path, "unknown key" + (f"{did_you_mean(loc[-1], known)}; expected one of: {', '.join(known)}"
                                      if known else "")
    if kind == "missing":
        return path, "required field is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        got = error["input"].get("method") if isinstance(error["input"], dict) else None
        return path + ".method", (f"unknown method {got!r}{did_you_mean(got, METHODS) if got else ''}; "
                                  f"expected one of: {', '.join(sorted(METHODS))}")
    if msg.startswith("Value error, "):
        return path, msg.removeprefix("Value error, ")
    expected = msg.removeprefix("Input should be ").removeprefix("input should be ")
    hint = ""
    if kind == "literal_error" and isinstance(error.get("input"), str):
        # pydantic lists the choices as "'sgd', 'adamw' or 'lars'"
        hint = did_you_mean(error["input"], re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", "")))
    return path, f"expected {expected}, got {error.get('input')!r}{hint}"


def _known_keys(loc: list[str], raw: dict) -> list[str]:
    """The keys allowed at `loc`, read from the schema (so the message lists what is valid)."""
    model: Any = StudyConfig
    for part in loc:
        if model is StudyConfig and part == "objective":
            method = (raw.get("objective") or {}).get("method")
            model = METHODS[method].Config if method in METHODS else None
        elif isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = model.model_fields[part].annotation
        elif typing.get_origin(model) is dict:
            model = typing.get_args(model)[1]
        else:
            return []
    if typing.get_origin(model) is typing.Union or type(model).__name__ == "UnionType":
        model = next((a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []

"""`pruning.args.prior`: the finished trials of an earlier study, or of a replay table, that seed
the calibrated pruner's calibration until this study's own finished trials take over
(hpsearch.pruning.calibrated: with n own finished trials, `prior_weight` - n of the prior's).

    pruning:
      name: calibrated
      args:
        prior: benchmarks/tables/cifar10_record.json.gz        # a table (hpsearch export NAME --table)
        # prior: {study: cifar10-record, storage: sqlite:///hpsearch-runs/optuna.db}   # or a study

The prior should have measured the same final metric on comparable data and budget: its finals
set the top-k bar until the study's own trials replace them.
"""

from __future__ import annotations

import optuna

from hpsearch.pruning.calibrated import CalibratedPruner, Finished
from hpsearch.tracking.urls import mask

PRIOR_ATTR = "calibration_prior"  # study user attr: where the prior came from, its size and weight


def resolve_prior(args: dict) -> tuple[dict, str | None]:
    """`pruning.args` with `prior` read into finished trials, and where they came from (None
    without a prior). ValueError (a one-line field error) when it cannot be read."""
    if "prior" not in args:
        return args, None
    from hpsearch.replay.command import load_table
    from hpsearch.replay.table import TableError

    args, spec = dict(args), args["prior"]
    if isinstance(spec, str):
        source, study, label = spec, None, spec
    elif isinstance(spec, dict) and set(spec) == {"study", "storage"}:
        source, study, label = str(spec["storage"]), str(spec["study"]), f"study {spec['study']!r} in {mask(str(spec['storage']))}"
    else:
        raise ValueError("prior: expected a replay table file, or {study: NAME, storage: URL}")
    try:
        table = load_table(source, study)
    except TableError as err:
        raise ValueError(f"prior: {err}") from None
    if table.direction != "maximize":
        raise ValueError(f"prior: {label} minimises its final metric; hpsearch studies maximise theirs")
    method_param = args.get("method_param", "objective.method")
    args["prior"] = [Finished(r.curves, r.final, r.params.get(method_param)) for r in table.trials if r.final is not None]
    return args, label


def prior_record(pruner: optuna.pruners.BasePruner, label: str | None) -> dict | None:
    """What the study keeps (PRIOR_ATTR) for `hpsearch report`: the prior's source, size and weight."""
    calibrated = pruner if isinstance(pruner, CalibratedPruner) else getattr(getattr(pruner, "thaw", None), "calibrated", None)
    if label is None or calibrated is None:
        return None
    return {"source": label, "trials": len(calibrated.prior), "weight": calibrated.prior_weight}


def prior_line(described: dict | None, own_finished: int) -> str | None:
    """Which calibration is in use, for `hpsearch report`."""
    if not described:
        return None
    used = min(described["trials"], max(0, described["weight"] - own_finished))
    if used == 0:
        return (f"calibration: this study's own {own_finished} finished trials (the prior, {described['source']}, "
                f"has been taken over)")
    return (f"calibration: {own_finished} finished trial(s) of this study + {used} of the prior's {described['trials']} "
            f"({described['source']}; it weighs in until {described['weight']} of this study's have finished)")

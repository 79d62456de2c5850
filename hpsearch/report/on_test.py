"""`hpsearch report NAME --test`: the best trials (by validation value) measured on the test split."""

from __future__ import annotations

import optuna


def test_report(study: optuna.Study, *, top: int | None = None, workdir: str | None = None) -> str:
    """Measure the best `top` trials (by validation value) on the test split, those not measured yet,
    from their kept checkpoints, and list validation next to test. Needs the study's data and
    checkpoints where the study kept them; logs to its MLflow run unless the tracking URI's password
    is not at hand."""
    from pathlib import Path

    from hpsearch.config.schema import StudyConfig
    from hpsearch.data import load_splits
    from hpsearch.report.sources import tracking_uri_of
    from hpsearch.study.on_test import RANDOM_INIT, chosen_trials, measure_on_test
    from hpsearch.study.session import checkpoint_root_of
    from hpsearch.study.stored_config import method_study_config
    from hpsearch.study.studyfile import StudyFileError
    from hpsearch.tracking.tracker import Tracker
    from hpsearch.training.pretrain import resolve_device

    stored = method_study_config(study, "nothing to measure on the test split")
    cfg = StudyConfig.model_validate({**stored, "storage": None, "workdir": workdir or stored["workdir"]})
    top = max(1, cfg.evaluation.test_top_k) if top is None else top
    root = Path(cfg.workdir).resolve()
    checkpoint_root = checkpoint_root_of(cfg, root)
    try:
        splits = load_splits(cfg.data)
    except (ValueError, OSError) as err:
        raise StudyFileError(f"study {cfg.name!r}: {err}") from None
    device = resolve_device(cfg.training.device)
    uri = tracking_uri_of(stored, workdir)
    tracker = None if "***" in uri else Tracker(uri, cfg.tracking.experiment or cfg.name, root / "mlartifacts")
    lines: list[str] = []
    results = measure_on_test(study, cfg, splits.to(device), device, checkpoint_root, top, tracker=tracker,
                              study_run_id=study.user_attrs.get("mlflow_study_run_id"), say=lines.append)
    table = [f"{'trial':>5}  {'validation':>10}  {'test':>8}"]
    for trial in chosen_trials(study, top):
        measured = results.get(str(trial.number))
        table.append(f"{trial.number:>5}  {trial.value:>10.4f}  {measured['value'] if measured else float('nan'):>8.4f}")
    if RANDOM_INIT in results:
        table.append(f"{'init':>5}  {study.user_attrs.get('random_init_linear_probe', float('nan')):>10.4f}  "
                     f"{results[RANDOM_INIT]['value']:>8.4f}")
    head = (f"study {study.study_name!r}: the best {top} trial(s) by validation value, measured on the test split "
            f"({len(splits.test_labels)} images; chosen on validation, never by test)")
    return "\n".join([head, *lines, *table]) + "\n"

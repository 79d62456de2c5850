"""`hpsearch report NAME`: a study's trials by state, its best trial, and how well each proxy predicted
the final metric so far (the calibration table of hpsearch.pruning.calibration, which the
`calibrated` pruner acts on and the study's MLflow parent run keeps as `calibration/` artifacts)."""

from __future__ import annotations

import optuna

from hpsearch.pruning.calibration import calibration_records, calibration_text


def study_report(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    counts = ", ".join(f"{n} {name.lower()}" for name, n in states.items() if n)
    head = f"study {study.study_name!r}: {counts or 'no trials'}"
    if states["COMPLETE"]:
        head += f"; best trial {study.best_trial.number}: {study.best_value:.4f}"  # in the study's direction
    return head + "\n\n" + calibration_text(calibration_records(trials))

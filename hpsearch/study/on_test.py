"""The test split, read only to report what a study chose: its best trials by the validation value
(`evaluation.test_top_k`) are measured on it when the study ends, and on demand with `hpsearch
report NAME --test`. No decision of the study (trial value, pruning, calibration, the best trial)
ever reads it.

A chosen trial is measured from its kept checkpoint (the encoder as it was when the trial ended),
so measuring never retrains; the random-init encoder is measured too, as the bar on the test split.
Results are kept with the study (hpsearch.config.study_attrs.test_results) and logged as `test_<metric>` on the
trial's MLflow run and, for the best trial, on the study's parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna
import torch

from hpsearch.config.schema import StudyConfig
from hpsearch.config.study_attrs import keep_test_results, test_results
from hpsearch.data import Splits
from hpsearch.evaluation import FINAL_METRIC_KEYS, Evaluator
from hpsearch.study.trained import checkpoint_dir, final_checkpoint, restored
from hpsearch.tracking.tracker import Tracker
from hpsearch.training.pretrain import Pretraining

RANDOM_INIT = "random_init"


def results_on_test(study: optuna.Study) -> dict[str, dict[str, float]]:
    """What has been measured on the test split so far, by trial number (as a string) or `random_init`:
    the final metric's overall accuracy (`value`) and its MLflow metrics (`metrics`, `test_`-prefixed)."""
    return test_results(study)


def chosen_trials(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The best `top_k` complete trials by their (validation) value, best first."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (-t.value, t.number))[:top_k]


def measure_on_test(study: optuna.Study, cfg: StudyConfig, splits: Splits, device: torch.device, checkpoint_root: Path,
                 top_k: int, *, tracker: Tracker | None = None, study_run_id: str | None = None,
                 say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Measure the final metric on the test split for the best `top_k` trials not measured yet (and
    the random-init encoder once); returns every test result of the study."""
    results = results_on_test(study)
    key = f"test_{FINAL_METRIC_KEYS[cfg.evaluation.final_metric]}"
    chosen = chosen_trials(study, top_k)
    if chosen and RANDOM_INIT not in results:
        untrained = Pretraining(cfg, splits, device, seed=cfg.seed)
        results[RANDOM_INIT] = _on_test(Evaluator.of(untrained), untrained)
    for trial in chosen:
        if str(trial.number) in results:
            continue
        state = final_checkpoint(cfg, checkpoint_root, trial)
        if state is None:
            say(f"  trial {trial.number}: no final checkpoint under {checkpoint_dir(checkpoint_root, trial)}; "
                "not measured on the test split")
            continue
        session = restored(cfg, splits, device, trial, state)
        results[str(trial.number)] = measured = _on_test(Evaluator.of(session), session)
        if tracker is not None and "mlflow_run_id" in trial.user_attrs:
            tracker.log_metrics(trial.user_attrs["mlflow_run_id"], measured["metrics"], step=cfg.training.epochs)
        say(f"  trial {trial.number}: test {measured['value']:.4f} (validation {trial.value:.4f})")
    keep_test_results(study, results)
    if tracker is not None and study_run_id is not None and chosen and str(chosen[0].number) in results:
        best = results[str(chosen[0].number)]["metrics"]
        parent = {key: best[key], "test_worst_class_accuracy": best["test_worst_class_accuracy"]}
        if RANDOM_INIT in results:
            parent[f"test_random_init_{key.removeprefix('test_')}"] = results[RANDOM_INIT]["value"]
        tracker.log_metrics(study_run_id, parent, step=chosen[0].number)
    return results


def _on_test(evaluator: Evaluator, session: Pretraining) -> dict:
    """The final metric of the session's encoder on the test split: its accuracy and its
    `test_`-prefixed MLflow metrics."""
    final = evaluator.final_metric(session.method.backbone, "test")
    return {"value": final.accuracy, "metrics": {f"test_{name}": value for name, value in final.metrics().items()}}

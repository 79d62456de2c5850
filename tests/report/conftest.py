"""One real tiny study for the report tests, run once: four trials, one of them pruned by design."""

from pathlib import Path

import optuna
import pytest

EPOCHS = 3


@pytest.fixture(scope="module")
def reported_study(tmp_path_factory) -> tuple[optuna.Study, Path]:
    import hpsearch
    from tests.helpers import tiny_study

    # Four queued trials so that the states follow from the design, not from noise (as in
    # tests/pruning/test_calibrated.py): a width-1 encoder reads ~0.45 kNN after one epoch where
    # width 8 reads ~0.75. The median pruner judges from 2 complete trials on: trials 0-2 complete,
    # trial 3 (narrow) is below the median at epoch 1 and pruned there. Heuristics off: only the
    # pruner decides. Temperature is the same in all four: a hyperparameter that did not vary.
    workdir = tmp_path_factory.mktemp("report") / "runs"
    cfg = tiny_study(workdir, n_trials=4, training={"epochs": EPOCHS, "batch_size": 128},
                     pruning={"name": "median", "args": {"n_startup_trials": 2}, "warmup_epochs": 1,
                              "heuristics": {"collapse": {"enabled": False}, "no_learning": {"enabled": False}}})
    cfg["search_space"]["model.width"] = {"type": "categorical", "choices": [1, 8]}
    workdir.mkdir()
    queued = optuna.create_study(study_name=cfg["name"], storage=f"sqlite:///{workdir / 'optuna.db'}",
                                 direction="maximize")  # the run continues it, taking the queued trials first
    for lr, width in ((0.2, 8), (0.15, 1), (0.3, 8), (0.1, 1)):
        queued.enqueue_trial({"training.optimizer.lr": lr, "objective.temperature": 0.2, "model.width": width})
    study = hpsearch.run_study(cfg)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    return study, workdir

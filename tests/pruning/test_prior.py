"""`pruning.args.prior`: a replay table or an earlier study seeds the calibration of a new study."""

from pathlib import Path

import optuna
import pytest

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.study.prior import prior_line, resolve_prior
from tests.pruning.test_calibrated import first_prune, finish, saturating

TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "tables" / "cifar10_record.json.gz"


def test_a_table_read_as_prior_holds_its_finished_trials():
    from hpsearch.pruning import build_pruner
    from hpsearch.study.prior import prior_record

    args, source = resolve_prior({"prior": str(TABLE), "min_trials": 5})
    assert source == str(TABLE) and len(args["prior"]) >= 100
    assert all("knn_accuracy" in p.curves and 0 < p.final < 1 for p in args["prior"])
    for pause in (True, False):  # the pausing pruner's calibration, or the kill-only pruner itself
        described = prior_record(build_pruner("calibrated", {**args, "pause": pause}), source)
        assert described == {"source": str(TABLE), "trials": len(args["prior"]), "weight": 15}  # 3 x min_trials


def test_a_prior_decides_from_the_first_trial_where_the_cold_start_could_not():
    """A fresh study has no finished trial: without a prior the pruner cannot judge anything; with
    the CIFAR-10 recording as prior, a trial whose kNN after 3 epochs is far below every recorded
    winner's is stopped by the calibrated rule, and a strong one goes on."""
    args, _ = resolve_prior({"prior": str(TABLE)})
    weak = lambda step: 0.12 + 0.001 * step  # barely above chance on CIFAR-10 (0.10)
    strong = lambda step: 0.35 + 0.01 * min(step, 9)  # the recording's best read 0.33-0.35 at epoch 1, ~0.43 at 9
    cold = optuna.create_study(direction="maximize", pruner=CalibratedPruner(seed=0))
    assert first_prune(cold, weak) is None
    warm = optuna.create_study(direction="maximize", pruner=CalibratedPruner(prior=args["prior"], seed=0))
    assert first_prune(warm, strong) is None
    assert first_prune(warm, weak) is not None
    reason = next(iter(warm.pruner.reasons.values()))
    assert reason.startswith("calibrated pruner") and "cold start" not in reason


def test_the_study_own_trials_take_over_as_they_finish():
    from hpsearch.study.prior import prior_record

    args, source = resolve_prior({"prior": str(TABLE), "prior_weight": 6})
    pruner = CalibratedPruner(prior=args["prior"], prior_weight=6, seed=0)
    described = prior_record(pruner, source)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    counts = []
    for level in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        counts.append(pruner.finished_count(study))
        finish(study, saturating(level))
    assert counts == [6, 6, 6, 6, 6, 6, 6]  # 6 - n of the prior beside n own ...
    assert pruner.prior_in_use(0) == 6 and pruner.prior_in_use(4) == 2 and pruner.prior_in_use(7) == 0  # ... then none
    assert "+ 2 of the prior's" in prior_line(described, 4)
    assert "taken over" in prior_line(described, 7)


@pytest.mark.parametrize("prior, message", [
    ("no/such/table.json.gz", "prior: no/such/table.json.gz: cannot read a replay table"),
    ({"study": "x"}, "prior: expected a replay table file, or {study: NAME, storage: URL}"),
])
def test_a_bad_prior_is_a_one_line_field_error(tmp_path, prior, message):
    import hpsearch
    from hpsearch.study.studyfile import StudyFileError
    from tests.helpers import tiny_study

    cfg = tiny_study(tmp_path / "runs", pruning={"name": "calibrated", "args": {"prior": prior}})
    with pytest.raises(StudyFileError) as err:
        hpsearch.run_study(cfg)
    assert "pruning.args" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing created

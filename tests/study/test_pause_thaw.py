"""Reversible pruning in a real study: `pruning: {name: calibrated}` pauses trials with their
checkpoint and thaws them later (hpsearch.study.pause)."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.pruning.rungs import PAUSED_ATTR, THAW_ATTR, evicted
from hpsearch.study.console import Console
from hpsearch.study.pause import evict_over_budget, waiting_paused
from hpsearch.study.retry import configuration_number, finished_trials
from tests.helpers import tiny_study

WIDE, NARROW = 8, 1  # a width-1 encoder reads ~0.45 kNN after one epoch, width 8 ~0.75: a clear order
PARAMS = {"training.optimizer.lr": 0.2, "objective.temperature": 0.2}
QUIET = {"collapse": {"enabled": False}, "no_learning": {"enabled": False}}  # only the pruner decides


def queued_study(workdir: Path, widths: tuple[int, ...], pruning: dict, **changes) -> dict:
    """A tiny study of 3 epochs whose trials take `widths` in order (queued before `hpsearch run`)."""
    cfg = tiny_study(workdir, n_trials=len(widths), training={"epochs": 3, "batch_size": 128}, pruning=pruning, **changes)
    cfg["search_space"]["model.width"] = {"type": "categorical", "choices": [NARROW, WIDE]}
    workdir.mkdir(parents=True)
    queue = optuna.create_study(study_name=cfg["name"], storage=f"sqlite:///{workdir / 'optuna.db'}", direction="maximize")
    for width in widths:
        queue.enqueue_trial({**PARAMS, "model.width": width})
    return cfg


PAUSING = {"name": "calibrated", "args": {"reduction_factor": 2, "min_trials": 3}, "warmup_epochs": 1, "heuristics": QUIET}


@pytest.fixture(scope="module")
def paused_and_thawed(tmp_path_factory):
    """A study of 3 configurations whose ASHA rungs (eta 2) pause each one at least once; with no
    new configuration left, the most promising paused ones are thawed until 3 completed."""
    import hpsearch

    workdir = tmp_path_factory.mktemp("pause") / "runs"
    out = io.StringIO()
    study = hpsearch.run_study(queued_study(workdir, (WIDE, NARROW, WIDE), PAUSING), console=Console(3, 3, out))
    return workdir, study, out.getvalue()


def test_a_paused_trial_is_thawed_from_its_checkpoint_and_ends_with_its_true_state(paused_and_thawed):
    _, study, printed = paused_and_thawed
    trials = study.trials
    paused = [t for t in trials if PAUSED_ATTR in t.user_attrs]
    assert paused and all(t.state == TrialState.PRUNED for t in paused)  # Optuna's samplers see a pruned trial
    thawed = [t for t in trials if THAW_ATTR in t.user_attrs]
    assert thawed, [(t.number, t.state.name, t.user_attrs) for t in trials]
    for thaw in thawed:
        before = study.trials[thaw.user_attrs[THAW_ATTR]]
        assert thaw.params == before.params  # the same configuration ...
        assert thaw.user_attrs["checkpoint_key"] == before.user_attrs["checkpoint_key"]  # ... from its checkpoint
        assert thaw.user_attrs["seed"] == before.user_attrs["seed"]
        assert {s: v for s, v in thaw.intermediate_values.items() if s <= before.user_attrs[PAUSED_ATTR]} == \
            before.intermediate_values  # its reported curve kept
    # One lineage is counted once: the study holds its 3 configurations, each trained to its end here.
    finished = finished_trials(study)
    assert sorted(configuration_number(t) for t in finished) == [0, 1, 2]
    assert [t.state for t in finished] == [TrialState.COMPLETE] * 3
    assert all(THAW_ATTR in t.user_attrs for t in finished)
    assert "PAUSED" in printed and "thawed, paused at epoch" in printed and "COMPLETE (thawed)" in printed


def test_hpsearch_report_shows_the_thawed_lineages(paused_and_thawed):
    from tests.helpers import run_cli

    workdir, study, _ = paused_and_thawed
    report = run_cli("report", "tiny", "--workdir", str(workdir), cwd=workdir)
    assert report.returncode == 0, report.stderr
    leaderboard = report.stdout.split("leaderboard")[1]
    assert leaderboard.count("COMPLETE (thawed)") == 3 and "thaws trial" in leaderboard


def test_a_thawed_trial_continues_bit_for_bit(paused_and_thawed, tmp_path):
    """Paused at epoch 1 or 2 and continued: the same final value as the configuration trained
    without a stop (same seed, CPU)."""
    import hpsearch

    _, study, _ = paused_and_thawed
    reference = hpsearch.run_study(queued_study(tmp_path / "runs", (WIDE,), {"name": "none"}))
    first = next(t for t in finished_trials(study) if configuration_number(t) == 0)
    assert first.value == reference.trials[0].value
    assert first.intermediate_values == reference.trials[0].intermediate_values


def test_a_thawed_trial_holds_each_epoch_once_in_one_mlflow_run(paused_and_thawed, mlflow_client):
    workdir, study, _ = paused_and_thawed
    client = mlflow_client(workdir)
    for trial in finished_trials(study):
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert "hpsearch.paused_at" not in run.data.tags and "hpsearch.reason" not in run.data.tags
        assert run.data.tags["hpsearch.thaw_of"] == str(trial.user_attrs[THAW_ATTR])
        for metric in ("ssl_loss", "knn_accuracy"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2, 3]
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`hpsearch.trial` != ''")
    assert len(runs) == 3  # one run per configuration, however many times it was paused


def test_a_pause_is_tagged_on_its_run_while_it_waits(tmp_path, mlflow_client):
    """Over the budget (0 GB here) a paused trial loses its checkpoint and is pruned for good, saying why."""
    import hpsearch

    workdir = tmp_path / "runs"
    study = hpsearch.run_study(queued_study(workdir, (WIDE, NARROW), PAUSING, recovery={"paused_checkpoints_gb": 0}))
    paused = [t for t in study.trials if PAUSED_ATTR in t.user_attrs]
    assert paused
    assert evicted(study) == {t.number for t in paused} and not waiting_paused(study)
    assert not any(THAW_ATTR in t.user_attrs for t in study.trials)  # nothing left to thaw from
    client = mlflow_client(workdir)
    for trial in paused:
        assert not (workdir / "checkpoints" / "tiny" / trial.user_attrs["checkpoint_key"]).exists()
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.state"] == "PRUNED" and "pruned for good" in run.data.tags["hpsearch.reason"]
        assert "hpsearch.paused_at" not in run.data.tags


def test_the_disk_budget_evicts_the_least_promising_paused_trial_first(tmp_path):
    """Three paused trials of 1 MB each under a 2.5 MB budget: the one paused shallowest and lowest goes."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    root = tmp_path / "checkpoints"
    for number, (at, value) in enumerate([(2, 0.6), (1, 0.7), (1, 0.5)]):
        key = f"trial-{number}"
        study.add_trial(optuna.create_trial(
            state=TrialState.PRUNED, value=value, params={"x": float(number)},
            distributions={"x": optuna.distributions.FloatDistribution(0, 9)},
            intermediate_values={step: value for step in range(1, at + 1)},
            user_attrs={PAUSED_ATTR: at, "checkpoint_key": key}))
        (root / key).mkdir(parents=True)
        (root / key / "epoch.pt").write_bytes(b"\0" * 1_000_000)
    said = []
    assert evict_over_budget(study, root, 0.0025, tracker=None, say=said.append) == [2]
    assert not (root / "trial-2").exists() and (root / "trial-0").exists() and (root / "trial-1").exists()
    assert "least promising" in said[0]
    assert evict_over_budget(study, root, 0.0015, tracker=None, say=said.append) == [1]  # then the shallower of the two
    assert [t.number for t in waiting_paused(study)] == [0]


def test_a_study_warm_started_from_another_says_so_in_its_report(paused_and_thawed, tmp_path):
    """`pruning.args.prior` names the finished study above: its 3 complete trials seed this one's
    calibration, and `hpsearch report` says which calibration is in use."""
    import hpsearch
    from hpsearch.study.prior import PRIOR_ATTR
    from tests.helpers import run_cli

    earlier, _, _ = paused_and_thawed
    prior = {"study": "tiny", "storage": f"sqlite:///{earlier / 'optuna.db'}"}
    cfg = tiny_study(tmp_path / "runs", name="warm", n_trials=1,
                     pruning={**PAUSING, "args": {**PAUSING["args"], "prior": prior}})
    study = hpsearch.run_study(cfg)
    assert study.user_attrs[PRIOR_ATTR] == {"source": f"study 'tiny' in {prior['storage']}", "trials": 3, "weight": 9}
    assert study.pruner.thaw.calibrated.finished_count(study) == 1 + 3  # its own trial and the prior's three
    report = run_cli("report", "warm", "--workdir", str(tmp_path / "runs"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "calibration: 1 finished trial(s) of this study + 3 of the prior's 3 (study 'tiny'" in report.stdout


def test_two_workers_thaw_each_paused_trial_once(tmp_path):
    """`hpsearch run --workers 2`: both workers pause and thaw on one study; a thaw is claimed, so no
    paused trial is continued twice, and the study holds exactly its configurations."""
    import yaml

    from tests.helpers import run_cli

    cfg = tiny_study(tmp_path / "runs", n_trials=6, training={"epochs": 3, "batch_size": 128}, pruning=PAUSING)
    cfg["search_space"]["model.width"] = {"type": "categorical", "choices": [NARROW, 4, WIDE]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("run", "study.yaml", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    thaws = [t.user_attrs[THAW_ATTR] for t in study.trials if THAW_ATTR in t.user_attrs]
    assert thaws and len(thaws) == len(set(thaws))
    finished = finished_trials(study)
    numbers = [configuration_number(t) for t in finished]
    assert len(numbers) == len(set(numbers)) == 6
    assert sum(t.state == TrialState.COMPLETE for t in finished) >= 3  # the top 3 trained to their end
    assert "[w1]" in result.stdout and "[w2]" in result.stdout and "thawed, paused at epoch" in result.stdout

"""`hpsearch export NAME --out DIR` on a real study, as users run it: the exported encoder gives the
trial's features bit for bit, without the data; a trial with nothing to export is one line; and
`--table` still writes what `hpsearch replay` reads."""

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import hpsearch
from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.evaluation.features import extract_features
from hpsearch.study.export import pick_trial
from hpsearch.study.space import with_values
from hpsearch.study.stored_config import stored_config
from hpsearch.study.studyfile import StudyFileError
from hpsearch.training import checkpoint
from hpsearch.training.encoder_file import STATE_FILE, EncoderFileError
from hpsearch.training.pretrain import Pretraining
from tests.helpers import run_cli, tiny_study


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished 2-trial study keeping only its best checkpoint (keep_best 1), and what export wrote."""
    home = tmp_path_factory.mktemp("export")
    study = hpsearch.run_study(tiny_study(home / "runs", **{"recovery.keep_best": 1}))
    other = next(t.number for t in study.trials if t.number != study.best_trial.number)
    runs = {
        "best": run_cli("export", "tiny", "--workdir", "runs", "--out", "encoder", cwd=home),
        "pruned-away": run_cli("export", "tiny", "--workdir", "runs", "--out", "other", "--trial", str(other), cwd=home),
        "table": run_cli("export", "tiny", "--workdir", "runs", "--table", "tiny.json.gz", cwd=home),
    }
    runs["replay"] = run_cli("replay", "tiny.json.gz", "--seeds", "2", "--json", cwd=home)
    return home, study, other, runs


def _rebuilt_backbone(study, trial):
    """The trial's backbone rebuilt from its checkpoint, as the study built it, with the study's splits."""
    cfg = StudyConfig.model_validate({**stored_config(study), "storage": None})
    state = checkpoint.load_latest(Path(cfg.workdir) / "checkpoints" / "tiny" / trial.user_attrs["checkpoint_key"])
    session = Pretraining(with_values(cfg, trial.params), load_splits(cfg.data), torch.device("cpu"),
                          trial.user_attrs["seed"])
    session.load_state_dict(state["training"])
    return session.method.backbone, session.splits


def test_exported_encoder_gives_the_trials_features_bit_for_bit(exported):
    home, study, _, runs = exported
    result = runs["best"]
    assert result.returncode == 0, result.stderr
    assert f"trial {study.best_trial.number} of study 'tiny'" in result.stdout
    encoder = hpsearch.load_encoder(home / "encoder")
    assert isinstance(encoder, torch.nn.Module) and not any(m.training for m in encoder.modules())
    backbone, splits = _rebuilt_backbone(study, study.best_trial)
    config = yaml.safe_load((home / "encoder" / "encoder.yaml").read_text())
    mean, std = (torch.tensor(config["normalize"][k]) for k in ("mean", "std"))
    images = splits.val_images[:64]
    # The normalisation kept in encoder.yaml is the study's, so features match from the raw images on.
    assert torch.equal(extract_features(encoder, images, mean, std),
                       extract_features(backbone, images, splits.mean, splits.std))
    assert config["source"]["trial"] == study.best_trial.number and config["source"]["value"] == study.best_value
    assert config["source"]["params"] == study.best_trial.params and config["in_channels"] == 1


def test_a_trial_without_a_checkpoint_is_one_line_saying_how_to_keep_more(exported):
    home, _, other, runs = exported
    result = runs["pruned-away"]
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"trial {other}: no final checkpoint" in lines[0] and "recovery.keep_best (1)" in lines[0]
    assert not (home / "other").exists()


def test_a_truncated_state_dict_is_one_line_naming_it(exported, tmp_path):
    home, _, _, _ = exported
    copy = shutil.copytree(home / "encoder", tmp_path / "encoder")
    data = (copy / STATE_FILE).read_bytes()
    (copy / STATE_FILE).write_bytes(data[:len(data) // 3])
    with pytest.raises(EncoderFileError) as caught:
        hpsearch.load_encoder(copy)
    assert len(str(caught.value).splitlines()) == 1 and str(copy / STATE_FILE) in str(caught.value)


def test_table_export_is_what_replay_reads(exported):
    home, _, _, runs = exported
    assert runs["table"].returncode == 0, runs["table"].stderr
    assert "tiny.json.gz: 2 configurations" in runs["table"].stdout
    assert runs["replay"].returncode == 0, runs["replay"].stderr
    assert json.loads(runs["replay"].stdout)["configurations"] == 2


def _study(direction="maximize"):
    """A real in-memory study: trials 0 (0.5), 1 (0.9), 2 pruned, 3 failed and continued by 4 (0.7)."""
    study = optuna.create_study(direction=direction)
    lr = {"lr": FloatDistribution(0.01, 1.0)}
    for value, state, attrs in [(0.5, TrialState.COMPLETE, {}), (0.9, TrialState.COMPLETE, {}),
                                (None, TrialState.PRUNED, {"reason": "calibrated pruner: hopeless"}),
                                (None, TrialState.FAIL, {"checkpoint_key": "trial-3", "interrupted": True}),
                                (0.7, TrialState.COMPLETE, {"checkpoint_key": "trial-3", "retry_of": 3})]:
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1}, distributions=lr, user_attrs=attrs))
    return study


@pytest.mark.parametrize("direction, which, number", [
    ("maximize", "best", 1), ("minimize", "best", 0),  # best in the study's direction
    ("maximize", "0", 0),
    ("maximize", "3", 4), ("maximize", "4", 4),  # a continued configuration: by its first number or the retry's
])
def test_pick_trial_names_a_complete_trial(direction, which, number):
    assert pick_trial(_study(direction), which).number == number


@pytest.mark.parametrize("which, says", [
    ("2", "trial 2 is PRUNED (calibrated pruner: hopeless): only complete trials"),
    ("9", "has no trial 9 (trials 0 to 4)"),
    ("last", "--trial: expected best or a trial number, got 'last'"),
])
def test_pick_trial_refuses_in_one_line(which, says):
    with pytest.raises(StudyFileError) as caught:
        pick_trial(_study(), which)
    assert says in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_best_of_a_study_without_complete_trials_is_one_line():
    with pytest.raises(StudyFileError, match="has no complete trial to export yet"):
        pick_trial(optuna.create_study(), "best")

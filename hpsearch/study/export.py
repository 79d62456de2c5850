"""`hpsearch export NAME --out DIR`: a study's trained encoder, for use outside hpsearch
(hpsearch.training.encoder_file holds the directory's format and `load_encoder`).

Which trial: `best`, the best complete trial by value in the study's direction, or a number: the
configuration number the console and MLflow show (`trial-<N>`), or the Optuna number of the trial
that continued it. Only complete trials are exported: a pruned or failed trial's encoder stopped
before the end of its training, was never given a value, and its checkpoint is removed when it
finishes (runner._prune_checkpoints), so exporting one would be an encoder nobody measured.

The encoder is the trial's kept final checkpoint, rebuilt as the study built it
(hpsearch.study.trained), on the CPU. The study's data is read once (as `hpsearch report --test`
does) for what the checkpoint does not hold: the input channels and the pixel statistics the
trial's features were normalised with; loading the exported encoder needs no data.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.study.retry import configuration_number
from hpsearch.study.session import checkpoint_root_of
from hpsearch.study.stored_config import method_study_config
from hpsearch.study.studyfile import StudyFileError
from hpsearch.study.trained import checkpoint_dir, final_checkpoint, restored
from hpsearch.training.encoder_file import save_encoder


def pick_trial(study: optuna.Study, which: str | int = "best") -> FrozenTrial:
    """The complete trial `which` names (`best` or a trial number); StudyFileError otherwise."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if str(which) == "best":
        if not complete:
            raise StudyFileError(f"study {study.study_name!r} has no complete trial to export yet")
        return study.best_trial
    try:
        number = int(which)
    except ValueError:
        raise StudyFileError(f"--trial: expected best or a trial number, got {which!r}") from None
    # A configuration continued by a retry is known by its first number; its Optuna number works too.
    named = [t for t in trials if t.number == number or configuration_number(t) == number]
    if not named:
        raise StudyFileError(f"study {study.study_name!r} has no trial {number} (trials 0 to {len(trials) - 1})")
    done = [t for t in named if t.state == TrialState.COMPLETE]
    if not done:
        last = max(named, key=lambda t: t.number)
        why = f" ({last.user_attrs['reason']})" if "reason" in last.user_attrs else ""
        raise StudyFileError(f"trial {number} is {last.state.name}{why}: only complete trials have a final "
                             "encoder to export (`--trial best` or the number of a complete one)")
    return done[0]


def export_encoder(study: optuna.Study, out: str | Path, *, which: str | int = "best",
                   workdir: str | None = None) -> str:
    """Write trial `which`'s trained backbone to `out` (see hpsearch.training.encoder_file); returns
    the line that says what was written. `workdir` overrides the stored one (where the checkpoints are)."""
    trial = pick_trial(study, which)
    cfg = _config(study, workdir)
    number = configuration_number(trial)
    root = checkpoint_root_of(cfg, Path(cfg.workdir).resolve())
    state = final_checkpoint(cfg, root, trial)
    if state is None:
        raise StudyFileError(
            f"trial {number}: no final checkpoint under {checkpoint_dir(root, trial)}; a finished trial keeps its "
            f"checkpoint only while among the best recovery.keep_best ({cfg.recovery.keep_best}) trials: raise it "
            "(`hpsearch run STUDY_FILE --set recovery.keep_best=K`) to keep more of the trials still to run")
    try:
        splits = load_splits(cfg.data)
    except (ValueError, OSError) as err:
        raise StudyFileError(f"study {cfg.name!r}: {err}") from None
    session = restored(cfg, splits, torch.device("cpu"), trial, state)
    trained = session.cfg
    source = {"study": study.study_name, "trial": number, "optuna_trial": trial.number, "value": trial.value,
              "direction": study.direction.name.lower(), "final_metric": trained.evaluation.final_metric,
              "method": trained.objective.method, "epochs": session.epoch, "seed": trial.user_attrs["seed"],
              "params": trial.params, "mlflow_run_id": trial.user_attrs.get("mlflow_run_id")}
    backbone = session.method.backbone
    save_encoder(out, backbone, model=trained.model, in_channels=splits.channels, image_size=trained.data.image_size,
                 mean=splits.mean, std=splits.std, source=source)
    return (f"{out}: trial {number} of study {study.study_name!r} ({trained.evaluation.final_metric} "
            f"{trial.value:.4f}), a {trained.model.backbone} with {backbone.feature_dim} features; "
            f"load it with hpsearch.load_encoder({str(out)!r})")


def _config(study: optuna.Study, workdir: str | None) -> StudyConfig:
    stored = method_study_config(study, "no encoder to export")
    # On the CPU, where results are bit-exact for a seed: no torch.compile (CUDA only; a warning otherwise).
    training = {**stored["training"], "compile": False}
    return StudyConfig.model_validate({**stored, "training": training, "storage": None,
                                       "workdir": workdir or stored["workdir"]})

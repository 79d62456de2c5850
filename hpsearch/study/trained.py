"""A finished trial's trained model, rebuilt from its kept checkpoint: what measuring a chosen trial
on the test split (`on_test`) and exporting its encoder (`export`) both start from.

Finished trials keep their checkpoints only when among the best `recovery.keep_best`
(runner._prune_checkpoints), so either may find none.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import torch

from hpsearch.config.schema import StudyConfig
from hpsearch.data import Splits
from hpsearch.study.space import with_values
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Pretraining


def checkpoint_dir(checkpoint_root: Path, trial: optuna.trial.FrozenTrial) -> Path:
    """Where the trial's configuration keeps its checkpoints (a retry shares its first trial's)."""
    return checkpoint_root / trial.user_attrs.get("checkpoint_key", f"trial-{trial.number}")


def final_checkpoint(cfg: StudyConfig, checkpoint_root: Path, trial: optuna.trial.FrozenTrial) -> dict | None:
    """The trial's checkpoint from the end of its training, or None when it kept none (or only an
    earlier one). Read before any data is loaded: it is the cheap check."""
    state = checkpoint.load_latest(checkpoint_dir(checkpoint_root, trial), map_location="cpu")
    # The trial's own epochs: training.epochs may be searched.
    if state is None or state["training"]["epoch"] != with_values(cfg, trial.params).training.epochs:
        return None
    return state


def restored(cfg: StudyConfig, splits: Splits, device: torch.device, trial: optuna.trial.FrozenTrial,
             state: dict) -> Pretraining:
    """The trial's session (its sampled config, its seed) with the weights of `state`."""
    session = Pretraining(with_values(cfg, trial.params), splits, device, trial.user_attrs["seed"])
    session.load_state_dict(state["training"])
    return session

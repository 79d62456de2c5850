"""One Optuna trial: sample, pretrain with the proxy reported each evaluation, then the delayed metric."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

import optuna
import torch

from hpsearch.data import Splits
from hpsearch.pretrain import Diverged, EpochStats, Pretraining
from hpsearch.schema import StudyConfig
from hpsearch.space import sample, with_values
from hpsearch.tracking import Tracker, flatten

# Config fields that are not hyperparameters (and may carry credentials): never logged as params.
NOT_PARAMS = ("name", "n_trials", "workdir", "storage", "search_space", "tracking")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Each trial trains with its own seed, derived so that the same study seed replays the same trials."""
    return study_seed * 1_000_003 + trial_number


def trial_params(cfg: StudyConfig) -> dict:
    """The trial's full config as flat dotted params (sampled values included), for MLflow."""
    tree = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_PARAMS}
    return flatten(tree)


@dataclass
class TrialContext:
    """What every trial of a study shares."""

    cfg: StudyConfig
    splits: Splits
    device: torch.device
    tracker: Tracker
    study_run_id: str
    on_epoch: Callable[[int, EpochStats, float | None], None]


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """The Optuna objective. Ends the trial's MLflow run with the state Optuna will record."""
    values = sample(trial, ctx.cfg.search_space)
    cfg = with_values(ctx.cfg, values)
    run = ctx.tracker.trial_run(ctx.study_run_id, trial.number, trial_params(cfg), searched=list(values))
    trial.set_user_attr("mlflow_run_id", run.run_id)
    try:
        value = _train_and_evaluate(trial, cfg, ctx, run)
    except optuna.TrialPruned as pruned:
        run.finish("PRUNED", reason=str(pruned), pruned_epoch=trial.user_attrs.get("epochs_trained"))
        raise
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        trial.set_user_attr("reason", reason)
        ctx.tracker.log_text(run.run_id, traceback.format_exc(), "traceback.txt")
        run.finish("FAIL", reason=reason)
        raise
    except BaseException:  # Ctrl-C or SystemExit: the run did not finish on its own
        run.finish("FAIL", reason="interrupted")
        raise
    run.finish("COMPLETE")
    return value


def _train_and_evaluate(trial: optuna.Trial, cfg: StudyConfig, ctx: TrialContext, run) -> float:
    session = Pretraining(cfg, ctx.splits, ctx.device, trial_seed(cfg.seed, trial.number))
    epochs, every = cfg.training.epochs, cfg.evaluation.eval_every
    for epoch in range(1, epochs + 1):
        try:
            stats = session.train_epoch()
        except Diverged as err:
            _stop(trial, epoch, f"diverged: {err}")
        trial.set_user_attr("epochs_trained", epoch)
        metrics = {"ssl_loss": stats.ssl_loss, "lr": stats.lr, "epoch_time_s": stats.epoch_time}
        knn = None
        if epoch % every == 0 or epoch == epochs:
            knn = session.knn_proxy()
            metrics["knn_accuracy"] = knn
            trial.report(knn, epoch)
        run.log_metrics(metrics, step=epoch)
        ctx.on_epoch(trial.number, stats, knn)
        if knn is not None and epoch < epochs and epoch >= cfg.pruning.warmup_epochs and trial.should_prune():
            _stop(trial, epoch, f"{cfg.pruning.name} pruner: kNN {knn:.4f} at epoch {epoch}")
    accuracy = session.linear_probe()
    run.log_metrics({"linear_probe_accuracy": accuracy}, step=epochs)
    return accuracy


def _stop(trial: optuna.Trial, epoch: int, reason: str):
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("epochs_trained", epoch)
    raise optuna.TrialPruned(reason)

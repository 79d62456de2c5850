"""One Optuna trial: sample, pretrain with the proxy reported each evaluation, then the delayed metric.

A trial that is a retry (its worker died or was interrupted) continues from the last checkpoint
of the trial it replaces and appends to the same MLflow run, so each epoch is recorded once.
"""

from __future__ import annotations

import gc
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch

from hpsearch.config.schema import StudyConfig
from hpsearch.data import Splits
from hpsearch.evaluation import Evaluator
from hpsearch.config.study_attrs import keep_proxy_history
from hpsearch.pruning.heuristics import first_reason, rules_for
from hpsearch.pruning.pruners import explain
from hpsearch.pruning.rungs import PAUSED_ATTR, THAW_ATTR
from hpsearch.study.ddp_trial import Solo, Team, open_team
from hpsearch.study.interrupt import Interrupted, StopRequest
from hpsearch.study.owner import OWNER_ATTR, this_worker
from hpsearch.study.space import sample, with_values
from hpsearch.tracking.outage import TrackingUnavailable
from hpsearch.tracking.tracker import Tracker, TrialRun, flatten
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Diverged, EpochStats, Pretraining
from objectives import METHODS

# Config fields that are not hyperparameters (and may carry credentials): never logged as params.
NOT_PARAMS = ("name", "n_trials", "workdir", "storage", "search_space", "tracking", "recovery")


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
    checkpoint_root: Path
    stop: StopRequest
    on_epoch: Callable[[int, int, dict[str, float]], None]
    say: Callable[[str], None]
    random_init_knn: float | None = None


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """The Optuna objective of hpsearch's method library."""
    trial.set_user_attr(OWNER_ATTR, this_worker())  # a process that dies here is known stale at once
    values = sample(trial, ctx.cfg.search_space)
    cfg = with_values(ctx.cfg, values)
    # Each sampled value is a param of its own, named as in the search space (`augment.crop_scale.0`),
    # besides the flattened config, so that MLflow's parallel coordinates get a numeric axis.
    run = open_run(trial, ctx.tracker, ctx.study_run_id, cfg.seed, {**trial_params(cfg), **values}, list(values))
    return with_outcome(trial, run, lambda: _train_and_evaluate(trial, cfg, ctx, run))


def with_outcome(trial: optuna.Trial, run: TrialRun, train: Callable[[], float]) -> float:
    """Run `train` and end the trial's MLflow run with the state Optuna will record (and why).

    MLflow away too long, while training or while ending the run (a trial can finish its last
    epochs during an outage, its metrics queued): nothing more can be written, and the trial
    continues on the next run from its checkpoint, recording what MLflow missed."""
    try:
        return _train_then_end_run(trial, run, train)
    except TrackingUnavailable:
        trial.set_user_attr("interrupted", True)
        raise


def _train_then_end_run(trial: optuna.Trial, run: TrialRun, train: Callable[[], float]) -> float:
    try:
        value = train()
    except optuna.TrialPruned as pruned:
        run.finish("PRUNED", reason=str(pruned), pruned_epoch=trial.user_attrs.get("epochs_trained"),
                   paused_at=trial.user_attrs.get(PAUSED_ATTR))
        raise
    except Interrupted:
        trial.set_user_attr("interrupted", True)
        run.finish("INTERRUPTED", reason="interrupted; continues when the study is run again")
        raise
    except Exception as err:
        reason = "oom" if _is_out_of_memory(err) else f"{type(err).__name__}: {err}"
        trial.set_user_attr("reason", reason)
        run.log_text(traceback.format_exc(), "traceback.txt")
        run.finish("FAIL", reason=reason)
        raise
    finally:
        _release(sys.exception())
    run.finish("COMPLETE")
    return value


def _release(err: BaseException | None) -> None:
    """Free what the trial held before the next one starts. A trial that raised (failed, pruned,
    interrupted) is held by its traceback: its frames keep the model, optimiser and views, and
    Optuna keeps the exception in a reference cycle that only a full collection breaks, so on a
    GPU the next trial could run out of memory. Clearing the finished frames lets reference
    counting free them now; the collection and the cache release return the memory to the GPU."""
    if err is not None:
        traceback.clear_frames(err.__traceback__)
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def open_run(trial: optuna.Trial, tracker: Tracker, study_run_id: str, study_seed: int, params: dict,
             searched: list[str]) -> TrialRun:
    """A retry continues the MLflow run of the trial it replaces (and its checkpoint directory and
    seed); a new trial starts one, with `params`."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    try:
        if run_id is not None:
            run = tracker.continue_trial_run(run_id, trial.number)
            if THAW_ATTR in trial.user_attrs:  # a paused trial continued (hpsearch.study.pause)
                run.set_tags({"hpsearch.thaw_of": trial.user_attrs[THAW_ATTR]})
            return run
        run = tracker.trial_run(study_run_id, trial.number, params, searched)
    except TrackingUnavailable:  # queued again by the session: the trial starts (or continues) on the next run
        trial.set_user_attr("interrupted", True)
        raise
    trial.set_user_attr("mlflow_run_id", run.run_id)
    trial.set_user_attr("checkpoint_key", f"trial-{trial.number}")
    trial.set_user_attr("seed", trial_seed(study_seed, trial.number))
    return run


def _train_and_evaluate(trial: optuna.Trial, cfg: StudyConfig, ctx: TrialContext, run: TrialRun) -> float:
    """Pretrain (this process alone, or as rank 0 of `training.devices` DDP processes), then
    measure the final metric here."""
    seed, directory = trial.user_attrs["seed"], ctx.checkpoint_root / trial.user_attrs["checkpoint_key"]
    team = open_team(cfg, ctx.device, seed, directory)
    session = None
    try:
        session = Pretraining(cfg, ctx.splits, ctx.device, seed, team.ranks)
        evaluator = Evaluator.of(session)
        _pretrain(trial, cfg, ctx, run, team, session, evaluator, _Saved(directory, session))
    except RuntimeError as err:  # a collective broken by a follower that died says which, and why
        explained = team.explained(err)
        if explained is err:
            raise
        raise explained from err
    finally:
        if (points := team.close(session)) is not None:
            trial.set_user_attr("ranks_stopped_at", points)  # each rank's last [epoch, step]: the same
    final = evaluator.final_metric(session.method.backbone)  # evaluation.final_metric, overall and per class
    run.log_metrics(final.metrics(), step=cfg.training.epochs)
    trial.set_user_attr("worst_class", {"class": final.class_name(final.scores.worst_class),
                                        "accuracy": final.scores.worst_accuracy})
    return final.accuracy


def _pretrain(trial: optuna.Trial, cfg: StudyConfig, ctx: TrialContext, run: TrialRun, team: Solo | Team,
              session: Pretraining, evaluator: Evaluator, saved: "_Saved") -> None:
    """Pretrain epoch by epoch (from the checkpoint when there is one), record and report each
    epoch, stop when the pruner or a heuristic says so. With DDP followers, every rank trains each
    epoch and stops at the same step when interrupted; then rank 0 alone evaluates, checkpoints,
    records and decides, and the followers wait for its verdict."""
    history, recorded = _resume(trial, run, saved, ctx, team)  # one entry of metrics per finished epoch
    rules = rules_for(cfg.pruning.heuristics, METHODS[cfg.objective.method].collapse_check, ctx.random_init_knn)
    epochs, every = cfg.training.epochs, cfg.evaluation.eval_every
    stop = team.stop(ctx.stop)
    while session.epoch < epochs:
        epoch = session.epoch + 1
        try:
            stats = session.train_epoch(stop)
        except Interrupted:
            saved.write(history)
            raise
        except Diverged as err:  # the global loss: every rank stops here too
            stop_trial(trial, epoch, f"diverged: {err}")
        with team.verdict(go_on=epoch < epochs):
            try:
                metrics = _epoch_metrics(session, evaluator, stats, evaluate=epoch % every == 0 or epoch == epochs)
            except Diverged as err:
                stop_trial(trial, epoch, f"diverged: {err}")
            trial.set_user_attr("epochs_trained", epoch)
            # An epoch trained again after a dead worker had recorded it keeps the values first recorded,
            # which MLflow and Optuna hold (the retry inherited its reported curve).
            history.append({"epoch": epoch, **metrics,
                            **{k: v for k, v in recorded.get(epoch, {}).items() if k in metrics}})
            # Checkpoint before recording: a worker killed in between re-records from the history
            # (_catch_up), instead of recording an epoch it will train again.
            if epoch % cfg.recovery.checkpoint_every == 0 or epoch == epochs:
                saved.write(history)
            _record(trial, run, history, ctx, recorded)
            if "knn_accuracy" in metrics and epoch < epochs:
                _prune_if_told(trial, cfg, rules, history, saved)
            if ctx.stop.requested:  # between checkpoints too: the recorded epochs must be in one
                saved.write(history)
                ctx.stop.check()


@dataclass
class _Saved:
    """A trial's checkpoints: its training state and its history, in its own directory."""

    directory: Path
    session: Pretraining

    def write(self, history: list[dict]) -> None:
        checkpoint.save(self.directory, self.session.epoch, self.session.scheduler.last_epoch,
                        {"training": self.session.state_dict(), "history": history})


def _resume(trial: optuna.Trial, run: TrialRun, saved: _Saved, ctx: TrialContext,
            team: Solo | Team) -> tuple[list[dict], dict[int, dict[str, float]]]:
    """Continue from the newest checkpoint, if any (a retry, or a trial interrupted before): load the
    training state, record what the dead worker had not, and return the history so far with what
    MLflow holds of the epochs after the checkpoint (to be trained again, not recorded again)."""
    # On the CPU whatever the training device: the RNG states must stay CPU byte tensors (set_state
    # refuses others), and load_state_dict moves the weights to where the model lives.
    state = checkpoint.load_latest(saved.directory, map_location="cpu")
    history = [] if state is None else state["history"]
    if state is not None:
        saved.session.load_state_dict(state["training"])
    team.resumed_from(saved.session, loaded=state is not None)  # DDP followers load the same file
    # Only a retry's run can hold epochs already: a new trial's run was just created (no query).
    logged = run.logged_steps("ssl_loss") if "retry_of" in trial.user_attrs else set()
    _catch_up(trial, run, history, logged)
    ahead = {step for step in logged if step > (history[-1]["epoch"] if history else 0)}
    if state is not None:
        ctx.say(f"continuing trial {trial.user_attrs['checkpoint_key'].removeprefix('trial-')} from its checkpoint "
                f"at epoch {saved.session.epoch}, step {saved.session.scheduler.last_epoch}, as Optuna trial #{trial.number}")
    return history, run.metrics_at(ahead) if ahead else {}


def _record(trial: optuna.Trial, run: TrialRun, history: list[dict], ctx: TrialContext,
            recorded: dict[int, dict[str, float]]) -> None:
    """The newest epoch to MLflow, its kNN to Optuna (with every proxy kept with the trial, for
    calibration and custom pruners to read), and to the console.

    An epoch a dead worker had recorded after its last checkpoint (`recorded`, from MLflow) was
    trained again: it is not logged twice (its history entry holds the values first recorded).
    """
    epoch = history[-1]["epoch"]
    metrics = {k: v for k, v in history[-1].items() if k != "epoch"}
    unrecorded = {k: v for k, v in metrics.items() if k not in recorded.get(epoch, {})}
    if unrecorded:
        run.log_metrics(unrecorded, step=epoch)
    if "knn_accuracy" in metrics:
        trial.report(metrics["knn_accuracy"], epoch)
        keep_proxy_history(trial, [_proxies_only(h) for h in history if "knn_accuracy" in h])
    ctx.on_epoch(trial.number, epoch, metrics)


def _prune_if_told(trial: optuna.Trial, cfg: StudyConfig, rules, history: list[dict], saved: "_Saved") -> None:
    """Stop the trial (TrialPruned) when, after the warm-up, the pruner or an SSL heuristic says so.
    A reversible pruner's stop is a pause (user attr `paused_at`, a checkpoint at this epoch, kept
    for a thaw: hpsearch.study.pause); a heuristic's (collapse, no learning) is final."""
    epoch = history[-1]["epoch"]
    if epoch < cfg.pruning.warmup_epochs:
        return  # "never prune before" is one promise: the SSL heuristics wait too (divergence does not)
    reported = {h["epoch"]: h["knn_accuracy"] for h in history if "knn_accuracy" in h}
    final = first_reason(rules, history)
    if (reason := pruner_reason(trial, cfg.pruning.name, "kNN", reported)) is not None:
        if final is None and getattr(trial.study.pruner, "reversible", False):
            if epoch % cfg.recovery.checkpoint_every:  # not checkpointed at this epoch yet: the thaw starts here
                saved.write(history)
            trial.set_user_attr(PAUSED_ATTR, epoch)
        stop_trial(trial, epoch, reason)
    if final is not None:
        stop_trial(trial, epoch, final)


def pruner_reason(trial: optuna.Trial, pruner_name: str, proxy_label: str, reported: dict[int, float]) -> str | None:
    """Why the study's pruner stops the trial now, or None when it does not."""
    if not trial.should_prune():
        return None
    pruner, epoch = trial.study.pruner, max(reported)
    explained = getattr(pruner, "reasons", {}).get(trial.number) or explain(pruner, trial.study, reported)
    return explained or f"{pruner_name} pruner: {proxy_label} {reported[epoch]:.4f} at epoch {epoch}"


def _epoch_metrics(session: Pretraining, evaluator: Evaluator, stats: EpochStats, evaluate: bool) -> dict[str, float]:
    """The epoch's training figures and, when due, the proxies; raises Diverged (NaN features)."""
    metrics = {"ssl_loss": stats.ssl_loss, "lr": stats.lr, "epoch_time_s": stats.epoch_time}
    if evaluate:
        metrics.update(evaluator.proxies(session.method, session.epoch))
        if stats.online_accuracy is not None:
            metrics["online_linear_accuracy"] = stats.online_accuracy
    return metrics


def _proxies_only(entry: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k not in ("lr", "epoch_time_s")}


def _catch_up(trial: optuna.Trial, run: TrialRun, history: list[dict], logged: set[int]) -> None:
    """Record the checkpointed epochs the dead worker had not recorded yet: each exactly once."""
    for entry in history:
        metrics = {k: v for k, v in entry.items() if k != "epoch"}
        if entry["epoch"] not in logged:
            run.log_metrics(metrics, step=entry["epoch"])
        if "knn_accuracy" in metrics:
            with warnings.catch_warnings():  # steps the retry inherited are ignored by Optuna, as wanted
                warnings.simplefilter("ignore")
                trial.report(metrics["knn_accuracy"], entry["epoch"])


def stop_trial(trial: optuna.Trial, epoch: int, reason: str):
    """End the trial as PRUNED at `epoch`, saying why."""
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("epochs_trained", epoch)
    raise optuna.TrialPruned(reason)


def _is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, cuBLAS / cuDNN failing to allocate their workspace (the first matmul or convolution
    after the caching allocator took the GPU's memory), or an allocation failure on the CPU (torch
    raises RuntimeError, Python MemoryError)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        sign in text for sign in ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
                                  "CUDNN_STATUS_ALLOC_FAILED"))

"""Your own training loop under hpsearch: `optimize(objective, study)` runs `objective(trial)` as the
trials of a study, with hpsearch's pruning, calibration, resume and MLflow record around it.

    def objective(trial: hpsearch.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        ...
        for epoch in range(start + 1, trial.epochs + 1):
            train_one_epoch(model, opt)
            trial.save_checkpoint(epoch, {"model": model.state_dict(), "opt": opt.state_dict()})
            trial.report_epoch(epoch, knn_accuracy=knn(model), ssl_loss=loss)  # may raise optuna.TrialPruned
        return linear_probe(model)

What `report_epoch` receives is also written to a small journal next to the trial's checkpoints
before it goes to MLflow and Optuna, so that a worker killed between `save_checkpoint(e)` and
`report_epoch(e)`, or after it, loses no epoch: the retry records from the journal what MLflow
does not hold yet, and an epoch trained again after the checkpoint keeps the values first recorded.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from numbers import Real
from pathlib import Path
from typing import Any, Callable

import optuna

from hpsearch.config.schema import StudyConfig
from hpsearch.config.study_attrs import LOOP_ATTR, keep_proxy_history
from hpsearch.evaluation import FINAL_METRIC_KEYS
from hpsearch.pruning.rungs import PAUSED_ATTR
from hpsearch.study.console import Console
from hpsearch.study.owner import OWNER_ATTR, this_worker
from hpsearch.study.session import Session, open_session
from hpsearch.study.space import sample
from hpsearch.study.studyfile import load_study
from hpsearch.study.trial import open_run, pruner_reason, stop_trial, with_outcome
from hpsearch.tracking.tracker import TrialRun
from hpsearch.training import checkpoint

JOURNAL = "reported.jsonl"  # in the trial's checkpoint directory: one JSON object per reported epoch


def optimize(objective: Callable[["Trial"], float], study: str | Path | dict | StudyConfig, *,
             sets: list[str] | dict | None = None, force: bool = False, console: Console | None = None,
             **overrides: Any) -> optuna.Study:
    """Run (or continue) `study` (a study file or dict in the study-file schema) with `objective` as
    every trial; returns the `optuna.Study`. `training.epochs` is the budget `trial.epochs` returns;
    the `objective`, `model`, `augment` and `data` sections are not used. The same overrides as
    `run_study` (n_trials, storage, tracking_uri, workdir, seed; `sets`) and the same errors."""
    cfg, text = load_study(study, sets, own_loop=True, **overrides)
    label = str(study) if isinstance(study, (str, Path)) else "<config>"
    session = open_session(cfg, text, label, "the devices your objective chooses", force=force, console=console)
    session.study.set_user_attr(LOOP_ATTR, "own")  # `hpsearch resume` and `report --test` cannot run it
    session.run(lambda trial: _run_own_trial(trial, objective, session))
    return session.study


class Trial:
    """What your objective receives: the running `optuna.Trial` (every `suggest_*`, `number`,
    `params`, `user_attrs`, `set_user_attr` ... are its own) with the study's budget (`epochs`),
    the trial's seed, and hpsearch's records around your loop."""

    def __init__(self, trial: optuna.Trial, session: Session, run: TrialRun, directory: Path):
        self._trial, self._session, self._run, self._directory = trial, session, run, directory
        self._cfg = session.cfg
        self._recorded = _read_journal(directory / JOURNAL)  # epochs a previous attempt recorded
        self._last_epoch = 0  # the newest epoch this attempt reported
        self._checked_saving = False
        self._logged_params: set[str] = set()

    def __getattr__(self, name: str):
        return getattr(self._trial, name)

    def __dir__(self):
        return sorted({*super().__dir__(), *dir(self._trial)})

    @property
    def epochs(self) -> int:
        """The budget: train epochs 1..epochs (`training.epochs` of the study)."""
        return self._cfg.training.epochs

    @property
    def seed(self) -> int:
        """This trial's seed, derived from the study's seed and kept by its retries."""
        return self._trial.user_attrs["seed"]

    @property
    def proxy(self) -> str:
        """The metric `report_epoch` reports to Optuna (`evaluation.proxy`; knn_accuracy by default)."""
        return self._cfg.evaluation.primary_proxy

    def load_checkpoint(self) -> tuple[int, dict] | None:
        """(epoch, state) of the newest intact checkpoint this trial saved (a retry after a crash or
        pre-emption continues from it), or None. Tensors are loaded on the CPU: `load_state_dict`
        moves them to where your model lives."""
        try:
            saved = checkpoint.load_latest(self._directory, map_location="cpu")
        except pickle.UnpicklingError as err:
            raise ValueError(f"{self._directory}: the checkpoint holds objects that safe loading refuses "
                             f"({str(err).splitlines()[0][:200]})") from None
        return None if saved is None else (saved["epoch"], saved["state"])

    def save_checkpoint(self, epoch: int, state: dict) -> None:
        """Keep `state` as the trial's checkpoint at `epoch`, atomically and checksummed, every
        `recovery.checkpoint_every` epochs, at the last epoch and when a stop was requested. `state`
        must hold what `torch.load(weights_only=True)` reads back: tensors, numbers, strings and
        containers of them, as `state_dict()`s are (checked at the first save of each attempt)."""
        epoch = _epoch_number(epoch, self.epochs)
        if not isinstance(state, dict):
            raise TypeError(f"trial.save_checkpoint: state must be a dict (of state_dict()s), got {type(state).__name__}")
        due = epoch % self._cfg.recovery.checkpoint_every == 0 or epoch == self.epochs or self._session.stop.requested
        if not due:
            return
        checkpoint.save(self._directory, epoch, epoch, {"epoch": epoch, "state": state})
        if not self._checked_saving:
            self._checked_saving = True
            self.load_checkpoint()  # fail at the first save, not when a retry needs the checkpoint

    def report_epoch(self, epoch: int, **metrics: float) -> None:
        """Record epoch `epoch`'s metrics: each to the trial's MLflow run at step = epoch; the study's
        proxy (`trial.proxy`) to Optuna and to the history the calibrated pruner learns from. Raises
        `optuna.TrialPruned` when the pruner stops the trial (after `pruning.warmup_epochs`), or when
        a metric is not finite (the trial diverged). Epochs are reported in increasing order, each
        once; an epoch a previous attempt of this trial recorded keeps its first values."""
        epoch = _epoch_number(epoch, self.epochs)
        if epoch <= self._last_epoch:
            raise ValueError(f"trial.report_epoch: epoch {epoch} reported after epoch {self._last_epoch}; "
                             "report each epoch once, in increasing order")
        values = _numbers(metrics)
        self._last_epoch = epoch
        self._log_new_params()
        if epoch in self._recorded:  # trained again after a crash: the first values stand
            values = self._recorded[epoch]
        else:
            finite = {k: v for k, v in values.items() if math.isfinite(v)}
            self._record(epoch, finite)
            if len(finite) < len(values):
                bad = ", ".join(f"{k}={v}" for k, v in values.items() if k not in finite)
                stop_trial(self._trial, epoch, f"diverged: {bad} at epoch {epoch}")
        self._trial.set_user_attr("epochs_trained", epoch)
        if self.proxy in values:
            self._report(epoch, values[self.proxy])
            keep_proxy_history(self._trial, self._history())
            if self._cfg.pruning.warmup_epochs <= epoch < self.epochs:
                reported = {e: m[self.proxy] for e, m in sorted(self._recorded.items()) if self.proxy in m}
                if (reason := pruner_reason(self._trial, self._cfg.pruning.name, self.proxy, reported)) is not None:
                    if getattr(self._trial.study.pruner, "reversible", False):  # a thaw continues it as a retry
                        self._trial.set_user_attr(PAUSED_ATTR, epoch)       # does, from your latest checkpoint
                    stop_trial(self._trial, epoch, reason)
        self._session.stop.check()  # after a checkpoint and a record: the retry continues from here

    def _record(self, epoch: int, values: dict[str, float]) -> None:
        """Journal first (a kill after it loses nothing), then MLflow, then the console."""
        _append(self._directory / JOURNAL, {"epoch": epoch, **values})
        self._recorded[epoch] = values
        self._run.log_metrics(values, step=epoch)
        self._session.console.epoch(self._trial.number, epoch, values)

    def _report(self, epoch: int, value: float) -> None:
        with warnings.catch_warnings():  # a step a retry inherited is ignored by Optuna, as wanted
            warnings.simplefilter("ignore")
            self._trial.report(value, epoch)

    def _history(self) -> list[dict]:
        return [{"epoch": e, **m} for e, m in sorted(self._recorded.items()) if self.proxy in m]

    def _log_new_params(self) -> None:
        """Params your objective suggested since the last report, as MLflow params of the trial's run."""
        new = {k: v for k, v in self._trial.params.items() if k not in self._logged_params}
        if new:
            self._run.log_params(new)
            self._logged_params |= set(new)

    def _catch_up(self) -> None:
        """A retry: what the journal holds and the run does not (a worker killed between the two)
        goes to MLflow; the reported curve to Optuna and the history."""
        if not self._recorded:
            return
        logged = self._run.metrics_at(set(self._recorded))
        for epoch, values in sorted(self._recorded.items()):
            missing = {k: v for k, v in values.items() if k not in logged.get(epoch, {})}
            if missing:
                self._run.log_metrics(missing, step=epoch)
            if self.proxy in values:
                self._report(epoch, values[self.proxy])
        if history := self._history():
            keep_proxy_history(self._trial, history)


def _run_own_trial(trial: optuna.Trial, objective: Callable[[Trial], float], session: Session) -> float:
    cfg = session.cfg
    trial.set_user_attr(OWNER_ATTR, this_worker())  # a process that dies here is known stale at once
    values = sample(trial, cfg.search_space)  # a study file's search space; the objective may suggest more
    run = open_run(trial, session.tracker, session.study_run_id, cfg.seed,
                   {"training.epochs": cfg.training.epochs, **values}, list(values))
    own = Trial(trial, session, run, session.checkpoint_root / trial.user_attrs["checkpoint_key"])
    if "retry_of" in trial.user_attrs:
        own._catch_up()
    session.stop.check()  # a stop requested during the last trial: this one would not see it before its first epoch

    def train() -> float:
        value = objective(own)
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"the objective returned {value!r}; it must return a finite number (higher is better)")
        own._log_new_params()
        if not own._recorded:
            session.console.line(f"trial {trial.number}: the objective reported no epoch (trial.report_epoch): "
                                 "nothing to prune on, calibrate or resume from")
        run.log_metrics({FINAL_METRIC_KEYS[cfg.evaluation.final_metric]: float(value)}, step=cfg.training.epochs)
        return float(value)

    return with_outcome(trial, run, train)


def _epoch_number(epoch: Any, epochs: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be an integer from 1 to trial.epochs ({epochs}), got {epoch!r}")
    return epoch


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Metric values as floats (Python numbers, NumPy scalars and one-element tensors)."""
    if not metrics:
        raise ValueError("trial.report_epoch: no metric given; pass them by name, e.g. knn_accuracy=0.61")
    values = {}
    for name, value in metrics.items():
        try:
            values[name] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            raise TypeError(f"trial.report_epoch: {name} must be a number, got {type(value).__name__}") from None
    return values


def _read_journal(path: Path) -> dict[int, dict[str, float]]:
    """{epoch: metrics} recorded so far; a last line cut short by a kill is left out."""
    recorded: dict[int, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            recorded.setdefault(entry.pop("epoch"), entry)
    return recorded


def _append(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        cut = handle.tell() > 0 and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n"
        handle.write((b"\n" if cut else b"") + json.dumps(entry).encode() + b"\n")  # after a line cut by a kill
        handle.flush()
        os.fsync(handle.fileno())

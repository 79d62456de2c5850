"""A recorded table: every configuration of a study trained to the full budget, with the curve of
every proxy, its final metric and its cost. The replay simulates pruners against it.

Read from any Optuna study whose finished trials carry intermediate values (the primary proxy,
step = epoch) and a final value, even one hpsearch did not run; the other proxies hpsearch keeps
with its trials (user attr `proxy_history`) come along when present. Saved as (gzipped) JSON.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.config.study_attrs import proxy_history
from hpsearch.pruning.calibration import REPORTED, proxy_curves

FORMAT = "hpsearch-replay-table/1"


class TableError(Exception):
    """A table that cannot be read or replayed; the message names the file or study and what was expected."""


@dataclass
class Recording:
    """One configuration trained to the end (or until it diverged: `final` is then None)."""

    number: int
    params: dict
    curves: dict[str, dict[int, float]]  # proxy -> {step: value}; the primary one is what trials report
    final: float | None
    epochs: int
    seconds: float | None  # wall clock of the recorded trial


@dataclass
class Table:
    study: str
    direction: str  # "maximize" or "minimize", of the final metric
    primary: str  # the proxy a replayed trial reports to Optuna (its intermediate values)
    space: dict[str, str]  # param -> Optuna distribution JSON, for samplers that propose configurations
    trials: list[Recording]
    command: str = ""  # how the table was recorded, kept with it
    skipped: dict[str, int] = field(default_factory=dict)  # why some trials of the study were left out

    @property
    def budget(self) -> int:
        """Epochs to train every configuration to its end: the cost of exhaustive search."""
        return sum(r.epochs for r in self.trials)

    def finals(self) -> list[float]:
        return [r.final for r in self.trials if r.final is not None]

    def best(self) -> float:
        return max(self.finals()) if self.direction == "maximize" else min(self.finals())

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tree = {"format": FORMAT, **asdict(self)}
        text = json.dumps(tree, separators=(",", ":"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode())

    @classmethod
    def load(cls, path: str | Path) -> "Table":
        path = Path(path)
        try:
            raw = path.read_bytes()
            tree = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        except (OSError, ValueError, EOFError, zlib.error) as err:
            raise TableError(f"{path}: cannot read a replay table ({err})") from None
        if not isinstance(tree, dict) or tree.get("format") != FORMAT:
            raise TableError(f"{path}: not a replay table (expected format {FORMAT!r}; write one with `hpsearch export NAME --table FILE`)")
        tree.pop("format")
        try:
            trials = [Recording(**{**r, "curves": {p: {int(s): v for s, v in c.items()} for p, c in r["curves"].items()}})
                      for r in tree.pop("trials")]
            table = cls(trials=trials, **tree)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TableError(f"{path}: a damaged replay table ({type(err).__name__}: {err})") from None
        return table._checked(str(path))

    @classmethod
    def from_study(cls, study: optuna.Study, command: str = "") -> "Table":
        """Every trial trained to the end: complete ones, and those stopped because they diverged."""
        trials, skipped = [], {}
        for trial in study.get_trials(deepcopy=False):
            recording = _recording(trial)
            if recording is None:
                why = trial.state.name.lower() if trial.state != TrialState.COMPLETE else "no intermediate values"
                skipped[why] = skipped.get(why, 0) + 1
            else:
                trials.append(recording)
        primary = "knn_accuracy" if any(proxy_history(t) is not None for t in study.get_trials(deepcopy=False)) else REPORTED
        space: dict[str, str] = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            for name, distribution in trial.distributions.items():
                space.setdefault(name, optuna.distributions.distribution_to_json(distribution))
        direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        table = cls(study.study_name, direction, primary, space, trials, command, skipped)
        return table._checked(f"study {study.study_name!r}")

    def _checked(self, where: str) -> "Table":
        finals = self.finals()
        if len(finals) < 2:
            raise TableError(f"{where}: {len(finals)} finished trials with intermediate values; a replay needs at "
                             f"least 2 (skipped: {self.skipped or 'none'})")
        missing = [r.number for r in self.trials if r.final is not None and not r.curves.get(self.primary)]
        if missing:
            raise TableError(f"{where}: trials {missing[:5]} have no {self.primary!r} curve")
        return self


def _recording(trial: optuna.trial.FrozenTrial) -> Recording | None:
    diverged = trial.state == TrialState.PRUNED and str(trial.user_attrs.get("reason", "")).startswith("diverged")
    if trial.state != TrialState.COMPLETE and not diverged:
        return None
    curves = {proxy: curve for proxy, curve in proxy_curves(trial).items() if curve}
    if not curves and not diverged:
        return None  # a diverged trial may have no evaluation at all: it still cost its epochs
    last = max((max(c) for c in curves.values()), default=1)
    epochs = int(trial.user_attrs.get("epochs_trained", last))
    seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2) \
        if trial.datetime_complete and trial.datetime_start else None
    final = trial.value if trial.state == TrialState.COMPLETE else None
    return Recording(trial.number, dict(trial.params), curves, final, epochs, seconds)

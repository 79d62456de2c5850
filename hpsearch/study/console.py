"""What a study prints: a live status line on a terminal, one line per trial, a final table."""

from __future__ import annotations

import sys
from typing import TextIO

import optuna

from hpsearch.pruning.rungs import evicted, state_label
from hpsearch.study.on_test import RANDOM_INIT, results_on_test
from hpsearch.study.owner import OWNER_ATTR
from hpsearch.study.retry import FINISHED, configuration_number, finished_trials



def counts(study: optuna.Study) -> dict[str, int]:
    """Finished trials of the study by state (COMPLETE / PRUNED / FAIL), retried ones not counted."""
    trials = finished_trials(study)
    return {state.name: sum(t.state == state for t in trials) for state in FINISHED}


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


class Console:
    """Progress output. On a terminal the running trial's epoch is redrawn in place; in a log file
    (or CI) only whole lines are written, so the output stays readable."""

    def __init__(self, n_trials: int, epochs: int, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.n_trials, self.epochs = n_trials, epochs
        self.status = ""

    def line(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def epoch(self, trial_number: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.live:
            return
        knn, loss = metrics.get("knn_accuracy"), metrics.get("ssl_loss")  # a loop of your own may report either
        text = (f"trial {trial_number}  epoch {epoch}/{self.epochs}" + (f"  loss {loss:.3f}" if loss is not None else "")
                + (f"  kNN {knn:.3f}" if knn is not None else ""))
        if self.status:
            text += f"  |  {self.status}"
        self.stream.write("\r\033[K" + text[:200])
        self.stream.flush()

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = counts(study)
        top = best(study)
        self.status = (f"{sum(n.values())}/{self.n_trials} finished (pruned {n['PRUNED']}, failed {n['FAIL']})"
                       + (f", best {top.value:.4f} (trial {top.number})" if top else ""))
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        # A pruned trial's `value` is Optuna's copy of its last proxy report: show why it stopped instead.
        value = f"linear probe {trial.value:.4f}" if complete else trial.user_attrs.get("reason", "")
        epochs = trial.user_attrs.get("epochs_trained", "?")
        state = state_label(trial, evicted(study))
        self.line(f"trial {_identity(trial):>3}  {state:<8}  {value}  ({epochs} epochs)  |  {self.status}")

    def summary(self, study: optuna.Study, ui_hint: str) -> None:
        """The final table: every finished trial with its validation value (the one the study chose
        by) and, for the trials measured on the test split, their test value; then the best trial."""
        trials = finished_trials(study)
        tested = results_on_test(study)
        test_of = {number: measured["value"] for number, measured in tested.items()}
        names = sorted({name for t in trials for name in t.params})
        header = ["#", "state", "val", *(["test"] if len(tested) > (RANDOM_INIT in tested) else []), "epochs", *names]
        gone = evicted(study)
        rows = [[_identity(t), state_label(t, gone), f"{t.value:.4f}" if t.state.name == "COMPLETE" else "",
                 *([_fmt(test_of.get(str(t.number), ""))] if "test" in header else []),
                 str(t.user_attrs.get("epochs_trained", "")), *[_fmt(t.params.get(n, "")) for n in names]]
                for t in trials]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        self.line("")
        for row in [header, *rows]:
            self.line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        top = best(study)
        if top is not None:
            on_test = test_of.get(str(top.number))
            self.line(f"\nbest trial {_identity(top)}: validation linear-probe accuracy {top.value:.4f}"
                      + (f", test {on_test:.4f}" if on_test is not None else ""))
            for name, value in top.params.items():
                self.line(f"  {name}: {_fmt(value)}")
        elsewhere = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in elsewhere:  # alive: this process's dead ones were retried before the summary
            owner = trial.user_attrs.get(OWNER_ATTR, {})
            self.line(f"still running: trial {_identity(trial)} on {owner.get('host', '?')} (pid {owner.get('pid', '?')})")
        baseline = study.user_attrs.get("random_init_linear_probe")
        if baseline is not None:
            on_test = test_of.get(RANDOM_INIT)
            self.line(f"random-init encoder: validation linear-probe accuracy {baseline:.4f}"
                      + (f", test {on_test:.4f}" if on_test is not None else ""))
        self.line(ui_hint)

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _identity(trial: optuna.trial.FrozenTrial) -> str:
    """A configuration's number, with the Optuna trial that continued it when that differs."""
    first = configuration_number(trial)
    return str(first) if first == trial.number else f"{first} (as #{trial.number})"

"""Real Optuna studies with synthetic curves for the replay tests: a latent quality q per
configuration, curve(t) = q * (1 - exp(-t / tau)) + noise, final = q + noise; tau = 3, or 8 for
slow starters."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

EPOCHS = 10
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "temperature": FloatDistribution(0.05, 1.0),
                 "method": CategoricalDistribution(["simclr", "byol"])}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def synthetic_trials(n: int = 40, seed: int = 0, direction: str = "maximize", history: bool = False,
                      slow_fraction: float = 0.25, noise: float = 0.004) -> list[optuna.trial.FrozenTrial]:
    """Complete trials with curves of a latent quality q; a minimized study records 1 - accuracy (a loss)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, EPOCHS + 1)
    trials = []
    for _ in range(n):
        q = rng.uniform(0.3, 0.9)
        slow = rng.random() < slow_fraction
        curve = q * (1 - np.exp(-steps / (8.0 if slow else 3.0))) + rng.normal(0, noise, EPOCHS)
        final = q + rng.normal(0, noise)
        params = {"lr": float(10 ** rng.uniform(-4, 0)), "temperature": float(rng.uniform(0.05, 1.0)),
                  "method": "byol" if slow else "simclr"}
        if direction == "minimize":
            curve, final = 1 - curve, 1 - final
        attrs = {}
        if history:  # as hpsearch's trial loop records it
            attrs = {"epochs_trained": EPOCHS,
                     "proxy_history": [{"epoch": int(s), "knn_accuracy": float(v), "linear_probe": float(v + 0.02),
                                        "ssl_loss": float(4 - 3 * v)} for s, v in zip(steps, curve)]}
        trials.append(create_trial(params=params, distributions=DISTRIBUTIONS, value=float(final),
                                   intermediate_values={int(s): float(v) for s, v in zip(steps, curve)},
                                   user_attrs=attrs))
    return trials


def make_study(trials, direction: str = "maximize", name: str = "synthetic", storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    for trial in trials:
        study.add_trial(trial)
    return study


def diverged_trial(epoch: int = 5) -> optuna.trial.FrozenTrial:
    """Pruned by hpsearch because its loss became NaN at `epoch`: history up to the epoch before."""
    history = [{"epoch": e, "knn_accuracy": 0.1 * e, "linear_probe": 0.1 * e, "ssl_loss": 4.0 - e / 10}
               for e in range(1, epoch)]
    return create_trial(state=TrialState.PRUNED, params={"lr": 0.9, "temperature": 0.5, "method": "simclr"},
                        distributions=DISTRIBUTIONS,
                        intermediate_values={h["epoch"]: h["knn_accuracy"] for h in history},
                        user_attrs={"proxy_history": history, "epochs_trained": epoch,
                                    "reason": f"diverged: loss is nan at epoch {epoch}"})


def ranked_trials(n: int = 40, seed: int = 1, slow_best: bool = False) -> list[optuna.trial.FrozenTrial]:
    """One configuration (q = 0.9) clearly above the others (q <= 0.8), all on the same fast curve shape
    with little noise, so every early value ranks the finals well; with `slow_best`, the best one
    is instead a very slow starter (last at every early step)."""
    rng = np.random.default_rng(seed)
    qualities = rng.uniform(0.3, 0.8, n)
    best = int(rng.integers(n))
    qualities[best] = 0.9
    steps = np.arange(1, EPOCHS + 1)
    trials = []
    for i, q in enumerate(qualities):
        curve = q * (1 - np.exp(-steps / 3.0)) + rng.normal(0, 0.002, EPOCHS)
        if slow_best and i == best:
            curve = q * (steps / EPOCHS) ** 3
        trials.append(create_trial(params={"lr": float(10 ** rng.uniform(-4, 0))}, distributions={"lr": DISTRIBUTIONS["lr"]},
                                   value=float(q + rng.normal(0, 0.002)),
                                   intermediate_values={int(s): float(v) for s, v in zip(steps, curve)}))
    return trials

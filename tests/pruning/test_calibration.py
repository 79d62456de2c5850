"""Calibration of proxies against the final metric, checked against scipy.stats.spearmanr."""

import numpy as np
import optuna
import pytest
from scipy.stats import spearmanr

from hpsearch.pruning.calibration import HISTORY_ATTR, average_ranks, by_method, calibration_table, spearman


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_spearman_matches_scipy(seed, ties):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, 30).astype(float) if ties else rng.normal(size=30)
    y = x + rng.normal(scale=1.0, size=30)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_ties_share_their_average_rank():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def make_trial(final, history, state=optuna.trial.TrialState.COMPLETE, method=None):
    params, distributions = {}, {}
    if method is not None:
        params["objective.method"] = method
        distributions["objective.method"] = optuna.distributions.CategoricalDistribution(["simclr", "byol"])
    return optuna.trial.create_trial(state=state, value=final if state.name == "COMPLETE" else None,
                                     params=params, distributions=distributions, user_attrs={HISTORY_ATTR: history})


def test_table_gives_rho_and_count_per_proxy_and_step():
    # kNN at epoch 2 orders the trials exactly as their final values; at epoch 1 in reverse.
    finals = [0.6, 0.7, 0.8, 0.9]
    trials = [make_trial(f, [{"epoch": 1, "knn_accuracy": 1 - f}, {"epoch": 2, "knn_accuracy": f / 2}]) for f in finals]
    trials.append(make_trial(None, [{"epoch": 1, "knn_accuracy": 0.1}], state=optuna.trial.TrialState.PRUNED))
    table = calibration_table(trials)
    assert table[("knn_accuracy", 2)] == (pytest.approx(1.0), 4)
    assert table[("knn_accuracy", 1)] == (pytest.approx(-1.0), 4)  # pruned trials have no final value: not counted


def test_steps_with_too_few_trials_are_left_out_and_methods_are_separated():
    trials = [make_trial(0.5 + i / 10, [{"epoch": 1, "rankme": float(i)}], method=m)
              for i, m in enumerate(["simclr", "simclr", "byol", "byol", "byol"])]
    groups = by_method(trials)
    assert sorted(groups) == ["byol", "simclr"]
    assert calibration_table(groups["simclr"]) == {}  # 2 trials < min_trials
    assert calibration_table(groups["byol"])[("rankme", 1)] == (pytest.approx(1.0), 3)

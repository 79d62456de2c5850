"""The `calibrated` pruner: prune a trial only when the proxies that have *proved* predictive say
it is unlikely to reach the study's top k.

Every other pruner trusts its proxy blindly. This one measures, from the trials that finished,
how well each proxy at each step ranks the final metric (Spearman rho, `calibration.py`), and:

- decides only at rungs (epochs min_resource * eta**r, ASHA-style): few decisions, each on its
  own, so no trial waits for another and any number of workers can share the study;
- at a rung, picks the proxy with the highest |rho| at that step (within the trial's method when
  enough trials of it finished: rank-type proxies are not comparable across methods); where no
  proxy reaches `min_rho`, or is not significant for the number of trials, it does not prune.
  Proxies other than the reported one (kNN) compete only on 3 * min_trials trials and a
  Bonferroni-corrected test: the best of seven noisy correlations is otherwise noise;
- predicts the final metric from that proxy by a least-squares line over the finished trials,
  with a bootstrap over trials plus resampled residuals for the uncertainty;
- once the curve has 3 evaluations, also extrapolates the trial's own primary curve to the last
  step (`extrapolation.py`) and maps it through the same line at that step, so a slow starter
  (BYOL, SimSiam) is judged by where it is going;
- prunes when both predictions give P(final >= k-th best final so far - `margin`) below
  `min_probability`, and never a trial that looks at least as good at this step as a finished
  trial that reached that bar did.

Until `min_trials` trials have finished it is a median rule on the primary proxy against the
trials that stopped (finished or pruned) after reaching the same step, unless a `prior` (finished
trials of an earlier study or a replay table, resolved by hpsearch.study.prior) seeds the
calibration: the prior's trials stand in for the study's own until those take over, weighted by
their number (with n own finished trials, `prior_weight` - n of the prior's, a fixed random draw). Values are made "higher is better" by the study's direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.pruning.calibration import REPORTED, proxy_curves, spearman
from hpsearch.pruning.extrapolation import forecast

SIGNIFICANCE_Z = 1.645  # one-sided 5% test of "this proxy ranks the finals"
SIGNIFICANCE_Z_ANY_OF_SEVEN = 2.45  # the same test, Bonferroni-corrected for the seven proxies hpsearch records
PRIMARY = ("knn_accuracy", REPORTED)  # the curve extrapolated: the proxy trials report to Optuna


@dataclass(frozen=True)
class Finished:
    """A finished trial as the pruner sees it, the study's own or a prior's: its proxy curves and its
    final value (higher = better)."""

    curves: dict[str, dict[int, float]]
    final: float
    method: object


class CalibratedPruner(optuna.pruners.BasePruner):
    def __init__(self, *, min_trials: int = 4, min_rho: float = 0.5, top_k: int = 3, min_probability: float = 0.05,
                 reduction_factor: int = 3, min_resource: int = 1, cold_start_trials: int = 2,
                 margin: float = 0.01, method_param: str = "objective.method", n_bootstrap: int = 128, seed: int = 0,
                 prior: list[Finished] | None = None, prior_weight: int | None = None):
        for name, value, low in (("min_trials", min_trials, 3), ("top_k", top_k, 1), ("reduction_factor", reduction_factor, 2),
                                 ("min_resource", min_resource, 1), ("cold_start_trials", cold_start_trials, 1),
                                 ("n_bootstrap", n_bootstrap, 8)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 <= min_rho <= 1:
            raise ValueError(f"min_rho must be in [0, 1], got {min_rho}")
        if not 0 < min_probability < 1:
            raise ValueError(f"min_probability must be in (0, 1), got {min_probability}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.min_trials, self.min_rho, self.top_k, self.min_probability = min_trials, min_rho, top_k, min_probability
        self.eta, self.min_resource, self.cold_start_trials = reduction_factor, min_resource, cold_start_trials
        self.margin, self.method_param, self.n_bootstrap, self.seed = margin, method_param, n_bootstrap, seed
        self.prior_weight = 3 * min_trials if prior_weight is None else prior_weight
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
        # A fixed draw order, so that the prior's share shrinks by dropping the same trials each time.
        order = np.random.default_rng(seed).permutation(len(prior or []))
        self.prior = [(prior or [])[i] for i in order]
        self.reasons: dict[int, str] = {}  # trial number -> why it was pruned (read by the trial loop)
        self._cache: tuple[int, list[Finished]] | None = None
        self._judges: dict[tuple, tuple[str, "_Lines"] | None] = {}  # estimate()'s proxy and lines, per calibration

    # -- Optuna's interface -------------------------------------------------------------------

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self._is_rung(step, trial.intermediate_values):
            return False
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        finished = self._finished(study, sign)
        if len(finished) < self.min_trials:
            return self._median_rule(study, trial, step, sign, len(finished))
        reason = self._calibrated_rule(trial, step, sign, finished)
        if reason is not None:
            self.reasons[trial.number] = reason
        return reason is not None

    # -- rules ----------------------------------------------------------------------------------

    def _is_rung(self, step: int, reported: dict[int, float]) -> bool:
        """True at the first report at or past each rung (so eval_every > 1 still meets every rung)."""
        earlier = [s for s in reported if s < step]
        previous = max(earlier) if earlier else 0
        rung = self.min_resource
        while rung <= step:
            if rung > previous:
                return True
            rung *= self.eta
        return False

    def _median_rule(self, study: optuna.Study, trial: FrozenTrial, step: int, sign: float, n_finished: int) -> bool:
        # Trials that stopped (finished or pruned) count, not running ones: measured on the CIFAR-10
        # recording, judging a first wave of 16 workers against itself at epoch 1 pruned winners
        # and saved nothing (16 workers spend the same epochs until the first finisher anyway).
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                  if step in t.intermediate_values]
        others = [sign * v for v in others if math.isfinite(v)]
        value = trial.intermediate_values[step]
        if len(others) < self.cold_start_trials or not math.isfinite(value):
            return False
        median = float(np.median(others))
        if sign * value < median:
            self.reasons[trial.number] = (f"calibrated pruner (cold start, {n_finished} finished): reported "
                                          f"{value:.4f} below the median {sign * median:.4f} at step {step}")
            return True
        return False

    def estimate(self, study: optuna.Study, trial: FrozenTrial) -> float | None:
        """P(final >= the top-k bar - margin) of a stopped (paused) trial, as the calibration stands
        now: from the proxy that ranks the finished trials best at the trial's last step, within its
        method when enough of it finished. None until `min_trials` finished, or when no proxy is
        trusted at that step: then the calibration cannot re-judge it. No extrapolation: a thaw
        policy re-judges every paused trial each time the finished trials change."""
        step = trial.last_step
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        finished = self._finished(study, sign)
        if step is None or len(finished) < self.min_trials:
            return None
        group, threshold = self._group_and_bar(trial, finished)
        curves = proxy_curves(trial)
        # The proxy to trust and its fitted lines depend on the group, the step and the proxies
        # measured there, not on the trial's values: made once for all paused trials sharing them.
        key = (len(finished), (trial.params.get(self.method_param),) if group is not finished else None, step,
               tuple(sorted(p for p, c in curves.items() if step in c)))
        if key not in self._judges:
            choice = _best_proxy(curves, step, group, self.min_trials, self.min_rho)
            rng = np.random.default_rng([self.seed, step, len(finished), len(group)])
            lines = None if choice is None else _bootstrap_lines(group, choice[0], step, self.n_bootstrap, rng)
            self._judges[key] = None if lines is None else (choice[0], lines)
        judge = self._judges[key]
        if judge is None:
            return None
        proxy, lines = judge
        return lines.probability_above(curves[proxy][step], threshold)

    def prior_in_use(self, own: int) -> int:
        """How many of the prior's trials weigh in beside `own` finished trials of the study."""
        return min(len(self.prior), max(0, self.prior_weight - own))

    def finished_count(self, study: optuna.Study) -> int:
        """How many finished trials the calibration rests on now (estimates change only with it)."""
        return len(self._finished(study, 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0))

    def _group_and_bar(self, trial: FrozenTrial, finished: list[Finished]) -> tuple[list[Finished], float]:
        """The finished trials a trial is judged against (its method's when enough), and the bar."""
        method = trial.params.get(self.method_param)
        same = [f for f in finished if f.method == method]
        group = same if len(same) >= self.min_trials else finished
        # The bar: the top_k-th best final so far, less `margin` (the final metric's own noise:
        # a trial that would end within it of the bar is as good as in the top k).
        threshold = sorted((f.final for f in finished), reverse=True)[min(self.top_k, len(finished)) - 1] - self.margin
        return group, threshold

    def _calibrated_rule(self, trial: FrozenTrial, step: int, sign: float, finished: list[Finished]) -> str | None:
        group, threshold = self._group_and_bar(trial, finished)
        curves = proxy_curves(trial)
        choice = _best_proxy(curves, step, group, self.min_trials, self.min_rho)
        if choice is None:
            return None  # no proxy predicts the final metric at this step: keep training
        proxy, rho, n = choice
        value = curves[proxy][step]
        # Never prune a trial that looks at least as good as a finished trial that did reach the bar
        # looked at this step: the line is least reliable in the tail where the winners are.
        reached = [np.sign(rho) * f.curves[proxy][step] for f in group
                   if f.final >= threshold and step in f.curves.get(proxy, {})]
        if reached and np.sign(rho) * value >= min(reached):
            return None
        rng = np.random.default_rng([self.seed, trial.number, step])
        p_now = _probability_above(group, proxy, step, value, threshold, self.n_bootstrap, rng)
        p_later = self._extrapolated_probability(curves, group, threshold, rng)
        probability = max(p_now, p_later)
        if probability >= self.min_probability:
            return None
        return (f"calibrated pruner: P(final >= top-{self.top_k} - margin = {sign * threshold:.4f}) = {probability:.3f} from "
                f"{proxy} at step {step} (rho {rho:.2f}, n {n})")

    def _extrapolated_probability(self, curves, group: list[Finished], threshold: float, rng) -> float:
        """P(reaching the threshold) by extrapolating the primary curve to the last step; 0 when it cannot say."""
        primary = next((p for p in PRIMARY if p in curves), None)
        if primary is None or len(curves[primary]) < 3:
            return 0.0
        last = max((max(f.curves[primary]) for f in group if f.curves.get(primary)), default=None)
        if last is None or last <= max(curves[primary]):
            return 0.0
        steps = sorted(curves[primary])
        values = [curves[primary][s] for s in steps]
        bounds = (0.0, 1.0) if primary == "knn_accuracy" else (-np.inf, np.inf)
        future = forecast(steps, values, last, bounds=bounds, n_bootstrap=self.n_bootstrap,
                          seed=int(rng.integers(2**31)))
        return _probability_above(group, primary, last, future.samples, threshold, self.n_bootstrap, rng)

    def _finished(self, study: optuna.Study, sign: float) -> list[Finished]:
        """The complete trials, read again only when their number changed (prune runs every epoch)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if self._cache is None or self._cache[0] != len(complete):
            finished = [Finished(proxy_curves(t), sign * t.value, t.params.get(self.method_param))
                        for t in complete if t.value is not None and math.isfinite(t.value)]
            finished += self.prior[:self.prior_in_use(len(finished))]
            self._cache = (len(complete), finished)
        return self._cache[1]


def _best_proxy(curves: dict[str, dict[int, float]], step: int, group: list[Finished], min_trials: int,
                min_rho: float) -> tuple[str, float, int] | None:
    """The proxy whose value at `step` ranks the group's finals best (|rho| >= min_rho), with rho and n."""
    best = None
    for proxy, curve in curves.items():
        if step not in curve:
            continue
        pairs = [(f.curves[proxy][step], f.final) for f in group if step in f.curves.get(proxy, {})]
        if len(pairs) < min_trials:
            continue
        x, y = np.array(pairs).T
        rho = spearman(x, y)
        # Trusted only when significant too: |rho| * sqrt(n - 1) is ~N(0, 1) for unrelated ranks,
        # so few trials need a higher rho (n 5: 0.82, n 8: 0.62, n 12: 0.50). The other proxies
        # compete with the primary one only on more trials and a test corrected for the number of
        # proxies tried: picking the best of seven noisy correlations otherwise picks noise.
        primary = proxy in PRIMARY
        if not primary and len(pairs) < 3 * min_trials:
            continue
        z = SIGNIFICANCE_Z if primary else SIGNIFICANCE_Z_ANY_OF_SEVEN
        needed = max(min_rho, z / math.sqrt(len(pairs) - 1))
        if math.isfinite(rho) and abs(rho) >= needed and (best is None or abs(rho) > abs(best[1])):
            best = (proxy, rho, len(pairs))
    return best


def _probability_above(group: list[Finished], proxy: str, step: int, value, threshold: float, n_bootstrap: int,
                       rng: np.random.Generator) -> float:
    """P(final >= threshold) for a trial whose proxy reads `value` at `step` (a number, or samples of it)."""
    lines = _bootstrap_lines(group, proxy, step, n_bootstrap, rng)
    return 1.0 if lines is None else lines.probability_above(value, threshold)


@dataclass(frozen=True)
class _Lines:
    """Draws of final = intercept + slope * proxy (+ one residual each) over a group of finished trials."""

    intercept: np.ndarray
    slope: np.ndarray
    noise: np.ndarray

    def probability_above(self, value, threshold: float) -> float:
        at = np.resize(np.asarray(value, float), len(self.slope))
        return float(np.mean(self.intercept + self.slope * at + self.noise >= threshold))


def _bootstrap_lines(group: list[Finished], proxy: str, step: int, n_bootstrap: int,
                     rng: np.random.Generator) -> _Lines | None:
    """A line final = a + b * proxy fitted to the finished trials; its uncertainty comes from refitting
    on trials drawn with replacement, plus one residual of the refit per draw. None under 3 trials."""
    pairs = np.array([(f.curves[proxy][step], f.final) for f in group if step in f.curves.get(proxy, {})])
    if len(pairs) < 3:
        return None
    x, y = pairs[:, 0], pairs[:, 1]
    picks = rng.integers(0, len(x), size=(n_bootstrap, len(x)))
    xs, ys = x[picks], y[picks]
    x_mean, y_mean = xs.mean(axis=1, keepdims=True), ys.mean(axis=1, keepdims=True)
    spread = ((xs - x_mean) ** 2).sum(axis=1, keepdims=True)
    slope = np.where(spread > 0, ((xs - x_mean) * (ys - y_mean)).sum(axis=1, keepdims=True) / np.maximum(spread, 1e-300), 0.0)
    intercept = y_mean - slope * x_mean
    residuals = ys - (intercept + slope * xs)
    noise = residuals[np.arange(n_bootstrap), rng.integers(0, len(x), size=n_bootstrap)]
    return _Lines(intercept[:, 0], slope[:, 0], noise)

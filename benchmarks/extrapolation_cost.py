"""Cost of one learning-curve forecast (`hpsearch.pruning.extrapolation.forecast`), per call.

    python benchmarks/extrapolation_cost.py            # 9 rounds, curves of 3-50 evaluations (~5 s)
    python benchmarks/extrapolation_cost.py --quick    # tiny: checks the script runs, measures nothing

The calibrated pruner forecasts a trial's kNN curve to the study's last epoch at each of its rungs
once the curve has 3 evaluations (`n_bootstrap` 128 by default): the decision waits for it, so it
must stay negligible against an epoch, which takes seconds even for the smallest study here.
Target: <= 50 ms per forecast of a 20-evaluation curve at 128 bootstrap samples (this figure was a
wall-time assertion in tests/pruning/test_extrapolation.py; tests do not time things).

The curves are a saturating power law with noise (sd 0.01), like a kNN curve; the settings are
timed alternately (A, B, C, ... per round, one untimed warm-up round) and medians reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, machine, median, spread, table  # noqa: E402

import numpy as np  # noqa: E402

from hpsearch.pruning.extrapolation import forecast  # noqa: E402

BUDGET_S = 0.05  # per forecast; an epoch takes seconds even on the smallest study here
REFERENCE = (20, 128)  # (evaluations, bootstrap samples): the figure held against the budget


def curve(n: int, seed: int = 12) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(1, n + 1, dtype=float)
    return steps, 0.9 - 0.5 * steps**-0.7 + np.random.default_rng(seed).normal(0.0, 0.01, n)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny: checks the script runs, measures nothing")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10, help="forecasts per timed round and setting")
    args = parser.parse_args(argv)
    settings = [(n, b) for n in (3, 8, 20, 50) for b in (64, 128)]
    if args.quick:
        args.rounds, args.calls, settings = 1, 1, [REFERENCE]

    def contender(n: int, n_bootstrap: int):
        steps, values = curve(n)
        target = 5.0 * n  # forecast well past the data, as at an early rung

        def run() -> float:
            for _ in range(args.calls):
                forecast(steps, values, target, n_bootstrap=n_bootstrap)
            return args.calls

        return run

    print(machine())
    print(f"{args.rounds} rounds (+1 warm-up) x {args.calls} forecasts per setting, alternating")
    rates = alternate({setting: contender(*setting) for setting in settings}, rounds=args.rounds)
    rows = [[n, b, f"{1000 / median(r):.2f} ms", spread(r)] for (n, b), r in rates.items()]
    print(table(["evaluations", "n_bootstrap", "per forecast", "range (rate)"], rows))
    per_call = 1 / median(rates[REFERENCE])
    print(f"ratio forecast/budget: {per_call / BUDGET_S:.3f} ({1000 * per_call:.2f} ms per forecast of "
          f"{REFERENCE[0]} evaluations at n_bootstrap {REFERENCE[1]}, budget {1000 * BUDGET_S:.0f} ms)")


if __name__ == "__main__":
    main()

"""Replaying recorded studies: check a pruning strategy against complete curves before spending
compute on it (`hpsearch export NAME --table FILE`, `hpsearch replay`). Names here are kept
import-light, so the command line can list them without importing Optuna."""

STRATEGY_NAMES = ("none", "median", "percentile25", "successive_halving", "hyperband", "top5_after_1", "calibrated",
                  "asha_thaw", "calibrated_thaw")
DEFAULT_STRATEGIES = ("none", "median", "hyperband", "successive_halving", "top5_after_1", "calibrated", "asha_thaw",
                      "calibrated_thaw")
COSTS = ("epochs", "seconds")  # what an epoch of a replayed trial costs: 1, or its recorded seconds
SAMPLERS = ("random", "tpe")

"""Deciding to stop a trial early: Optuna's pruners by name, the calibrated pruner with its
calibration table and learning-curve forecasts, and the SSL early-stopping heuristics. Decisions
read a trial's recorded curves and return their reasons; nothing here trains or logs."""

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.pruning.calibration import HISTORY_ATTR, calibration_records, calibration_table
from hpsearch.pruning.extrapolation import Forecast, forecast
from hpsearch.pruning.heuristics import first_reason, rules_for
from hpsearch.pruning.pruners import build_pruner, pruner_names

__all__ = ["CalibratedPruner", "Forecast", "HISTORY_ATTR", "build_pruner", "calibration_records", "calibration_table",
           "first_reason", "forecast", "pruner_names", "rules_for"]

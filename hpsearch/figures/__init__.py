"""What a study found, as facts and figures: the leaderboard, hyperparameter importances, compute
spent and saved by pruning, per-class accuracy of the best trials, and plots of them (PNG bytes),
with the self-contained HTML page that holds them all.

Below the study on purpose: the runner logs the figures to the study's MLflow parent run when a
study ends (`publish`), and `hpsearch report` (hpsearch.report) prints and writes the same facts.
Modules: `compute` (epochs and seconds), `importance`, `classes`, `summary` (all facts of a study),
`plots`, `page` (HTML), `publish` (to MLflow). Only `plots` imports matplotlib.
"""

"""A study from its file to its end: reading and validating the study file, the search space, the
Optuna storage and the config kept with a study, the runner, one trial, retries of dead or
interrupted trials, graceful interrupts, many workers, and the console.

Nothing is imported here: `hpsearch run --workers N` starts its workers from
`hpsearch.study.workers` without loading torch, and the public names live in `hpsearch`.
"""

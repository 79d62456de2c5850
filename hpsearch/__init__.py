"""hpsearch: hyperparameter search for self-supervised pretraining.

    import hpsearch
    study = hpsearch.run_study("studies/quickstart.yaml", n_trials=4)
"""

__all__ = ["run_study", "StudyFileError"]


def __getattr__(name):
    # Lazy, so `hpsearch ui` and `--help` do not pay for importing torch, optuna and mlflow.
    if name == "run_study":
        from hpsearch.runner import run_study

        return run_study
    if name == "StudyFileError":
        from hpsearch.studyfile import StudyFileError

        return StudyFileError
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")

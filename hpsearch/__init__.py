"""hpsearch: hyperparameter search for self-supervised pretraining.

    import hpsearch
    study = hpsearch.run_study("studies/quickstart.yaml", n_trials=4)

What users import is named here, and imported lazily, so that `hpsearch --help` and `hpsearch ui`
do not pay for torch, optuna and mlflow.
"""

import importlib

# public name -> the module that defines it
_PUBLIC = {
    "run_study": "hpsearch.study.runner",
    "optimize": "hpsearch.study.own_loop",
    "Trial": "hpsearch.study.own_loop",
    "resume_study": "hpsearch.study.runner",
    "load_study": "hpsearch.study.studyfile",
    "StudyFileError": "hpsearch.study.studyfile",
    "StudyConfig": "hpsearch.config.schema",
    "load_encoder": "hpsearch.training.encoder_file",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted([*globals(), *_PUBLIC])

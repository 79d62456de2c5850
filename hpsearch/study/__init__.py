"""A study from its file to its end: reading and validating the study file, the search space, the
Optuna storage and the config kept with a study, the runner, one trial, retries of dead or
interrupted trials, graceful interrupts, and the console."""

from hpsearch.study.interrupt import Interrupted
from hpsearch.study.runner import locate_study, resume_study, run_study
from hpsearch.study.storage import StorageError
from hpsearch.study.stored_config import ConfigChanged
from hpsearch.study.studyfile import StudyFileError, load_study

__all__ = ["ConfigChanged", "Interrupted", "StorageError", "StudyFileError", "load_study", "locate_study",
           "resume_study", "run_study"]

"""The empty study each figures test fills (tests/figures/trials.py adds its trials)."""

import optuna
import pytest

from hpsearch.config.study_attrs import keep_study_config
from tests.figures.trials import EPOCHS


@pytest.fixture
def study():
    """An empty in-memory study with the stored config an hpsearch study has (EPOCHS epochs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    created = optuna.create_study(study_name="s", direction="maximize")
    keep_study_config(created, {"training": {"epochs": EPOCHS}, "evaluation": {"final_metric": "linear_probe"}})
    return created

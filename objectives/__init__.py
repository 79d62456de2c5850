"""SSL methods, one module each, registered by the name study files use (`objective.method`)."""

from objectives.registry import METHODS, SSLMethod, MethodConfig, register

# Importing a method module registers it.
from objectives import simclr  # noqa: E402,F401
from objectives import byol  # noqa: E402,F401
from objectives import simsiam  # noqa: E402,F401
from objectives import vicreg  # noqa: E402,F401
from objectives import barlow_twins  # noqa: E402,F401
from objectives import moco  # noqa: E402,F401
from objectives import dino  # noqa: E402,F401
from objectives import rotation  # noqa: E402,F401

__all__ = ["METHODS", "SSLMethod", "MethodConfig", "register"]

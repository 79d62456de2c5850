"""The method registry and the contract every SSL method follows."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class MethodConfig(BaseModel):
    """Base of every method's settings; each subclass adds `method: Literal[<name>]` and its fields.

    These models are part of the study-file schema: a method's defaults live here and only here.
    """

    model_config = ConfigDict(extra="forbid")


class SSLMethod(nn.Module):
    """A backbone plus the heads and loss of one SSL method.

    Subclasses set `name` and `Config`, build their heads in
    `__init__(backbone, feature_dim, cfg, projector)` (`projector` is the study's
    `model.projector` settings: `hidden_dim`, `output_dim`) and implement `training_loss(views)`.
    `backbone` is what the proxies and the final probe evaluate.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    n_views: ClassVar[int] = 2

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def training_loss(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError


METHODS: dict[str, type[SSLMethod]] = {}


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    """Class decorator: make a method available to study files under `cls.name`."""
    if cls.name in METHODS:
        raise ValueError(f"SSL method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls

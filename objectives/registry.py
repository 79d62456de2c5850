"""The method registry and the contract every SSL method follows."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from hpsearch import augment


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
    # The method's default search space: {dotted field path: ParamSpec fields}, e.g.
    # {"objective.temperature": {"type": "float", "low": 0.07, "high": 0.5, "log": True}}.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    # Whether the std of L2-normalised projections is a meaningful collapse signal (not for
    # methods that regularise variance directly, such as VICReg and Barlow Twins).
    collapse_check: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    def make_views(self, images: Tensor, augment_cfg, size: int, generator: torch.Generator) -> list[Tensor]:
        """Augmented views of a uint8 batch, floats in [0, 1]; multi-crop methods override this."""
        return augment.random_views(images, augment_cfg, size, generator, self.n_views)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding the loss works on (the projector's output when there is one), for the
        alignment, uniformity and collapse proxies."""
        projector = getattr(self, "projector", None)
        return projector(self.backbone(x)) if projector is not None else self.backbone(x)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        """The SSL loss of one batch given its (normalised) views."""
        raise NotImplementedError

    def first_call_order(self, n: int, device: torch.device) -> Tensor | None:
        """Which image of the batch each of the first `n` rows of training_loss's first backbone call
        shows, as a [n] long tensor on `device`; None when row i is image i (the first view in batch
        order, alone or first in a concatenation). What the online probe pairs with the labels: a
        method that reorders its batch before the backbone says how here."""
        return None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (step counts from 1): momentum / EMA updates go here."""


METHODS: dict[str, type[SSLMethod]] = {}


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    """Class decorator: make a method available to study files under `cls.name`."""
    if cls.name in METHODS:
        raise ValueError(f"SSL method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls

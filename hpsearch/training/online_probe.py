"""The online linear probe: a linear classifier on the backbone's features of the labelled
pretraining images, trained alongside the SSL loss from the same forward pass.

It reads the features the SSL step already computed (a forward hook on the backbone keeps the
first call's output, detached), so it costs one small matrix product a step and never changes
the backbone. Its running accuracy over an epoch is a proxy that needs no extra pass over any
data (solo-learn reports the same). Unlabelled images (label -1) are skipped, on the device,
without a host sync.

The first call's rows need not be the batch in its order: rotation prediction reorders the batch
by rotation before its one backbone call. The method says which image each row shows
(`SSLMethod.first_call_order`), and the labels are put in that order here, so every method's
features meet their own labels (tests/training/test_online_probe.py checks each method).
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OnlineProbe:
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, device: torch.device, lr: float = 0.1,
                 order: Callable[[int, torch.device], Tensor | None] | None = None):
        # Zero-initialised: no draw from the random generators, so training stays bit-identical.
        self.head = nn.Linear(feature_dim, num_classes).to(device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = torch.zeros((), dtype=torch.int64, device=device)
        self._features: Tensor | None = None
        # (batch size, device) -> the image of each row of the first call, or None: in order.
        self._order = _weakly(order)
        backbone.register_forward_hook(self._capture)

    @classmethod
    def of(cls, method, num_classes: int, device: torch.device) -> "OnlineProbe":
        """The probe of an SSL method (objectives.SSLMethod): on its backbone's first training call,
        with its labels in the order the method declares for that call."""
        return cls(method.backbone, method.feature_dim, num_classes, device, order=method.first_call_order)

    def _capture(self, module: nn.Module, inputs, output: Tensor) -> None:
        if module.training and self._features is None and torch.is_grad_enabled():
            self._features = output.detach()

    def batch(self, labels: Tensor) -> tuple[Tensor, Tensor] | None:
        """The features the step just taken computed and their labels, row for row (None if the
        backbone ran no training forward); `labels` are the batch's images' in batch order."""
        features, self._features = self._features, None
        if features is None:
            return None
        # The first backbone call sees the first view (alone, or first in a concatenation of views),
        # in the order the method declares.
        declared = self._order()
        order = declared(len(labels), labels.device) if declared is not None else None
        return features[: len(labels)], labels if order is None else labels[order]

    def step(self, labels: Tensor) -> None:
        """One update on the features of the step just taken; `labels` are its images' (-1 = none)."""
        pair = self.batch(labels)
        if pair is None:
            return
        features, labels = pair
        logits = self.head(features.float())
        labelled = labels >= 0
        loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / labelled.sum().clamp_min(1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.correct += ((logits.argmax(dim=1) == labels) & labelled).sum()
        self.seen += labelled.sum()

    def epoch_accuracy(self) -> float | None:
        """Accuracy over the epoch's labelled images (None if it saw none); starts the next epoch."""
        correct, seen = int(self.correct), int(self.seen)
        self.correct.zero_()
        self.seen.zero_()
        return correct / seen if seen else None

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "correct": self.correct, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.correct.copy_(state["correct"])
        self.seen.copy_(state["seen"])


def _weakly(function: Callable | None) -> Callable[[], Callable | None]:
    """A getter of `function` that holds a bound method's object weakly: the method's backbone holds
    the probe through its forward hook, and a strong reference back would be a cycle that only the
    garbage collector frees (with a GPU's memory). A plain weakref, unlike WeakMethod, survives the
    deep copies fine-tuning makes of the backbone (hook included)."""
    owner = getattr(function, "__self__", None)
    if owner is None:
        return lambda: function
    owner_ref, unbound = weakref.ref(owner), function.__func__

    def get() -> Callable | None:
        alive = owner_ref()
        return None if alive is None else unbound.__get__(alive)

    return get

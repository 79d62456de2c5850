"""The online linear probe: a linear classifier on the backbone's features of the labelled
pretraining images, trained alongside the SSL loss from the same forward pass.

It reads the features the SSL step already computed (a forward hook on the backbone keeps the
first call's output, detached), so it costs one small matrix product a step and never changes
the backbone. Its running accuracy over an epoch is a proxy that needs no extra pass over any
data (solo-learn reports the same). Unlabelled images (label -1) are skipped, on the device,
without a host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OnlineProbe:
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, device: torch.device, lr: float = 0.1):
        # Zero-initialised: no draw from the random generators, so training stays bit-identical.
        self.head = nn.Linear(feature_dim, num_classes).to(device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = torch.zeros((), dtype=torch.int64, device=device)
        self._features: Tensor | None = None
        backbone.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output: Tensor) -> None:
        if module.training and self._features is None and torch.is_grad_enabled():
            self._features = output.detach()

    def step(self, labels: Tensor) -> None:
        """One update on the features of the step just taken; `labels` are its images' (-1 = none)."""
        features, self._features = self._features, None
        if features is None:
            return
        # The first backbone call sees the first view (alone, or first in a concatenation of views).
        logits = self.head(features[: len(labels)].float())
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

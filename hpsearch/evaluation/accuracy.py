"""Accuracy of predicted labels, overall and per class."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassAccuracy:
    """Accuracy on a labelled set, overall and per class; classes absent from the set are left out
    (their accuracy is undefined). Class keys are label indices."""

    accuracy: float
    per_class: dict[int, float]
    support: dict[int, int]  # images of each class in the set

    @property
    def worst_class(self) -> int:
        """The class with the lowest accuracy (the lowest index among ties)."""
        return min(self.per_class, key=lambda c: (self.per_class[c], c))

    @property
    def worst_accuracy(self) -> float:
        return self.per_class[self.worst_class]


def class_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> ClassAccuracy:
    """Overall and per-class accuracy of predicted labels; the overall accuracy is the per-class
    accuracies' mean weighted by support. One host synchronisation."""
    hits = torch.bincount(labels[predicted == labels], minlength=num_classes)
    support = torch.bincount(labels, minlength=num_classes)
    hits, support = torch.stack([hits, support]).tolist()
    return ClassAccuracy(
        accuracy=sum(hits) / sum(support),
        per_class={c: h / n for c, (h, n) in enumerate(zip(hits, support)) if n},
        support={c: n for c, n in enumerate(support) if n},
    )

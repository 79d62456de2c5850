"""The linear probe: logistic regression on frozen features (the default final metric)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_probe_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int,
                         steps: int, lr: float, weight_decay: float) -> Tensor:
    """Multinomial logistic regression on frozen features, trained full-batch; predicted test labels.

    Features are standardised with the training set's statistics. The problem is convex and the
    weights start at zero, so the result is deterministic and does not depend on an init seed.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head = nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(train_x), train_y).backward()
            optimizer.step()
    with torch.no_grad():
        return head(test_x).argmax(dim=1)


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                          steps: int, lr: float, weight_decay: float) -> Tensor:
    """The linear probe's accuracy on the test set (see linear_probe_predict)."""
    predicted = linear_probe_predict(train_x, train_y, test_x, num_classes, steps, lr, weight_decay)
    return (predicted == test_y).float().mean()

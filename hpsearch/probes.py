"""Evaluating a frozen backbone: feature extraction, the weighted kNN proxy and the linear probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, mean: Tensor, std: Tensor, batch_size: int = 1024) -> Tensor:
    """Backbone features [N, D] of uint8 images [N, C, H, W], in eval mode (BatchNorm uses running stats)."""
    was_training = backbone.training
    backbone.eval()
    scale = std.view(1, -1, 1, 1)
    shift = mean.view(1, -1, 1, 1)
    features = [backbone((chunk.float().div(255) - shift) / scale) for chunk in images.split(batch_size)]
    backbone.train(was_training)
    return torch.cat(features).float()


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float,
                num_classes: int, exclude_self: bool = False) -> Tensor:
    """Weighted cosine kNN (Wu et al. 2018): each of the k most similar bank items votes exp(sim / T).

    bank [B, D], queries [Q, D]; with exclude_self the queries ARE the bank (leave-one-out), so each
    item's similarity to itself is removed. Returns predicted labels [Q].
    """
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    if exclude_self:
        similarity.fill_diagonal_(float("-inf"))
    k = min(k, bank.shape[0] - int(exclude_self))
    top_sim, top_idx = similarity.topk(k, dim=1)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    # Shift by each row's best similarity before exp: same vote ratios, no overflow at small T.
    weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
    votes.scatter_add_(1, bank_labels[top_idx], weights)
    return votes.argmax(dim=1)


def knn_accuracy(features: Tensor, labels: Tensor, k: int, temperature: float, num_classes: int) -> Tensor:
    """Leave-one-out kNN accuracy within one labelled set: the proxy needs no data beyond the probe split."""
    predicted = knn_predict(features, labels, features, k, temperature, num_classes, exclude_self=True)
    return (predicted == labels).float().mean()


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                          steps: int, lr: float, weight_decay: float) -> Tensor:
    """Multinomial logistic regression on frozen features, trained full-batch; accuracy on the test set.

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
        return (head(test_x).argmax(dim=1) == test_y).float().mean()

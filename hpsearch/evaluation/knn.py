"""The weighted kNN classifier: the kNN proxy (leave-one-out on the probe split) and the kNN final metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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

"""The weighted kNN classifier: the kNN proxy (leave-one-out on the probe split) and the kNN final metric.

The query x bank similarity is computed a block of queries at a time, never whole: 50,000 probe
images would make a 10 GB matrix. Row i of the similarity depends on query i alone, and the top-k,
votes and argmax are per row, so blocks change nothing but float rounding, where the matrix
product's kernel depends on its size (on the CPU here: none, the predictions are identical;
tests/evaluation/test_memory.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Similarity entries per block (float32: 4 bytes each, so 128 MiB): a probe split of up to ~5,800
# images is one block, as before; larger ones are split by rows.
SIMILARITY_BLOCK = 1 << 25


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float,
                num_classes: int, exclude_self: bool = False, block_rows: int | None = None) -> Tensor:
    """Weighted cosine kNN (Wu et al. 2018): each of the k most similar bank items votes exp(sim / T).

    bank [B, D], queries [Q, D]; with exclude_self the queries ARE the bank (leave-one-out), so each
    item's similarity to itself is removed. Returns predicted labels [Q]. `block_rows`: queries per
    block of the similarity matrix; None: as many as fit SIMILARITY_BLOCK entries.
    """
    if exclude_self and len(queries) != len(bank):
        raise ValueError(f"exclude_self needs the queries to be the bank, but got {len(queries)=} and {len(bank)=}")
    bank_t = F.normalize(bank, dim=1).T
    k = min(k, bank.shape[0] - int(exclude_self))
    rows = block_rows or max(1, SIMILARITY_BLOCK // max(1, len(bank)))
    predicted = []
    for start in range(0, len(queries), rows):
        similarity = F.normalize(queries[start:start + rows], dim=1) @ bank_t
        if exclude_self:  # query start + i is bank item start + i
            similarity.diagonal(offset=start).fill_(float("-inf"))
        top_sim, top_idx = similarity.topk(k, dim=1)
        del similarity  # before the next block is made
        votes = torch.zeros(len(top_sim), num_classes, device=queries.device)
        # Shift by each row's best similarity before exp: same vote ratios, no overflow at small T.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predicted.append(votes.argmax(dim=1))
    return torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long, device=queries.device)


def knn_accuracy(features: Tensor, labels: Tensor, k: int, temperature: float, num_classes: int) -> Tensor:
    """Leave-one-out kNN accuracy within one labelled set: the proxy needs no data beyond the probe split."""
    predicted = knn_predict(features, labels, features, k, temperature, num_classes, exclude_self=True)
    return (predicted == labels).float().mean()

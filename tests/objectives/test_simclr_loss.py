"""NT-Xent against a naive loop, analytic cases and symmetry."""

import math

import torch
import torch.nn.functional as F

from objectives.simclr import nt_xent


def naive_nt_xent(z1, z2, temperature):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(2 * n) if j != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def test_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert abs(nt_xent(z1, z2, 0.3).item() - naive_nt_xent(z1, z2, 0.3)) < 1e-5


def test_orthogonal_embeddings_with_identical_views_have_the_analytic_value():
    # Views identical, all pairs orthogonal: positive sim 1, the 2n-2 negatives sim 0.
    n, t = 4, 0.5
    z = torch.eye(n)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert abs(nt_xent(z, z.clone(), t).item() - expected) < 1e-6


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    assert torch.allclose(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2))

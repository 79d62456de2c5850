"""Proxies on hand-made features with known answers."""

import math

import pytest
import torch

from hpsearch.evaluation.proxies import alignment, alpha_req, normalised_std, rankme, uniformity


def test_rankme_counts_equal_directions_exactly():
    # k orthogonal directions of equal energy: entropy log k, so RankMe = k.
    features = torch.zeros(8, 6)
    features[:4, :4] = torch.eye(4) * 3
    assert rankme(features).item() == pytest.approx(4.0, rel=1e-5)


def test_rankme_of_a_collapsed_representation_is_one():
    features = torch.ones(16, 8) * torch.linspace(1, 2, 16).unsqueeze(1)  # rank one
    assert rankme(features).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_a_power_law_spectrum(alpha):
    # Features whose covariance has eigenvalues exactly i^-alpha (orthonormal rows, scaled).
    d = 32
    basis = torch.linalg.qr(torch.randn(512, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    scales = torch.arange(1, d + 1, dtype=torch.float64).pow(-alpha / 2)
    features = basis * scales * math.sqrt(511)
    assert alpha_req(features).item() == pytest.approx(alpha, abs=0.05)


def test_alignment_is_zero_for_identical_views_and_four_for_opposite():
    z = torch.randn(10, 5)
    assert alignment(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, -z).item() == pytest.approx(4.0, abs=1e-5)  # ||u - (-u)||^2 = 4 on the unit sphere


def test_uniformity_prefers_spread_points():
    collapsed = torch.ones(20, 3) + 1e-4 * torch.randn(20, 3)
    spread = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    assert uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-3)  # all distances 0: log 1
    assert uniformity(spread).item() < -1.0


def test_normalised_std_separates_healthy_from_collapsed():
    healthy = torch.randn(4096, 64, generator=torch.Generator().manual_seed(2))
    collapsed = torch.ones(4096, 64) + 0.01 * healthy
    assert normalised_std(healthy).item() == pytest.approx(1.0, abs=0.05)  # 1/sqrt(d) per dim, times sqrt(d)
    assert normalised_std(collapsed).item() < 0.05

"""Cheap proxies of representation quality, computed from features of a fixed probe subset.

Formulas and caveats: ../shared/GUIDE.md section 3. All take features [N, D] and return a scalar
tensor (no host sync); rank-type proxies are only comparable between runs of the same method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rankme(features: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular values,
    a smooth effective rank in [1, min(N, D)]."""
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum() + eps
    return torch.exp(-(p * p.log()).sum()).float()


def alpha_req(features: Tensor, min_eigenvalue: float = 1e-10) -> Tensor:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): the decay exponent alpha of the feature covariance
    spectrum, lambda_i ~ i^-alpha, fitted by least squares on log-log axes. Near 1 is good;
    unreliable once the representation has collapsed."""
    centred = features.double() - features.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / (len(features) - 1)).flip(0)
    eigenvalues = eigenvalues[eigenvalues > min_eigenvalue * eigenvalues[0].clamp_min(min_eigenvalue)]
    log_rank = torch.log(torch.arange(1, len(eigenvalues) + 1, dtype=torch.float64, device=features.device))
    log_value = eigenvalues.log()
    slope = ((log_rank - log_rank.mean()) * (log_value - log_value.mean())).sum() / (log_rank - log_rank.mean()).square().sum()
    return (-slope).float()


def alignment(z1: Tensor, z2: Tensor) -> Tensor:
    """Wang & Isola (2020): mean squared distance between normalised embeddings of positive pairs (lower is better)."""
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).square().sum(1).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola (2020): log E exp(-t ||f(x) - f(y)||^2) over distinct pairs (lower is more uniform)."""
    distances = torch.pdist(F.normalize(z, dim=1)).square()
    return torch.logsumexp(-t * distances, dim=0) - torch.log(torch.tensor(float(len(distances))))


def normalised_std(z: Tensor) -> Tensor:
    """Std over the batch of L2-normalised embeddings, averaged over dimensions, times sqrt(D):
    about 1 when healthy, toward 0 as the representation collapses (SimSiam paper)."""
    return F.normalize(z, dim=1).std(dim=0).mean() * z.shape[1] ** 0.5

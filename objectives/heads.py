"""Heads shared by SSL methods."""

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2) -> nn.Sequential:
    """Projector/predictor MLP: (Linear-BN-ReLU) x (n_layers-1), then Linear (SimCLR v1/solo-learn)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)

"""hpsearch around a training loop of your own: a plain-PyTorch encoder defined here, trained with a
SimCLR-style loss on scikit-learn's digits, its kNN accuracy reported each epoch so that hpsearch
can prune, and its linear-probe accuracy on a validation split returned as the trial's value.

    python examples/own_loop.py --workdir hpsearch-runs --n-trials 8

Kill it at any moment and run the same command again: each trial continues from its checkpoint.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import hpsearch

STUDY = {
    "name": "own_loop",
    "n_trials": 8,
    "training": {"epochs": 8},
    "pruning": {"name": "median", "warmup_epochs": 2},
    "recovery": {"checkpoint_every": 1},
}


def digits_splits(seed: int = 0) -> dict[str, torch.Tensor]:
    """Pretraining images (labels unused), a labelled probe set and a validation set, disjoint."""
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(images))
    x = torch.tensor(images[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(labels[order])
    return {"pretrain": x[:1200], "probe_x": x[1200:1500], "probe_y": y[1200:1500],
            "val_x": x[1500:], "val_y": y[1500:]}


class Encoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, 32)  # the projector: dropped after pretraining

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def augment(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator) > 0.2
    return x * keep + noise * torch.randn(x.shape, generator=generator)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(a)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def knn_accuracy(model: Encoder, data: dict, k: int = 10) -> float:
    model.eval()
    bank = F.normalize(model(data["probe_x"]), dim=1)
    query = F.normalize(model(data["val_x"]), dim=1)
    nearest = (query @ bank.T).topk(k, dim=1).indices
    votes = data["probe_y"][nearest].mode(dim=1).values
    model.train()
    return (votes == data["val_y"]).float().mean().item()


def linear_probe(model: Encoder, data: dict, steps: int = 200) -> float:
    model.eval()
    with torch.no_grad():
        train, val = model(data["probe_x"]), model(data["val_x"])
    probe = nn.Linear(train.shape[1], 10)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(train), data["probe_y"]).backward()
        opt.step()
    return (probe(val).argmax(1) == data["val_y"]).float().mean().item()


def objective(trial: hpsearch.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    temperature = trial.suggest_float("temperature", 0.05, 1.0, log=True)
    noise = trial.suggest_float("noise", 0.0, 0.5)
    width = trial.suggest_categorical("width", [64, 128])
    torch.manual_seed(trial.seed)
    data = digits_splits()
    model = Encoder(width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(trial.seed)
    start = 0
    if (saved := trial.load_checkpoint()) is not None:  # after a crash, a pre-emption or Ctrl-C
        start, state = saved
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
    for epoch in range(start + 1, trial.epochs + 1):
        losses = []
        for batch in data["pretrain"][torch.randperm(len(data["pretrain"]), generator=generator)].split(256):
            loss = nt_xent(model.head(model(augment(batch, noise, generator))),
                           model.head(model(augment(batch, noise, generator))), temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        trial.save_checkpoint(epoch, {"model": model.state_dict(), "opt": opt.state_dict(),
                                      "generator": generator.get_state()})
        trial.report_epoch(epoch, knn_accuracy=knn_accuracy(model, data), ssl_loss=float(np.mean(losses)))
    return linear_probe(model, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="hpsearch-runs")
    parser.add_argument("--n-trials", type=int, default=STUDY["n_trials"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = hpsearch.optimize(objective, STUDY, workdir=args.workdir, n_trials=args.n_trials)
    print(f"best value {study.best_value:.4f} with {study.best_params}")


if __name__ == "__main__":
    main()

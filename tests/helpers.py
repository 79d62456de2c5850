"""Helpers the tests share: a tiny study config and the real `hpsearch` command in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def tiny_study(workdir: Path, **changes) -> dict:
    """A study small enough for a test: 2 epochs of SimCLR on 16 px digits, a couple of trials."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "n_trials": 2,
        "workdir": str(workdir),
        "data": {"dataset": "digits", "image_size": 12, "eval_size": 200, "probe_size": 200, "pretrain_size": 512},
        "model": {"width": 8, "projector": {"hidden_dim": 64, "output_dim": 32}},
        "training": {"epochs": 2, "batch_size": 128},
        "evaluation": {"linear_probe": {"steps": 50}},
        "search_space": {
            "training.optimizer.lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
            "objective.temperature": {"type": "float", "low": 0.1, "high": 0.5},
        },
        "pruning": {"name": "none"},
    }
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `hpsearch` command in a subprocess (stdin closed, as in CI)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)

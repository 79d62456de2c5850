import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def extract_small_cifar(root: Path, train: int, test: int, spare: int) -> Path:
    """A small ImageFolder from the shared CIFAR-10 archive: root/train/<class>/ (`train` images each),
    root/test/<class>/ (`test` each) and root/spare/<class>/ (`spare` more train images each, never
    in train/: material for unlabeled/ folders). Skips the test when the archive is not here."""
    import pytest

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} is not here")
    wanted = {"train": train + spare, "test": test}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if len(parts) != 4 or not member.isfile() or int(parts[3][:4]) >= wanted[parts[1]]:
                continue
            split = "spare" if parts[1] == "train" and int(parts[3][:4]) >= train else parts[1]
            target = root / split / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return root


def linked_copy(source: Path, target: Path) -> Path:
    """train/ and test/ of an ImageFolder, hard-linked: fast, and files may be added or removed."""
    for split in ("train", "test"):
        shutil.copytree(source / split, target / split, copy_function=os.link)
    return target


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


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The test's own decoded-image cache, never ~/.cache (modules opt in with `usefixtures`)."""
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mlflow_client(tmp_path):
    def open_client(workdir: Path):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")

    return open_client

"""Helpers the tests share: a tiny study config and the real `hpsearch` command in a subprocess."""

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"  # the local server: trust auth, as in CI
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants, read from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # the process ended while we read
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def command_line(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return None


def process_tree(root: int) -> list[str]:
    """Command lines of `root` and all its descendants."""
    return [c for c in map(command_line, tree_pids(root)) if c is not None]


def is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended, only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until_served(url: str, server: subprocess.Popen, *, timeout: float = 120, output=lambda: "") -> bytes:
    """The body of `url` once it answers; fails when `server` exits first (with `output()`, what it
    printed) or after `timeout` s."""
    deadline = time.time() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            assert server.poll() is None, f"the server exited ({server.returncode}) before {url} answered: {output()}"
            assert time.time() < deadline, f"{url} did not answer within {timeout} s"
            time.sleep(0.5)


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def postgres_available(url: str = POSTGRES) -> bool:
    """Whether the PostgreSQL server the multi-worker tests need answers at `url`."""
    try:
        pg_storage(url)
        return True
    except Exception:
        return False


@functools.cache
def pg_storage(url: str = POSTGRES):
    """One storage per URL for the whole test process, for the tests' own reads and writes. Each
    `optuna.load_study(storage=url_string)` opens an engine whose pooled connections live until the
    garbage collector breaks its reference cycles: a test polling a study that way would exhaust the
    server's 100 connections, and the next test to connect would fail."""
    import optuna

    return optuna.storages.RDBStorage(url)


def needs_postgres(url: str = POSTGRES):
    """Skip a test (or, as `pytestmark`, a module) when PostgreSQL is not running."""
    import pytest

    return pytest.mark.skipif(not postgres_available(url), reason="PostgreSQL at 127.0.0.1:5432 is not running")

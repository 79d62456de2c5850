"""Smoke tests of the benchmark scripts: each runs end to end in its tiny `--quick` mode.

They check that a script still runs against the current code and prints its ratio line; the
figures of a quick run mean nothing, and tests never assert on wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.data.cifar import CIFAR_ARCHIVE as ARCHIVE
from tests.helpers import ROOT


SCRIPTS = {  # script -> the start of the line that carries its figure
    "augment_throughput.py": "ratio hpsearch/torchvision:",
    "trial_throughput.py": "ratio hpsearch/plain:",
    "knn_cost.py": "ratio knn/epoch:",
    "extrapolation_cost.py": "ratio forecast/budget:",
    "streaming_throughput.py": "ratio stream(2 workers)/memory:",
    "peak_memory.py": "| method |",
    "method_knn.py": "methods above the random-init kNN:",
    "replay_pruners.py": "  calibrated: epochs ",
    "workers_throughput.py": "ratio workers(2)/workers(1):",
}


@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"needs the shared CIFAR-10 archive {ARCHIVE}")
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_quick_mode(script):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]  # the script ran to the end
    lines = done.stdout.splitlines()
    assert any(line.startswith(SCRIPTS[script]) for line in lines), done.stdout  # and printed its figure
    assert "| " in done.stdout or "strategy" in done.stdout  # with its table

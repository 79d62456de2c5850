"""Study throughput with N local workers (`hpsearch run --workers N`) against one process.

    python benchmarks/workers_throughput.py                       # quickstart, 8 trials, N = 1 and 2
    python benchmarks/workers_throughput.py --workers 1 2 4 --rounds 3
    python benchmarks/workers_throughput.py --n-trials 2 --epochs 2   # tiny: checks the script runs
    python benchmarks/workers_throughput.py --quick                   # the same, as tests/test_benchmarks.py runs it

Each contender runs the quickstart study (studies/quickstart.yaml) end to end as users run it, in a
fresh temporary work dir: `hpsearch run studies/quickstart.yaml --workers N --n-trials K --set
pruning.name=none --set pruning.args={}` (no pruning, so that every trial trains every epoch and the trials are
comparable). The figure is finished trials per hour of wall time, start-up and the end of the study
included, and the ratio against N = 1 (the median over rounds; contenders alternate within a round).
Results go to benchmarks/results/workers_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "quickstart.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "workers_throughput.json"


def one_run(n_workers: int, n_trials: int, epochs: int | None) -> float:
    """Wall seconds of one whole study with `n_workers` workers, in a fresh work dir."""
    with tempfile.TemporaryDirectory(prefix=f"workers{n_workers}-") as workdir:
        command = [sys.executable, "-m", "hpsearch", "run", str(STUDY), "--workers", str(n_workers),
                   "--n-trials", str(n_trials), "--workdir", workdir,
                   "--set", "pruning.name=none", "--set", "pruning.args={}"]  # the median pruner's args do not apply
        if epochs is not None:
            command += ["--set", f"training.epochs={epochs}"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"--workers {n_workers} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (1 first)")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, help="training.epochs (default: the quickstart's)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 epochs: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.n_trials, args.epochs = 2, 2
    counts = sorted(set(args.workers) | {1})
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        for n in counts if round_ % 2 == 0 else reversed(counts):  # alternate which goes first
            seconds[n].append(one_run(n, args.n_trials, args.epochs))
            print(f"round {round_ + 1}: --workers {n}: {seconds[n][-1]:.1f} s", flush=True)

    per_hour = {n: args.n_trials * 3600 / statistics.median(s) for n, s in seconds.items()}
    print(f"\nquickstart, {args.n_trials} trials, pruning none, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, {args.rounds} round(s)")
    print("| workers | median wall s | trials / hour | vs 1 worker |")
    print("|---|---|---|---|")
    for n in counts:
        print(f"| {n} | {statistics.median(seconds[n]):.1f} | {per_hour[n]:.0f} | {per_hour[n] / per_hour[1]:.2f} |")
    for n in counts[1:]:
        print(f"ratio workers({n})/workers(1): {per_hour[n] / per_hour[1]:.2f}")
    if args.quick:  # a check that the script runs: its figures mean nothing, keep the committed ones
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(), "load": os.getloadavg()[0],
        "n_trials": args.n_trials, "epochs": args.epochs, "rounds": args.rounds,
        "seconds": {str(n): s for n, s in seconds.items()},
        "trials_per_hour": {str(n): v for n, v in per_hour.items()},
        "ratio_vs_1": {str(n): per_hour[n] / per_hour[1] for n in counts},
    }, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

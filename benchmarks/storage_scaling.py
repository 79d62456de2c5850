"""Optuna storage operations per trial, and their latency, against the number of workers sharing one
study: what a many-machine study costs its database, before any training.

    python benchmarks/storage_scaling.py                                   # the local PostgreSQL, 1/2/4/8 workers
    python benchmarks/storage_scaling.py --storage sqlite:////tmp/s.db --workers 1 2
    python benchmarks/storage_scaling.py --quick                           # checks the script runs, measures nothing

Each worker is a process of its own running what an hpsearch trial asks of the storage, without
the training: the trial is asked for (TPE, 6 params), reports 15 epochs each followed by
`should_prune` (median pruner, which reads the study's trials at every call), sets the user attrs
hpsearch keeps, and is told its value, with the heartbeat on, as `hpsearch run` does. Every SQL
statement the worker's engine runs is counted and timed (SQLAlchemy cursor events), so the figures
are statements per trial and milliseconds per statement; the ratio column compares each row's
statement latency with 1 worker's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def objective(trial) -> float:
    x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)]
    trial.set_user_attr("worker", {"host": "bench", "pid": 0, "started": 0})
    trial.set_user_attr("mlflow_run_id", uuid.uuid4().hex)
    for epoch in range(1, 16):
        trial.report(sum(x) * epoch / 15, epoch)
        trial.set_user_attr("epochs_trained", epoch)
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned()
    return sum(x)


def worker(url: str, study_name: str, trials: int, start, results) -> None:
    import warnings

    import optuna
    from sqlalchemy import event

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    timings: list[float] = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(storage.engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        timings.append(time.perf_counter() - conn.info.pop("t0"))

    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.TPESampler(n_startup_trials=5, constant_liar=True),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=5))
    start.wait()
    timings.clear()  # the statements of loading the study are not a trial's
    began = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    results.put({"statements": len(timings), "seconds_in_db": sum(timings), "wall": time.perf_counter() - began,
                 "trials": trials, "median_ms": 1000 * statistics.median(timings) if timings else 0.0})


def measure(url: str, workers: int, trials: int) -> dict:
    import optuna

    name = f"storage-bench-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=url, direction="maximize")
    context = mp.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=worker, args=(url, name, trials, start, results)) for _ in range(workers)]
    for p in processes:
        p.start()
    time.sleep(2.0)  # let every worker load the study before the clock starts
    start.set()
    rows = [results.get(timeout=1800) for _ in processes]
    for p in processes:
        p.join()
    optuna.delete_study(study_name=name, storage=url)
    statements = sum(r["statements"] for r in rows)
    total_trials = sum(r["trials"] for r in rows)
    return {"workers": workers, "statements_per_trial": statements / total_trials,
            "ms_per_statement": 1000 * sum(r["seconds_in_db"] for r in rows) / statements,
            "median_ms": statistics.median(r["median_ms"] for r in rows),
            "db_seconds_per_trial": sum(r["seconds_in_db"] for r in rows) / total_trials,
            "trials_per_second": total_trials / max(r["wall"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=POSTGRES)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=20, help="trials per worker")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials = [1, 2], 3
    rows = [measure(args.storage, w, args.trials) for w in args.workers]
    base = rows[0]["ms_per_statement"]
    print(f"{machine()}; storage {args.storage.split('@')[-1]}; {args.trials} trials per worker, "
          "15 reports + should_prune each, median pruner, TPE")
    print(table(["workers", "statements/trial", "ms/statement", "median ms", "vs 1 worker", "db s/trial", "trials/s"],
                [[r["workers"], f"{r['statements_per_trial']:.0f}", f"{r['ms_per_statement']:.2f}", f"{r['median_ms']:.2f}",
                  f"{r['ms_per_statement'] / base:.2f}x", f"{r['db_seconds_per_trial']:.3f}",
                  f"{r['trials_per_second']:.2f}"] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

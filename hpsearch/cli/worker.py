"""`hpsearch worker STUDY.yaml`: pull trials from a shared study until it holds its total.

Start any number, on any number of machines (PostgreSQL storage across machines): each takes the
next trial the study has, continues the trials of workers that died from their checkpoints, and
exits 0 once every trial is taken; the one that ends the study finalises it (test split, report).
"""

from __future__ import annotations

import os


def add_command(commands) -> None:
    worker = commands.add_parser("worker", help="pull trials from a shared study until it holds its n_trials")
    worker.add_argument("study_file", help="path to the study YAML file (the same for every worker)")
    worker.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a study-file field, e.g. --set training.epochs=5 (repeatable)")
    worker.add_argument("--storage", help="Optuna storage URL the workers share (default sqlite:///<workdir>/optuna.db)")
    worker.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<workdir>/mlflow.db)")
    worker.add_argument("--workdir", help="work directory (default ./hpsearch-runs)")
    worker.add_argument("--force", action="store_true", help="continue the study even if the file changes its search")
    worker.set_defaults(handler=_worker, n_trials=None, seed=None, workers=1)


def _worker(args, argv: list[str]) -> int:
    from hpsearch.cli.run import _run
    from hpsearch.study.finalise import ROLE_ENV

    os.environ[ROLE_ENV] = "worker"  # one of many: a study that ended already is only reported in one line
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():  # `hpsearch run --workers N` splits the cores this way
        import torch

        torch.set_num_threads(int(threads))
    return _run(args, argv)  # a worker runs the study as `hpsearch run` does, with its exits

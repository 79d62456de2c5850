"""`hpsearch ui`: the MLflow UI on a work directory, light and bound to 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpsearch.cli.errors import bad_input


def add_command(commands) -> None:
    ui = commands.add_parser("ui", help="start the MLflow UI on a work directory, bound to 127.0.0.1")
    ui.add_argument("--workdir", default="hpsearch-runs", help="work directory (default ./hpsearch-runs)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1,
                    help="MLflow web workers (default 1: one user browsing one study needs no more)")
    ui.add_argument("--with-jobs", action="store_true",
                    help="also start MLflow's GenAI job runners (off by default: the runs table, charts and "
                         "compare views do not use them; measured: 8 more processes, ~1.9 GB)")
    ui.set_defaults(handler=lambda args, argv: _ui(Path(args.workdir), args.port, args.workers, args.with_jobs))


def _ui(workdir: Path, port: int, workers: int = 1, with_jobs: bool = False) -> int:
    database = workdir.resolve() / "mlflow.db"
    if not database.exists():
        return bad_input(f"{database}: no MLflow database here; run a study with --workdir {workdir} first")
    if workers < 1:
        return bad_input(f"--workers must be at least 1, got {workers}")
    # Through this interpreter, not `mlflow` on PATH: a venv's bin/hpsearch called by its full path
    # must find the mlflow installed next to it.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{database}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    env = dict(os.environ)
    if not with_jobs:
        # MLflow 3.17 otherwise starts a job runner and 8 huey consumers for its GenAI features: with
        # 4 web workers, 15 processes and ~3.2 GB for a small store; light, 2 processes and ~0.5 GB.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    print(f"MLflow UI on http://127.0.0.1:{port} (runs table: add #/experiments/<id>/runs?workflowType=machine_learning)",
          flush=True)
    # exec, so the server is this process: Ctrl-C and a kill of `hpsearch ui` reach it directly.
    os.execve(sys.executable, command, env)

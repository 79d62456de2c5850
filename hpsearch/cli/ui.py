"""`hpsearch ui`: the MLflow UI on a work directory, light and bound to 127.0.0.1; with `--dashboard`
also optuna-dashboard on the study's Optuna storage, the two run and stopped together."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpsearch.cli.errors import bad_input

HOST = "127.0.0.1"  # both servers: what they show is nobody else's business
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, a kill, the terminal closing
STOP_WAIT = 10  # seconds a server may take to shut down before it is killed


def add_command(commands) -> None:
    ui = commands.add_parser("ui", help="start the MLflow UI (and optuna-dashboard) on a work directory, "
                                        "bound to 127.0.0.1")
    ui.add_argument("--workdir", default="hpsearch-runs", help="work directory (default ./hpsearch-runs)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1,
                    help="MLflow web workers (default 1: one user browsing one study needs no more)")
    ui.add_argument("--with-jobs", action="store_true",
                    help="also start MLflow's GenAI job runners (off by default: the runs table, charts and "
                         "compare views do not use them; measured: 8 more processes, ~1.9 GB)")
    ui.add_argument("--dashboard", action="store_true",
                    help="also start optuna-dashboard on the Optuna storage (pip install -e \".[dashboard]\")")
    ui.add_argument("--dashboard-port", type=int, default=8080)
    ui.add_argument("--storage", help="with --dashboard: Optuna storage URL (default sqlite:///<workdir>/optuna.db)")
    ui.set_defaults(handler=_ui)


def _ui(args, argv: list[str]) -> int:
    workdir = Path(args.workdir)
    database = workdir.resolve() / "mlflow.db"
    if not database.exists():
        return bad_input(f"{database}: no MLflow database here; run a study with --workdir {workdir} first")
    if args.workers < 1:
        return bad_input(f"--workers must be at least 1, got {args.workers}")
    if args.storage and not args.dashboard:
        return bad_input("--storage is the dashboard's: add --dashboard")
    ports = [args.port, *([args.dashboard_port] if args.dashboard else [])]
    if len(set(ports)) < len(ports):
        return bad_input(f"--port and --dashboard-port are both {args.port}: give the dashboard another")
    from hpsearch.tracking.server import bind_error, server_command, server_env

    refused = next(filter(None, (bind_error(HOST, port) for port in ports)), None)
    if refused is not None:
        return bad_input(refused)
    try:
        dashboard = _dashboard_server(args.storage, args.workdir, args.dashboard_port) if args.dashboard else None
    except CannotStart as err:
        return bad_input(err)
    mlflow = server_command(f"sqlite:///{database}", HOST, args.port, args.workers)
    env = server_env(with_jobs=args.with_jobs)
    print(f"MLflow UI on http://{HOST}:{args.port} (runs table: add #/experiments/<id>/runs?workflowType=machine_learning)",
          flush=True)
    if dashboard is None:
        exec_server(mlflow, env)
    print(f"optuna-dashboard on http://{HOST}:{args.dashboard_port} (Ctrl-C stops both)", flush=True)
    return _supervise({"the MLflow UI": (mlflow, env),
                       "optuna-dashboard": (dashboard, dict(os.environ))})


def exec_server(command: list[str], env: dict[str, str]):
    """Become the server: Ctrl-C and a kill of this process reach it directly, and what it starts
    (MLflow's uvicorn) it stops itself."""
    sys.stdout.flush()
    os.execve(command[0], command, env)


class CannotStart(Exception):
    """The dashboard cannot start; the message says why in one line."""


def _dashboard_server(storage: str | None, workdir: str, port: int) -> list[str]:
    """The optuna-dashboard command on the Optuna storage of `--storage` or the work dir."""
    if importlib.util.find_spec("optuna_dashboard") is None:  # an optional extra
        raise CannotStart('optuna-dashboard is not installed: install it with pip install -e ".[dashboard]"')
    from hpsearch.study.status import open_storage, storage_location
    from hpsearch.study.storage import StorageError
    from hpsearch.study.studyfile import StudyFileError

    try:
        url = storage_location(storage, workdir)
        open_storage(url)  # an unreachable URL is one line here, not a dashboard that dies at start
    except (StudyFileError, StorageError) as err:
        raise CannotStart(err) from None
    # The `optuna-dashboard` script's own entry (it has no __main__); wsgiref, one threaded process,
    # because `auto` picks gunicorn when installed (MLflow brings it): a master and a worker.
    return [sys.executable, "-m", "optuna_dashboard._cli", url, "--host", HOST, "--port", str(port),
            "--server", "wsgiref"]


def _supervise(servers: dict[str, tuple[list[str], dict[str, str]]]) -> int:
    """Run the servers until one ends or this process is told to stop; then stop all of them. Each
    runs in a session of its own, so Ctrl-C on the terminal reaches only this process, which stops
    them with SIGTERM (quietly: no server prints a KeyboardInterrupt traceback), and so that killing
    a server's process group also ends what it started (MLflow's uvicorn)."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in STOP_SIGNALS}
    running: dict[str, subprocess.Popen] = {}
    try:
        for name, (command, env) in servers.items():
            if not received:
                running[name] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        ended = None
        while not received and ended is None:
            ended = next((name for name, server in running.items() if server.poll() is not None), None)
            time.sleep(0.2)
    finally:
        for server in running.values():
            _signal_group(server, signal.SIGTERM)
        for server in running.values():
            _wait_group(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"hpsearch: stopped {' and '.join(running)} ({signal.Signals(received[0]).name})", file=sys.stderr)
        return 128 + received[0]
    code = running[ended].returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    print(f"hpsearch: {ended} {how}; stopped {' and '.join(n for n in running if n != ended)}", file=sys.stderr)
    return 1


def _signal_group(server: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended already
        os.killpg(server.pid, sig)


def _wait_group(server: subprocess.Popen) -> None:
    """Wait for the server and every process of its group, killing what is left after STOP_WAIT s."""
    deadline = time.monotonic() + STOP_WAIT
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=STOP_WAIT)
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)  # still someone in the group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _signal_group(server, signal.SIGKILL)
    server.wait()

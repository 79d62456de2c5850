"""`hpsearch server`: the MLflow tracking server that the workers of many machines log to over
HTTP, on PostgreSQL or SQLite, with artifacts uploaded through it (no shared file system)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from hpsearch.cli.errors import bad_input

DEFAULT_HOME = Path("hpsearch-server")
DEFAULT_BACKEND = f"sqlite:///./{DEFAULT_HOME}/mlflow.db"
DEFAULT_ARTIFACTS = f"./{DEFAULT_HOME}/mlartifacts"


def add_command(commands) -> None:
    server = commands.add_parser(
        "server", help="start the MLflow tracking server that workers log to (--tracking-uri http://HOST:PORT)")
    server.add_argument("--backend-store-uri", default=DEFAULT_BACKEND, metavar="URI",
                        help=f"postgresql://USER[:PASSWORD]@HOST:PORT/DB (the database is created if missing; "
                             f"a password may also come from PGPASSWORD or ~/.pgpass) or sqlite:///PATH "
                             f"(default {DEFAULT_BACKEND})")
    server.add_argument("--artifacts-destination", default=DEFAULT_ARTIFACTS, metavar="DIR",
                        help=f"where the server keeps the artifacts workers upload through it (default {DEFAULT_ARTIFACTS})")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for workers on other machines: "
                             "anyone who reaches it can read and write runs)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--workers", type=int, default=1, help="web workers (default 1)")
    server.set_defaults(handler=_server)


def _server(args, argv: list[str]) -> int:
    from hpsearch.cli.ui import exec_server
    from hpsearch.tracking.server import (bind_error, create_database, create_tables, is_loopback, is_postgres,
                                          server_command, server_env, without_password)
    from hpsearch.tracking.urls import mask

    if args.workers < 1:
        return bad_input(f"--workers must be at least 1, got {args.workers}")
    if (refused := bind_error(args.host, args.port)) is not None:
        return bad_input(refused)
    backend = args.backend_store_uri
    if backend.startswith("sqlite:///"):
        backend = _absolute_sqlite(backend)
    elif not is_postgres(backend):
        return bad_input(f"--backend-store-uri {mask(backend)}: give a postgresql:// or sqlite:/// URI")
    shown = mask(backend)
    # The password reaches the server as PGPASSWORD: a command line is visible to every user in `ps`.
    bare, password = without_password(backend)
    artifacts = Path(args.artifacts_destination).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        if is_postgres(backend):
            create_database(backend)
        create_tables(backend)
    except Exception as err:  # psycopg, SQLAlchemy and MLflow each raise their own
        return bad_input(f"cannot prepare the MLflow backend {shown}: {_first_line(err, password)}")
    names = [] if is_loopback(args.host) else _host_names(args.host)
    command = server_command(bare, args.host, args.port, args.workers, artifacts_destination=artifacts)
    env = server_env(password=password, host_names=names)
    url = f"http://{_url_host(args.host)}:{args.port}"
    worker_url = f"http://{names[0] if names else _url_host(args.host)}:{args.port}"
    print(f"MLflow tracking server on {url} (backend {shown}, "
          f"artifacts {artifacts}); workers: --tracking-uri {worker_url}", flush=True)
    if names:
        print(f"hpsearch: warning: listening on {args.host}, not only this machine: anyone who can reach port "
              f"{args.port} can read and write runs (MLflow asks for no password)", file=sys.stderr, flush=True)
    exec_server(command, env)


def _absolute_sqlite(uri: str) -> str:
    """A SQLite URI with an absolute path (its folder created): the server's working directory is
    this one, but the line printed for the user should not depend on it."""
    path, _, query = uri.removeprefix("sqlite:///").partition("?")
    database = Path(path).expanduser().resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}" + (f"?{query}" if query else "")


def _host_names(host: str) -> list[str]:
    """The names workers on other machines may call this one by: the address bound to, or for
    all addresses (0.0.0.0, ::) this machine's name first."""
    if host in ("0.0.0.0", "::"):
        return list(dict.fromkeys(n for n in (socket.gethostname(), socket.getfqdn()) if n))
    return [host]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _first_line(err: Exception, password: str | None) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return text.replace(password, "***") if password else text

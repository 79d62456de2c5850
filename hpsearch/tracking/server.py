"""Starting an MLflow server, light: the command and environment `hpsearch ui` (a work dir's UI)
and `hpsearch server` (the tracking server that many machines' workers log to) both run, and
what a server's backend needs before it starts (its database and tables, a password kept off
the command line)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

# Where a server that proxies artifacts tells clients they are: it stores them in its
# --artifacts-destination (what `mlflow server --serve-artifacts` resolves its default root to).
PROXIED_ARTIFACT_ROOT = "mlflow-artifacts:/"


def server_command(backend_uri: str, host: str, port: int, workers: int,
                   artifacts_destination: Path | None = None) -> list[str]:
    """`python -m mlflow server` on `backend_uri`; with `artifacts_destination`, artifacts are
    uploaded through the server (workers need no shared file system) and kept there."""
    # Through this interpreter, not `mlflow` on PATH: a venv's bin/hpsearch called by its full path
    # must find the mlflow installed next to it.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--host", host, "--port", str(port), "--workers", str(workers)]
    if artifacts_destination is not None:
        command += ["--serve-artifacts", "--artifacts-destination", str(artifacts_destination)]
    return command


def server_env(with_jobs: bool = False, password: str | None = None, host_names: list[str] = ()) -> dict[str, str]:
    """This process's environment, with `password` as libpq's PGPASSWORD (so it is on no command
    line) and `host_names` added to the Host headers MLflow accepts."""
    env = dict(os.environ)
    if not with_jobs:
        # MLflow 3.17 otherwise starts a job runner and 8 huey consumers for its GenAI features: with
        # 4 web workers, 15 processes and ~3.2 GB for a small store; light, 2 processes and ~0.5 GB.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if password is not None:
        env["PGPASSWORD"] = password
    if host_names and "MLFLOW_SERVER_ALLOWED_HOSTS" not in env:
        # MLflow accepts only localhost and private IPs in the Host header (DNS rebinding
        # protection): workers calling this machine by its name would get 403 otherwise.
        from mlflow.server.security_utils import get_default_allowed_hosts

        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join(
            [*get_default_allowed_hosts(), *(name + any_port for name in host_names for any_port in ("", ":*"))])
    return env


def without_password(uri: str) -> tuple[str, str | None]:
    """A PostgreSQL URI without its password, and the password (None when it has none)."""
    from sqlalchemy.engine import URL, make_url

    url = make_url(uri)
    if not url.drivername.startswith("postgresql") or url.password is None:
        return uri, None
    # URL.set(password=None) keeps the password: None there means "unchanged".
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return bare.render_as_string(hide_password=False), str(url.password)


def is_postgres(uri: str) -> bool:
    return uri.startswith(("postgresql://", "postgresql+"))


def create_database(uri: str) -> bool:
    """Create the PostgreSQL database `uri` names when it does not exist, through the server's
    `postgres` database; True when it was created. Raises psycopg.Error when the server cannot be
    reached or refuses."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    conninfo = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
                "connect_timeout": 10,  # an unroutable host: a line after 10 s, not the kernel's minutes
                **{k: v for k, v in url.query.items() if isinstance(v, str)}}
    with psycopg.connect(dbname="postgres", autocommit=True,
                         **{k: v for k, v in conninfo.items() if v is not None}) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
            return False
        try:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
        except psycopg.errors.DuplicateDatabase:  # another server started at the same moment
            return False
    return True


def create_tables(uri: str, artifact_root: str = PROXIED_ARTIFACT_ROOT) -> None:
    """Create or upgrade MLflow's tables now, in this process, so that the server's web workers
    and the workers that connect at once never race a migration."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(uri, artifact_root).engine.dispose()


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on `host`:`port` (in one line), or None when it can."""
    import errno

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use: pick another port"
            return f"cannot listen on {host}:{port}: {err.strerror or err}"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False

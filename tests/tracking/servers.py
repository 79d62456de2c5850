"""A real `hpsearch server` for the tracking tests: started in a session of its own (so that
stopping its group stops its web worker too), its output kept in a log file."""

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import stop_group, wait_until_served

START_TIMEOUT = 240  # seconds: importing MLflow twice and migrating a fresh database, on a busy machine


def start_server(cwd: Path, port: int, *options: str, log: Path) -> subprocess.Popen:
    """`hpsearch server --port PORT OPTIONS` run in `cwd`, once /health answers."""
    server = subprocess.Popen([sys.executable, "-m", "hpsearch", "server", "--port", str(port), *options], cwd=cwd,
                              stdin=subprocess.DEVNULL, stdout=log.open("a"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_until_served(f"http://127.0.0.1:{port}/health", server, timeout=START_TIMEOUT, output=log.read_text)
    except BaseException:
        stop_group(server)
        raise
    return server


def wait_for(condition, *, timeout: float, what: str):
    """`condition()`'s first true value, polled every half second."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.5)
    return value

"""`hpsearch ui --dashboard`: the MLflow UI and optuna-dashboard started, served and stopped together
as real processes, by real signals, with no process left behind."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import command_line, free_port, is_alive, run_cli, tree_pids, wait_until_served


@contextlib.contextmanager
def ui_with_dashboard(workdir, log):
    """`hpsearch ui --dashboard` on free ports, once both answer: (process, MLflow port, dashboard port,
    its process tree then). Whatever is left is killed at the end, so a failing test leaks nothing."""
    port, dashboard_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "hpsearch", "ui", "--workdir", str(workdir), "--port", str(port),
                               "--dashboard", "--dashboard-port", str(dashboard_port)],
                              stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    pids = [server.pid]
    try:
        wait_until_served(f"http://127.0.0.1:{port}/health", server, output=log.read_text)
        studies = json.loads(wait_until_served(f"http://127.0.0.1:{dashboard_port}/api/studies", server,
                                               output=log.read_text))
        assert [s["study_name"] for s in studies["study_summaries"]] == ["tiny"]
        pids = tree_pids(server.pid)
        yield server, port, dashboard_port, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait()


def refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
def test_a_signal_stops_both_servers_with_one_line(finished_tiny_study, tmp_path, sig):
    log = tmp_path / "ui.log"
    with ui_with_dashboard(finished_tiny_study, log) as (server, port, dashboard_port, pids):
        commands = " ".join(filter(None, map(command_line, pids)))
        assert "mlflow server" in commands and "optuna_dashboard" in commands
        assert "--host 127.0.0.1" in commands and "0.0.0.0" not in commands

        os.kill(server.pid, sig)  # Ctrl-C on a terminal reaches only it: each server has a session of its own
        assert server.wait(timeout=60) == 128 + sig
        out = log.read_text()
        assert out.splitlines()[-1] == f"hpsearch: stopped the MLflow UI and optuna-dashboard ({sig.name})"
        assert "Traceback" not in out
        assert refuses(port) and refuses(dashboard_port)
        assert [pid for pid in pids if is_alive(pid)] == []  # no orphan


def test_when_one_server_dies_the_other_is_stopped(finished_tiny_study, tmp_path):
    log = tmp_path / "ui.log"
    with ui_with_dashboard(finished_tiny_study, log) as (server, port, dashboard_port, pids):
        (dashboard,) = [pid for pid in pids if "optuna_dashboard" in (command_line(pid) or "")]
        os.kill(dashboard, signal.SIGKILL)
        assert server.wait(timeout=60) == 1
        assert log.read_text().splitlines()[-1] == "hpsearch: optuna-dashboard was killed by SIGKILL; stopped the MLflow UI"
        assert refuses(port)
        assert [pid for pid in pids if is_alive(pid)] == []


def test_a_busy_dashboard_port_is_one_line_before_anything_starts(finished_tiny_study, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_cli("ui", "--workdir", str(finished_tiny_study), "--port", str(free_port()), "--dashboard",
                         "--dashboard-port", str(busy), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"hpsearch: error: 127.0.0.1:{busy} is in use: pick another port\n"


def test_without_optuna_dashboard_installed_it_says_how_to_install_it(finished_tiny_study, tmp_path):
    # An interpreter that cannot import optuna_dashboard (None in sys.modules blocks the import).
    code = ("import sys; sys.modules['optuna_dashboard'] = None; from hpsearch.cli import main; "
            f"sys.exit(main(['ui', '--workdir', {str(finished_tiny_study)!r}, '--port', '{free_port()}', '--dashboard']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""  # no link to a server that will not start
    assert result.stderr == 'hpsearch: error: optuna-dashboard is not installed: install it with pip install -e ".[dashboard]"\n'

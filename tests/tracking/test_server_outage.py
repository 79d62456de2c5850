"""A real `hpsearch run` logging to a real `hpsearch server` that is stopped in the middle of a
trial: restarted in time, the run (two worker processes) goes on and loses no metric, none is logged twice; gone longer
than `tracking.retry_seconds`, the run stops (exit 75, one line) and the next run continues the
trial from its checkpoint."""

import contextlib
import subprocess
import sys
import time

import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import free_port, run_cli, stop_group, tiny_study
from tests.tracking.servers import start_server, wait_for

EXIT_TEMPFAIL = 75
# Every trial trains all its epochs: no pruner, no SSL heuristic (a slow tiny trial may look "not learning").
NO_PRUNING = {"pruning.heuristics": {rule: {"enabled": False} for rule in ("collapse", "no_learning", "plateau")}}


def start_run(tmp_path, cfg: dict, *options: str) -> tuple[subprocess.Popen, object]:
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out, err = (tmp_path / "run.out").open("w"), (tmp_path / "run.err").open("w")
    run = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", "study.yaml", *options], cwd=tmp_path,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    return run, lambda: (tmp_path / "run.out").read_text() + (tmp_path / "run.err").read_text()


def trial_runs(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "hpsearch.trial" in r.data.tags]


def mid_trial(client: MlflowClient, name: str, epochs: int) -> bool:
    """A trial has logged its second epoch and has epochs left to train."""
    return any(2 <= len(client.get_metric_history(r.info.run_id, "ssl_loss")) < epochs - 1
               for r in trial_runs(client, name))


def assert_each_epoch_once(client: MlflowClient, name: str, epochs: int, eval_every: int, trials: int) -> None:
    runs = trial_runs(client, name)
    assert len(runs) == trials
    evaluated = [e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs]
    for run in runs:
        steps = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                 for key in run.data.metrics}
        for key in ("ssl_loss", "lr", "epoch_time_s"):
            assert steps[key] == list(range(1, epochs + 1)), (run.info.run_name, key, steps[key])
        assert steps["knn_accuracy"] == evaluated, (run.info.run_name, steps["knn_accuracy"])
        for key, logged in steps.items():
            assert len(logged) == len(set(logged)), (run.info.run_name, key, logged)  # none twice
        assert run.info.status == "FINISHED"


@contextlib.contextmanager
def server_stopped_mid_trial(tmp_path, port: int, cfg: dict, *options: str):
    """A real `hpsearch server` and a real `hpsearch run` logging to it; yields once a trial has
    logged its second epoch and the server was stopped: (the run, its output so far, a call that
    starts the server again on the same port and backend). Whatever runs is stopped at the end."""
    log = tmp_path / "server.log"
    servers = [start_server(tmp_path, port, log=log)]
    run, output = start_run(tmp_path, cfg, *options)
    try:
        wait_for(lambda: mid_trial(MlflowClient(f"http://127.0.0.1:{port}"), cfg["name"], cfg["training"]["epochs"]),
                 timeout=600, what="a trial's second epoch")
        stop_group(servers[0])
        yield run, output, lambda: servers.append(start_server(tmp_path, port, log=log))
    finally:
        stop_group(run)
        for server in servers:
            stop_group(server)


def test_a_server_restarted_in_the_middle_of_a_trial_loses_no_metric(tmp_path):
    port = free_port()
    url, epochs, eval_every = f"http://127.0.0.1:{port}", 8, 2
    cfg = tiny_study(tmp_path / "runs", **NO_PRUNING, **{"training.epochs": epochs, "evaluation.eval_every": eval_every,
                                                         "tracking.uri": url})
    # Two worker processes log over HTTP, each to its own trial run, both through the outage.
    with server_stopped_mid_trial(tmp_path, port, cfg, "--workers", "2") as (run, output, restart):
        time.sleep(8)  # training goes on meanwhile
        restart()
        assert run.wait(timeout=900) == 0, output()
        err = (tmp_path / "run.err").read_text()
        assert (f"MLflow {url} unreachable (" in err and "training goes on, metrics are queued; retrying for up to "
                "300 s" in err), err
        assert f"MLflow {url} is back after " in err
        assert_each_epoch_once(MlflowClient(url), "tiny", epochs, eval_every, trials=2)


def test_a_server_gone_longer_than_retry_seconds_stops_the_run_resumably(tmp_path):
    port = free_port()
    url, epochs = f"http://127.0.0.1:{port}", 6
    cfg = tiny_study(tmp_path / "runs", n_trials=1, **NO_PRUNING, **{
        "training.epochs": epochs, "evaluation.eval_every": 1, "tracking.uri": url, "tracking.retry_seconds": 3})
    with server_stopped_mid_trial(tmp_path, port, cfg) as (run, output, restart):
        assert run.wait(timeout=300) == EXIT_TEMPFAIL, output()
        err = (tmp_path / "run.err").read_text()
        stopped = [line for line in err.splitlines() if line.startswith("hpsearch:")]
        assert len(stopped) == 1, err
        assert stopped[0].startswith(f"hpsearch: MLflow {url} unreachable for over 3 s (tracking.retry_seconds): "), err
        assert stopped[0].endswith("; the running trial keeps its checkpoint. Continue with: hpsearch run study.yaml")
        assert "Traceback" not in err and "Trial 0 failed" not in err  # Optuna's record of the stopped trial

        restart()
        again = run_cli("run", "study.yaml", cwd=tmp_path, timeout=900)
        assert again.returncode == 0, again.stderr
        assert "continuing trial 0 from its checkpoint at epoch " in again.stdout
        assert_each_epoch_once(MlflowClient(url), "tiny", epochs, 1, trials=1)

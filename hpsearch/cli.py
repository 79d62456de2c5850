"""The `hpsearch` command: `run` a study file, `resume` a study, open the MLflow `ui` on its results,
`report` how well its proxies predicted the final metric, `export` a study's curves and `replay`
pruning strategies on them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from hpsearch.replay.command import add_commands as add_replay_commands

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpsearch", description="Tune self-supervised pretraining with Optuna and MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run or continue the study a YAML file describes")
    run.add_argument("study_file", help="path to the study YAML file")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                     help="override a study-file field, e.g. --set training.epochs=5 (repeatable)")
    run.add_argument("--force", action="store_true", help="continue an existing study even if the file changes its search")
    _add_shared_options(run)
    run.add_argument("--seed", type=int, help="seed of the sampler and of every trial")

    resume = commands.add_parser("resume", help="continue a study from the config stored with it")
    resume.add_argument("study_name")
    _add_shared_options(resume)

    report = commands.add_parser("report", help="a study's trials and how well each proxy predicted the final metric")
    report.add_argument("study_name")
    report.add_argument("--storage", help="Optuna storage URL (default sqlite:///<workdir>/optuna.db)")
    report.add_argument("--workdir", help="work directory (default ./hpsearch-runs)")
    report.add_argument("--json", action="store_true", help="print the calibration records as JSON")
    report.add_argument("--test", action="store_true",
                        help="measure the best trials (by validation value) on the test split, from their kept "
                             "checkpoints, and show both figures")
    report.add_argument("--top", type=int, default=None, metavar="K",
                        help="with --test: how many of the best trials (default: evaluation.test_top_k, at least 1)")

    add_replay_commands(commands)

    ui = commands.add_parser("ui", help="start the MLflow UI on a work directory, bound to 127.0.0.1")
    ui.add_argument("--workdir", default="hpsearch-runs", help="work directory (default ./hpsearch-runs)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1,
                    help="MLflow web workers (default 1: one user browsing one study needs no more)")
    ui.add_argument("--with-jobs", action="store_true",
                    help="also start MLflow's GenAI job runners (off by default: the runs table, charts and "
                         "compare views do not use them; measured: 8 more processes, ~1.9 GB)")
    return parser


def _add_shared_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--n-trials", type=int, help="total finished trials the study should have")
    command.add_argument("--storage", help="Optuna storage URL (default sqlite:///<workdir>/optuna.db)")
    command.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<workdir>/mlflow.db)")
    command.add_argument("--workdir", help="work directory (default ./hpsearch-runs)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ui":
        return _ui(Path(args.workdir), args.port, args.workers, args.with_jobs)
    if args.command in ("replay", "export"):
        return _replay(args)
    if args.command == "report":
        return _report(args)
    return _run(args, argv if argv is not None else sys.argv[1:])


def _run(args, argv: list[str]) -> int:
    from hpsearch.study.interrupt import Interrupted
    from hpsearch.study.runner import resume_study, run_study
    from hpsearch.study.storage import StorageError
    from hpsearch.study.stored_config import ConfigChanged
    from hpsearch.study.studyfile import StudyFileError

    shared = dict(n_trials=args.n_trials, storage=args.storage, tracking_uri=args.tracking_uri, workdir=args.workdir)
    try:
        if args.command == "resume":
            resume_study(args.study_name, **shared)
        else:
            run_study(args.study_file, sets=args.sets, force=args.force, seed=args.seed, **shared)
    except (StudyFileError, StorageError, ConfigChanged) as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as stop:
        again = shlex.join(["hpsearch", *(a for a in argv if a != "--force")])
        print(f"hpsearch: interrupted ({stop}); the running trial was checkpointed. Continue with: {again}",
              file=sys.stderr)
        return 128 + stop.signum
    return 0


def _report(args) -> int:
    import optuna

    from hpsearch.pruning.calibration import calibration_json, calibration_records
    from hpsearch.report import study_report
    from hpsearch.study.runner import locate_study
    from hpsearch.study.studyfile import StudyFileError

    try:
        url, _ = locate_study(args.study_name, storage=args.storage, workdir=args.workdir)
    except StudyFileError as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study_name, storage=url)
    if args.test:
        from hpsearch.report import test_report

        try:
            print(test_report(study, top=args.top, workdir=args.workdir), end="")
        except StudyFileError as err:
            print(f"hpsearch: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    print(calibration_json(calibration_records(study.get_trials())) if args.json else study_report(study), end="")
    return 0


def _replay(args) -> int:
    from hpsearch.replay.command import export_command, replay_command
    from hpsearch.replay.table import TableError

    try:
        return replay_command(args) if args.command == "replay" else export_command(args)
    except TableError as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _ui(workdir: Path, port: int, workers: int = 1, with_jobs: bool = False) -> int:
    database = workdir.resolve() / "mlflow.db"
    if not database.exists():
        print(f"hpsearch: error: {database}: no MLflow database here; run a study with --workdir {workdir} first",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if workers < 1:
        print(f"hpsearch: error: --workers must be at least 1, got {workers}", file=sys.stderr)
        return EXIT_BAD_INPUT
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

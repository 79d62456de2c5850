"""`hpsearch run STUDY.yaml [--workers N]` and `hpsearch resume NAME`."""

from __future__ import annotations

import argparse
import shlex
import sys

from hpsearch.cli.errors import bad_input


def add_commands(commands) -> None:
    run = commands.add_parser("run", help="run or continue the study a YAML file describes")
    run.add_argument("study_file", help="path to the study YAML file")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                     help="override a study-file field, e.g. --set training.epochs=5 (repeatable)")
    run.add_argument("--force", action="store_true", help="continue an existing study even if the file changes its search")
    add_study_options(run)
    run.add_argument("--seed", type=int, help="seed of the sampler and of every trial")
    run.add_argument("--workers", type=positive, default=1, metavar="N",
                     help="run N worker processes on this machine (default 1: this process trains)")
    run.add_argument("--trials-per-gpu", type=positive, default=1, metavar="K",
                     help="with --workers and several GPUs: K workers share each GPU (default 1)")
    run.set_defaults(handler=_run)

    resume = commands.add_parser("resume", help="continue a study from the config stored with it")
    resume.add_argument("study_name")
    add_study_options(resume)
    resume.set_defaults(handler=_run)


def add_study_options(command) -> None:
    command.add_argument("--n-trials", type=int, help="total finished trials the study should have")
    command.add_argument("--storage", help="Optuna storage URL (default sqlite:///<workdir>/optuna.db)")
    command.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<workdir>/mlflow.db)")
    command.add_argument("--workdir", help="work directory (default ./hpsearch-runs)")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def continue_command(argv: list[str]) -> str:
    """The command that continues an interrupted one (without --force: the change is stored by now)."""
    return shlex.join(["hpsearch", *(a for a in argv if a != "--force")])


def _launch_workers(args, argv: list[str]) -> int:
    """`hpsearch run --workers N`: N `hpsearch worker` processes with this command's options."""
    from hpsearch.study.workers import launch

    options = [option for item in args.sets for option in ("--set", item)]
    for name, value in (("n_trials", args.n_trials), ("seed", args.seed)):  # shorthands a worker takes as --set
        if value is not None:
            options += ["--set", f"{name}={value}"]
    for flag, value in (("--storage", args.storage), ("--tracking-uri", args.tracking_uri), ("--workdir", args.workdir)):
        if value is not None:
            options += [flag, value]
    return launch(args.study_file, n_workers=args.workers, trials_per_gpu=args.trials_per_gpu, options=options,
                  first_only=["--force"] if args.force else [], again=continue_command(argv))


def _run(args, argv: list[str]) -> int:
    if getattr(args, "workers", 1) > 1:
        return _launch_workers(args, argv)
    from hpsearch.study.interrupt import Interrupted
    from hpsearch.study.runner import resume_study, run_study
    from hpsearch.study.storage import StorageError, StorageLost
    from hpsearch.study.stored_config import ConfigChanged
    from hpsearch.study.studyfile import StudyFileError
    from hpsearch.tracking.outage import TrackingUnavailable

    shared = dict(n_trials=args.n_trials, storage=args.storage, tracking_uri=args.tracking_uri, workdir=args.workdir)
    try:
        if args.command == "resume":
            resume_study(args.study_name, **shared)
        else:
            run_study(args.study_file, sets=args.sets, force=args.force, seed=args.seed, **shared)
    except (StudyFileError, StorageError, ConfigChanged) as err:
        return bad_input(err)
    except StorageLost as lost:  # lost mid-study: not bad input; the same command continues
        print(f"hpsearch: {lost}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again later
    except TrackingUnavailable as gone:  # MLflow away past tracking.retry_seconds: the same command continues
        print(f"hpsearch: {gone}; the running trial keeps its checkpoint. Continue with: {continue_command(argv)}",
              file=sys.stderr)
        return 75
    except Interrupted as stop:
        again = continue_command(argv)
        print(f"hpsearch: interrupted ({stop}); the running trial was checkpointed. Continue with: {again}",
              file=sys.stderr)
        return 128 + stop.signum
    return 0

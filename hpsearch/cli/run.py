"""`hpsearch run STUDY.yaml` and `hpsearch resume NAME`."""

from __future__ import annotations

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
        return bad_input(err)
    except Interrupted as stop:
        again = shlex.join(["hpsearch", *(a for a in argv if a != "--force")])
        print(f"hpsearch: interrupted ({stop}); the running trial was checkpointed. Continue with: {again}",
              file=sys.stderr)
        return 128 + stop.signum
    return 0

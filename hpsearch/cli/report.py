"""`hpsearch report NAME`: what a study found, and on demand its best trials on the test split."""

from __future__ import annotations

from hpsearch.cli.errors import bad_input


def add_command(commands) -> None:
    report = commands.add_parser("report", help="a study's trials and how well each proxy predicted the final metric")
    report.add_argument("study_name")
    add_location_options(report)
    report.add_argument("--json", action="store_true", help="print the calibration records as JSON")
    report.add_argument("--test", action="store_true",
                        help="measure the best trials (by validation value) on the test split, from their kept "
                             "checkpoints, and show both figures")
    report.add_argument("--top", type=int, default=None, metavar="K",
                        help="with --test: how many of the best trials (default: evaluation.test_top_k, at least 1)")
    report.set_defaults(handler=_report)


def add_location_options(command) -> None:
    """Where a finished or running study lives, for the commands that read one."""
    command.add_argument("--storage", help="Optuna storage URL (default sqlite:///<workdir>/optuna.db)")
    command.add_argument("--workdir", help="work directory (default ./hpsearch-runs)")


def load_named_study(args):
    """The study `args.study_name` in `--storage` or `--workdir`; StudyFileError when there is none."""
    import optuna

    from hpsearch.study.runner import locate_study

    url, _ = locate_study(args.study_name, storage=args.storage, workdir=args.workdir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=args.study_name, storage=url)


def _report(args, argv: list[str]) -> int:
    from hpsearch.pruning.calibration import calibration_json, calibration_records
    from hpsearch.report import study_report, test_report
    from hpsearch.study.studyfile import StudyFileError

    try:
        study = load_named_study(args)
        if args.test:
            print(test_report(study, top=args.top, workdir=args.workdir), end="")
            return 0
    except StudyFileError as err:
        return bad_input(err)
    print(calibration_json(calibration_records(study.get_trials())) if args.json else study_report(study), end="")
    return 0

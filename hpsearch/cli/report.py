"""`hpsearch report NAME`: what a study found (leaderboard, importances, compute saved by pruning,
per-class accuracy, calibration), as text or one HTML file, and on demand its best trials on the
test split."""

from __future__ import annotations

import os

from hpsearch.cli.errors import bad_input


def add_command(commands) -> None:
    report = commands.add_parser("report", help="what a study found: leaderboard, importances, compute saved by "
                                                "pruning, per-class accuracy, calibration")
    report.add_argument("study_name")
    add_location_options(report)
    report.add_argument("--json", action="store_true", help="print the calibration records as JSON")
    report.add_argument("--html", metavar="FILE",
                        help="also write the report with its plots to FILE, one self-contained HTML page")
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
    from hpsearch.report import study_report, test_report, write_html
    from hpsearch.study.studyfile import StudyFileError

    if args.html is not None and (problem := _unwritable(args.html)):
        return bad_input(f"--html {args.html}: {problem}")  # before the study is read: nothing is spent
    try:
        study = load_named_study(args)
        if args.test:
            print(test_report(study, top=args.top, workdir=args.workdir), end="")
    except StudyFileError as err:
        return bad_input(err)
    if not args.test:
        print(calibration_json(calibration_records(study.get_trials())) if args.json
              else study_report(study, workdir=args.workdir), end="")
    if args.html is not None:
        try:
            write_html(study, args.html, workdir=args.workdir)
        except OSError as err:
            return bad_input(f"--html {args.html}: {err.strerror or err}")
        if not args.json:
            print(f"\nHTML report: {os.path.abspath(args.html)}")
    return 0


def _unwritable(path: str) -> str | None:
    """Why the report could not be written to `path`, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a directory"
    if not os.path.isdir(folder):
        return f"no such directory {folder}"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "permission denied"
    return None

"""`hpsearch export NAME`: a trial's trained encoder (`--out DIR`, hpsearch.study.export) or the
study's curves as a replay table (`--table FILE`, hpsearch.replay.command); exactly one of them."""

from __future__ import annotations

import argparse

from hpsearch.cli.errors import bad_input
from hpsearch.cli.report import add_location_options, load_named_study


def add_command(commands) -> None:
    export = commands.add_parser("export", help="write a trial's trained encoder (--out DIR) or the study's curves "
                                                "as a replay table (--table FILE)")
    export.add_argument("study_name", metavar="NAME", help="the study's name")
    export.add_argument("--out", metavar="DIR",
                        help="write the trial's backbone (state dict and encoder.yaml) to DIR; "
                             "hpsearch.load_encoder(DIR) reads it")
    export.add_argument("--trial", metavar="best|N",
                        help="with --out: the trial, best (default: the best complete one) or its number")
    export.add_argument("--table", metavar="FILE",
                        help="write the study's complete curves to a replay table (.json.gz compresses) "
                             "for `hpsearch replay`")
    export.add_argument("--recorded-with", metavar="COMMAND",
                        help="with --table: the command that recorded the study, kept with the table")
    add_location_options(export)
    # The replay-table form before `--out` existed (`export STORAGE --study NAME -o FILE`): accepted
    # only to answer with the new form, instead of argparse's "unrecognized arguments".
    export.add_argument("--study", help=argparse.SUPPRESS)
    export.add_argument("-o", "--output", help=argparse.SUPPRESS)
    export.set_defaults(handler=_export)


def _export(args, argv: list[str]) -> int:
    problem = _misuse(args)
    if problem:
        return bad_input(problem)
    from hpsearch.replay.command import export_table
    from hpsearch.replay.table import TableError
    from hpsearch.study.export import export_encoder
    from hpsearch.study.studyfile import StudyFileError
    from hpsearch.training.encoder_file import EncoderFileError

    try:
        study = load_named_study(args)
        if args.table is not None:
            print(export_table(study, args.table, args.recorded_with or ""))
        else:
            print(export_encoder(study, args.out, which=args.trial or "best", workdir=args.workdir))
    except (StudyFileError, TableError, EncoderFileError) as err:
        return bad_input(err)
    except OSError as err:  # the table file cannot be written
        return bad_input(f"{err.filename or args.table}: {err.strerror or err}")
    return 0


def _misuse(args) -> str | None:
    """The one-line answer to a command line that names no single thing to write, or uses the old form."""
    if "://" in args.study_name or args.study is not None or args.output is not None:
        from hpsearch.tracking.urls import mask

        storage = args.study_name if "://" in args.study_name else args.storage
        new = ["hpsearch export", args.study or "NAME", "--table", args.output or args.table or "FILE"]
        new += ["--storage", mask(storage)] if storage else []
        return ("the replay-table export `hpsearch export STORAGE --study NAME -o FILE` is now "
                f"`{' '.join(new)}`")
    if (args.out is None) == (args.table is None):
        return ("export: give exactly one of --out DIR (a trial's trained encoder) or --table FILE "
                "(the study's curves as a replay table)")
    if args.table is not None and args.trial is not None:
        return "--trial: goes with --out DIR (a replay table holds every trial)"
    if args.out is not None and args.recorded_with is not None:
        return "--recorded-with: goes with --table FILE"
    return None

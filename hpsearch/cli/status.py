"""`hpsearch status`: every study in an Optuna storage, its trials by state, what runs and what is stale."""

from __future__ import annotations

from hpsearch.cli.errors import bad_input
from hpsearch.cli.report import add_location_options


def add_command(commands) -> None:
    status = commands.add_parser("status", help="every study in the Optuna storage: trials by state, best value, "
                                                "running and stale trials")
    add_location_options(status)
    status.add_argument("--json", action="store_true", help="print it as JSON, for scripts")
    status.set_defaults(handler=_status)


def _status(args, argv: list[str]) -> int:
    from hpsearch.study.status import status_json, status_text, storage_location, storage_status
    from hpsearch.study.storage import StorageError
    from hpsearch.study.studyfile import StudyFileError

    try:
        url = storage_location(args.storage, args.workdir)
        studies = storage_status(url)
    except (StudyFileError, StorageError) as err:
        return bad_input(err)
    print(status_json(url, studies) if args.json else status_text(url, studies, _location(args)), end="")
    return 0


def _location(args) -> str:
    """The options this command was given to find the storage, to repeat in the commands it suggests."""
    import shlex

    from hpsearch.tracking.urls import mask

    if args.storage:
        return shlex.join(["--storage", mask(args.storage)])
    return shlex.join(["--workdir", args.workdir]) if args.workdir else ""

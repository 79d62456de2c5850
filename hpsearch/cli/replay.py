"""`hpsearch replay` and `hpsearch export` (a study's curves as a replay table): declared in
hpsearch.replay.command, run here so that a bad table or storage is one line, not a traceback."""

from __future__ import annotations

from hpsearch.cli.errors import bad_input
from hpsearch.replay.command import add_commands as declare


def add_commands(commands) -> None:
    for parser in declare(commands):
        parser.set_defaults(handler=_replay)


def _replay(args, argv: list[str]) -> int:
    from hpsearch.replay.command import export_command, replay_command
    from hpsearch.replay.table import TableError

    try:
        return replay_command(args) if args.command == "replay" else export_command(args)
    except TableError as err:
        return bad_input(err)

"""`hpsearch replay`: declared in hpsearch.replay.command, run here so that a bad table or storage is
one line, not a traceback. (`hpsearch export NAME --table FILE` writes the tables: hpsearch.cli.export.)"""

from __future__ import annotations

from hpsearch.cli.errors import bad_input
from hpsearch.replay.command import add_command as declare


def add_command(commands) -> None:
    declare(commands).set_defaults(handler=_replay)


def _replay(args, argv: list[str]) -> int:
    from hpsearch.replay.command import replay_command
    from hpsearch.replay.table import TableError

    try:
        return replay_command(args)
    except TableError as err:
        return bad_input(err)

"""The `hpsearch` command. Each command is a module here: `add_command(commands)` declares its
arguments and sets `handler`, which imports what the command needs only when it runs, so that
`hpsearch --help` and `hpsearch ui` do not pay for torch, optuna and mlflow."""

from __future__ import annotations

import argparse
import sys

from hpsearch.cli import export, replay, report, run, server, status, ui, worker
from hpsearch.cli.errors import EXIT_BAD_INPUT

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpsearch", description="Tune self-supervised pretraining with Optuna and MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    run.add_commands(commands)
    worker.add_command(commands)
    report.add_command(commands)
    replay.add_command(commands)
    export.add_command(commands)
    status.add_command(commands)
    ui.add_command(commands)
    server.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return args.handler(args, argv)

"""`hpsearch replay` and `hpsearch export NAME --table FILE`: check pruners against recorded curves
before spending compute on them. The `export` command itself is declared in hpsearch.cli.export,
which also exports encoders; the table it writes is made here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpsearch.replay import COSTS, DEFAULT_STRATEGIES, SAMPLERS, STRATEGY_NAMES


def add_command(commands) -> argparse.ArgumentParser:
    """Declare `replay`; returns its parser for the caller to set the handler on."""
    replay = commands.add_parser("replay", help="simulate pruning strategies on a study's recorded curves")
    replay.add_argument("source", help="a replay table (.json or .json.gz, from `hpsearch export NAME --table FILE`) or an Optuna storage URL")
    replay.add_argument("--study", help="study name (required with a storage URL)")
    replay.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated, from: {', '.join(STRATEGY_NAMES)} (default: %(default)s)")
    replay.add_argument("--seeds", type=_positive, default=100, help="simulated studies per strategy (default 100)")
    replay.add_argument("--workers", type=_positive, default=1, help="asynchronous workers per simulated study (default 1)")
    replay.add_argument("--gap", type=_non_negative, default=1.0,
                        help="target: a finished trial within this many points (0.01) of the best (default 1)")
    replay.add_argument("--sampler", choices=SAMPLERS, default="random", help="how configurations are proposed")
    replay.add_argument("--cost", choices=COSTS, default="epochs",
                        help="what an epoch costs: 1, or the seconds it took when recorded (budgets, regret and "
                             "'epochs to target' then count seconds)")
    replay.add_argument("--jobs", type=_positive, default=1, help="processes running the simulations (default 1)")
    replay.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    replay.add_argument("--plot", help="also write regret against budget to this image file (.png, .svg)")
    return replay


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of points >= 0, got {text}")
    return value


def load_table(source: str, study: str | None):
    """A table file, or the curves of a study in any Optuna storage."""
    from hpsearch.replay.table import Table, TableError

    if "://" not in source:
        return Table.load(source)
    if not study:
        raise TableError(f"--study: a storage URL ({source.split('://')[0]}://...) needs the study's name")
    import optuna
    from sqlalchemy.engine import make_url

    from hpsearch.tracking.urls import mask

    database = make_url(source).database if source.startswith("sqlite") else None
    if database and database != ":memory:" and not Path(database).exists():
        raise TableError(f"{mask(source)}: no such database file {database}")
    try:
        return Table.from_study(optuna.load_study(study_name=study, storage=source))
    except KeyError:
        raise TableError(f"--study: no study named {study!r} in {mask(source)}") from None
    except TableError:
        raise
    except Exception as err:  # the storage's own errors: unreachable server, missing driver, bad URL
        reason = str(err).splitlines()[0][:300].replace(source, mask(source))
        raise TableError(f"{mask(source)}: cannot read the study ({type(err).__name__}: {reason})") from None


def replay_command(args) -> int:
    from hpsearch.replay.report import format_table, plot, replay, summarize
    from hpsearch.replay.table import TableError

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise TableError(f"--strategies: unknown {unknown[0] if unknown else 'empty list'!r}; "
                         f"expected some of: {', '.join(STRATEGY_NAMES)}")
    table = load_table(args.source, args.study)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rreplaying {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    runs = replay(table, strategies, seeds=args.seeds, workers=args.workers, gap=args.gap, sampler=args.sampler,
                  jobs=args.jobs, cost=args.cost, progress=progress)
    summary = summarize(table, runs, args.cost)
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(format_table(summary, f"{args.sampler} sampling, {args.workers} worker(s), {args.seeds} seeds, "
                                    f"target within {args.gap:g} point(s) of the best; "))
    if args.plot:
        plot({f"{args.sampler}, {args.workers} worker(s)": summary}, args.plot)
    return 0


def export_table(study, output: str, recorded_with: str = "") -> str:
    """Write the complete curves of `study` (an optuna.Study) to the table file `output`, keeping the
    command that recorded them; returns the line that says what was written."""
    from hpsearch.replay.table import Table

    table = Table.from_study(study)
    table.command = recorded_with
    table.save(output)
    return (f"{output}: {len(table.trials)} configurations, exhaustive budget {table.budget} epochs, "
            f"best {table.best():.4f}" + (f" (left out: {table.skipped})" if table.skipped else ""))

"""
The `airudder-async` command (also `python -m airudder_async`): the argparse parser and the entry points.

The work happens in `_cli.run()`; `amain()` runs it in the caller's event loop (tests use that), and
`main()` starts one with `anyio.run`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import BinaryIO, TextIO

import anyio

from ._cli import PROG, aware_time, duration, int_between, partition_spec, program, run
from ._config import DEFAULT_PAGE_SIZE, DEFAULT_PREFETCH, MAX_PAGE_SIZE, MAX_PREFETCH
from ._partition import partition_window

__all__ = ["amain", "build_parser", "main"]

_SANDBOX_DEFAULT = 1000


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read workflows from the AIRUDDER API. Credentials come from AIRUDDER_APP_KEY and "
        "AIRUDDER_APP_SECRET (and optionally AIRUDDER_BASE_URL), or use --sandbox.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    walk = common.add_argument_group("walk options")
    walk.add_argument(
        "--since",
        type=aware_time,
        metavar="TIME",
        help="only workflows created at or after TIME (ISO 8601 with an offset, e.g. "
        "2026-01-01T00:00:00Z or '2026-01-01 00:00:00+07:00')",
    )
    walk.add_argument(
        "--until",
        type=aware_time,
        metavar="TIME",
        help="only workflows created at or before TIME (default: when the walk starts)",
    )
    walk.add_argument(
        "--page-size",
        type=int_between(1, MAX_PAGE_SIZE),
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"workflows per request, 1..{MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})",
    )
    walk.add_argument("--max-items", type=int_between(1), metavar="N", help="stop after N workflows")
    walk.add_argument(
        "--rate",
        type=float,
        metavar="N",
        help="at most N requests per second; with AIRUDDER_REDIS_URL set, N for every process together "
        "(they also share one token and the cool-down after a 429)",
    )
    walk.add_argument(
        "--partition",
        type=partition_spec,
        metavar="I/K",
        help="walk only part I (0 .. K-1) of K disjoint parts of the --since/--until window (both "
        "required, the same for every part); run the K parts anywhere, each with its own output",
    )
    walk.add_argument(
        "--prefetch",
        type=int_between(1, MAX_PREFETCH),
        default=DEFAULT_PREFETCH,
        metavar="N",
        help=f"pages requested ahead (default {DEFAULT_PREFETCH}, at most {MAX_PREFETCH}; 1: one at a time)",
    )
    walk.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
    sandbox = common.add_argument_group("sandbox")
    sandbox.add_argument(
        "--sandbox",
        type=int_between(0),
        nargs="?",
        const=_SANDBOX_DEFAULT,
        metavar="N",
        help="ignore the environment and walk N synthetic workflows (default "
        f"{_SANDBOX_DEFAULT}) served by a fake AIRUDDER server inside this process",
    )
    sandbox.add_argument(
        "--sandbox-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay every sandbox answer by SECONDS (to watch progress)",
    )

    commands.add_parser(
        "workflows",
        parents=[common],
        help="stream every workflow to stdout as JSON lines",
        description="Stream every workflow, newest first, to stdout: one JSON object per line.",
    )
    export = commands.add_parser(
        "export",
        parents=[common],
        help="write every workflow to a file that survives interruptions",
        description="Write every workflow, newest first, to a file. A checkpoint after each page lets "
        "--resume finish an export that died, with every workflow exactly once.",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="the output file ('-' or absent: stdout)")
    export.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="JSON lines (default) or CSV with a header row",
    )
    export.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="the checkpoint file (default: FILE.checkpoint.json; needed to resume to stdout)",
    )
    export.add_argument(
        "--resume", action="store_true", help="continue the export recorded in the checkpoint"
    )
    sync = commands.add_parser(
        "sync",
        parents=[common],
        help="mirror every workflow into a database table, incrementally and crash-safely",
        description="Bring a database table of every workflow up to date: new workflows are inserted, "
        "changed ones updated and recorded in workflow_history. A killed run continues after its last "
        "committed page when started again. A later run re-reads from the earlier of the last run's start "
        "and the oldest workflow whose status is not final, at most --lookback before the last run.",
    )
    sync.add_argument(
        "--db",
        default="workflows.db",
        metavar="TARGET",
        help="an SQLite file (default workflows.db) or a postgresql:// URL (needs airudder-async[postgres])",
    )
    sync.add_argument("--full", action="store_true", help="re-read every workflow, not only the window")
    sync.add_argument(
        "--lookback",
        type=duration,
        default=None,
        metavar="DURATION",
        help="how far before the last run to look for open workflows: 7d (the default), 12h, 30m, 90s",
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="read and compare, write nothing: report what would change"
    )
    sync.add_argument(
        "--sandbox-round",
        type=int_between(0),
        default=0,
        metavar="N",
        help="with --sandbox: apply N rounds of changes to the sandbox (each moves 0.5%% of the workflows "
        "to another status and creates 0.3%% new ones); raise N between runs to watch sync follow",
    )
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.since is not None and args.until is not None and args.since > args.until:
        parser.error(f"--since {args.since.isoformat()} is after --until {args.until.isoformat()}")
    if args.partition is not None:
        if args.since is None or args.until is None:
            parser.error("--partition needs --since and --until: every part must split the same window")
        index, count = args.partition
        try:
            partition_window(args.since, args.until, index=index, count=count)
        except ValueError as exc:
            parser.error(f"--partition {index}/{count}: {exc}")
    if args.rate is not None and not 0 < args.rate < math.inf:  # also refuses nan
        parser.error("--rate must be a finite number > 0")
    if not 0 <= args.sandbox_latency < math.inf:  # also refuses nan
        parser.error("--sandbox-latency must be a finite number >= 0")
    if args.command == "sync" and args.partition is not None:
        parser.error("--partition does not apply to sync: one mirror follows the whole account")
    if args.command == "sync" and args.max_items is not None:
        parser.error("--max-items does not apply to sync: a partial walk would leave the mirror behind")
    if args.command == "sync" and args.full and (args.since is not None or args.until is not None):
        parser.error("--full reads everything: drop --since/--until, or drop --full")
    return args


async def amain(
    argv: Sequence[str] | None = None, *, stdout: BinaryIO | None = None, stderr: TextIO | None = None
) -> int:
    """
    Run the command line *argv* (default: `sys.argv[1:]`) in the running event loop; return the exit status.
    """
    if argv is None:
        argv = sys.argv[1:]
        command = [*program(), *argv]
    else:
        command = [PROG, *argv]
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as exc:  # argparse exits on --help and on errors; report the status instead
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return await run(
        args,
        command=command,
        stdout=sys.stdout.buffer if stdout is None else stdout,
        stderr=sys.stderr if stderr is None else stderr,
    )


def main(argv: list[str] | None = None) -> int:
    """
    The console script: run the command line *argv* (default: `sys.argv[1:]`) and return the exit status.
    """
    try:
        return anyio.run(amain, argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - run by the subprocess tests
    sys.exit(main())

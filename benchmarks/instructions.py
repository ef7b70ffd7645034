"""
The client's own cost per page in CPU instructions, counted by valgrind: a figure host noise cannot move.

    python benchmarks/instructions.py [--pages 10,40] [--size 200]

`run.py` and `overhead.py` time the client, and on this 2-core host the CPU's speed drifts by a third
from one second to the next, so differences of a few per cent between two walks cannot be told apart.
Here each walk runs in a process of its own under `valgrind --tool=cachegrind --cache-sim=no`, which
counts the instructions that process executed (the same count run after run, within a few thousand per
page), against a `FakeAirudder` at 0 ms in another process (not counted). Each case walks twice, a short
walk and a long one, and the difference divided by the extra pages is the cost of one page: start-up,
imports, authentication and the warm-up request cancel out.

The cases are the walks of `run.py` at 0 ms (`_walks.py`): the default walk with and without msgspec,
item by item and a page at a time (`by_page()`), the plain prefetch window doing the same typed
structuring (the baseline of the "without msgspec" target), and the sequential aiohttp + orjson dict
loop (the baseline of the "with msgspec" target). Instructions are not time: a cache miss costs more
than an add, and this leaves out the server and the kernel. What they show is where the client's own
work differs, exactly.

Needs valgrind (`apt-get install valgrind`); without it, says so and exits. About 8 s per walk under
valgrind, under two minutes in all. A short walk of fewer than 10 pages never fills the prefetch window
and leaves some of the start-up in the difference (2 and 4 pages read 1.145 where 10 and 40 read 1.109),
so the script refuses one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _walks  # noqa: E402 - the sibling module, importable once HERE is on the path

WINDOW = "plain window K=8, typed (the same structuring)"
CASES: dict[str, _walks.Walk] = {
    "iter_workflows, without msgspec": _walks.library(8, msgspec=False),
    "iter_workflows .by_page(), without msgspec": _walks.library(8, by_page=True, msgspec=False),
    "iter_workflows, msgspec (the default)": _walks.library(8),
    "iter_workflows .by_page(), msgspec": _walks.library(8, by_page=True),
    WINDOW: _walks.plain_window(8, typed=True),
    "sequential aiohttp + orjson dicts": _walks.plain_aiohttp("orjson"),
}
WORKFLOWS = 20_000  # enough for 100 pages of 200


def _pages(text: str) -> tuple[int, int]:
    """Parse `--pages SHORT,LONG`: at least 10 pages, the second count larger."""
    try:
        short, long = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("two page counts, as in 10,40") from None
    if not 10 <= short < long:
        raise argparse.ArgumentTypeError("the short walk needs at least 10 pages, the long one more")
    return short, long


def child(case: str, server: str, size: int, pages: int) -> None:
    """Run one walk of *pages* pages (the process valgrind counts)."""
    address = json.loads(server)
    asyncio.run(CASES[case](address, size, pages * size, lambda: 0.0))


def count(case: str, server: str, size: int, pages: int) -> int:
    """The instructions a process walking *pages* pages executed, as valgrind counts them."""
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        case,
        server,
        str(size),
        str(pages),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same hashes, so the same dict and set layouts
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the walk under valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pages", type=_pages, default=(10, 40), help="the short and the long walk, in pages (10,40)"
    )
    parser.add_argument("--size", type=int, default=200, help="workflows per page")
    parser.add_argument(
        "--child", nargs=4, metavar=("CASE", "SERVER", "SIZE", "PAGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        case, server, size, pages = args.child
        child(case, server, int(size), int(pages))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind): nothing to count with")
    short, long = args.pages
    if long * args.size > WORKFLOWS:
        sys.exit(f"--pages: the long walk is at most {WORKFLOWS // args.size} pages of {args.size}")
    from run import Server  # the benchmark server's parent side (run.py is heavy: imported only here)

    per_page: dict[str, int] = {}
    with Server(WORKFLOWS, 0.0) as srv:
        server = json.dumps(srv.address)
        for case in CASES:
            a, b = count(case, server, args.size, short), count(case, server, args.size, long)
            per_page[case] = (b - a) // (long - short)
            print(f"  {case}: {per_page[case]:,} per page", file=sys.stderr, flush=True)
    base = per_page[WINDOW]
    print(
        f"instructions of the client process per page of {args.size} "
        f"(walks of {short} and {long} pages, 0 ms)"
    )
    print()
    print("| case | per page | per workflow | vs the typed plain window |")
    print("|---|---:|---:|---:|")
    for case, n in per_page.items():
        print(f"| {case} | {n:,} | {n / args.size:,.0f} | {n / base:.3f} |")


if __name__ == "__main__":
    main()

"""
Compare the decode paths of one instancelist page: µs per workflow, median of several runs.

Usage: python benchmarks/decode_paths.py [--workflows N] [--runs N]

Every path takes the answer body (bytes) to workflows; "orjson dicts" stops at plain dicts and is the
floor a dict-based path cannot beat. Needs orjson and msgspec (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable

import msgspec
import orjson

from airudder_async._convert import _page_decoders, decode_page, parse_page, peek_page
from airudder_async._json import _stdlib_loads
from airudder_async._protocol import interpret
from airudder_async.testing import make_workflows


def _body(n: int) -> bytes:
    return orjson.dumps(
        {"code": 200, "status": "OK", "message": "ok", "data": {"count": n, "lists": rows(n)}}
    )


def rows(n: int) -> list[dict[str, object]]:
    """*n* synthetic workflows in wire form, with the vendor's space-separated offset times on half."""
    out = make_workflows(n)
    for i, row in enumerate(out):
        if i % 2 and isinstance(row["create_time"], str):
            row["create_time"] = row["create_time"].replace("T", " ").replace("Z", "+07:00")
    return out


def paths(body: bytes) -> dict[str, Callable[[], object]]:
    """The decode paths under test, each a call that decodes *body* completely."""
    decoders = _page_decoders()
    assert decoders is not None, "install msgspec: pip install -e '.[bench]'"
    envelope, data = decoders
    headers: dict[str, str] = {}
    return {
        "orjson dicts (floor)": lambda: orjson.loads(body),
        "orjson + interpret + fast hook (today)": lambda: parse_page(interpret(200, headers, body)["data"]),
        "msgspec: decode_page() (new)": lambda: decode_page(body),
        "msgspec: of which peek_page(), in the request": lambda: peek_page(body),
        "msgspec: the decoders alone, no guards": lambda: data(envelope(body).data),
        "stdlib + fast hook (no extras)": lambda: parse_page(_stdlib_loads(body)["data"]),
    }


def measure(call: Callable[[], object], n: int, runs: int) -> float:
    """Median over *runs* of the best-of-5 time of one call, in µs per workflow."""
    number = max(1, 20_000 // n)
    samples = [min(timeit.repeat(call, number=number, repeat=5)) / number / n * 1e6 for _ in range(runs)]
    return statistics.median(samples)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    body = _body(args.workflows)
    page = decode_page(body)
    assert page is not None, "msgspec refused the page"
    assert page == parse_page(json.loads(body)["data"]), "the paths disagree"
    results = {name: measure(call, args.workflows, args.runs) for name, call in paths(body).items()}
    today = results["orjson + interpret + fast hook (today)"]
    print(f"{args.workflows} workflows per page, {len(body):,} bytes, median of {args.runs} runs")
    print(f"msgspec {msgspec.__version__}, orjson {orjson.__version__}\n")
    print("| path | µs per workflow | vs today |")
    print("|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.2f} | {today / value:.2f}x |")


if __name__ == "__main__":
    main()

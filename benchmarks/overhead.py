"""
The walk's own CPU cost per workflow, with no sockets: a canned session answers every request at once.

    python benchmarks/overhead.py [--pages 200] [--repeat 9]

`run.py` times walks against a server in another process, so each figure also carries aiohttp's reading
and parsing of the HTTP answer, the server sharing the machine, and the event loop waiting on both.
Here the client gets a stand-in for its aiohttp session (only what the walk calls: `request()` and
`get()` answering with the bytes of pages captured once from a `FakeAirudder`), so what is left is
decoding, structuring, and the walk's machinery: pagination, prefetch workers, the send loop, pacing,
checks. The same canned session feeds a plain prefetch window (8 tasks, orjson, the library's fast
hook) as the baseline, and each decode path runs alone over the same pages, so

    machinery = walk - decode alone

per workflow (medians apart, and minimums apart), for the library and the window alike. Repetitions
are interleaved; the table shows the median and the minimum over them (this host's CPU speed drifts by
a third from one second to the next, so the minimum is the steadier figure). Without msgspec installed
the msgspec rows are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from airudder_async import AirudderClient, _convert
from airudder_async._convert import structure_items
from airudder_async.models import Workflow
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _walks  # noqa: E402 - the sibling module, importable once HERE is on the path

AUTH_PATH = "/service/cloud/auth"
SIZE = 200


class _Answer:
    """What the walk reads of an aiohttp response: status, headers, and the body in one chunk."""

    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {"Content-Type": "application/json"}
        self._body = body
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        pass

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class CannedSession:
    """Answers the auth call and `instancelist` pages (by their `page` parameter) from captured bytes."""

    def __init__(self, auth: bytes, pages: dict[int, bytes]) -> None:
        self._auth, self._pages = auth, pages

    def request(self, method: str, url: str, **kwargs: Any) -> _Answer:
        if url.endswith(AUTH_PATH):
            return _Answer(self._auth)
        return self.get(url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> _Answer:
        return _Answer(self._pages[int(kwargs["params"]["page"])])


async def capture(pages: int) -> tuple[bytes, dict[int, bytes]]:
    """The auth answer and *pages* consecutive 200-workflow pages, as a FakeAirudder serves them."""
    bodies: dict[int, bytes] = {}
    async with FakeAirudder(workflows=pages * SIZE) as fake, aiohttp.ClientSession() as http:
        creds = {"APPKey": fake.app_key, "APPSecret": fake.app_secret}
        async with http.post(fake.url + AUTH_PATH, json=creds) as resp:
            auth = await resp.read()
        headers = {"Authorization": "Token " + orjson.loads(auth)["data"]["token"]}
        for page in range(1, pages + 1):
            params = {"page": str(page), "size": str(SIZE)}
            async with http.get(fake.url + INSTANCELIST_PATH, params=params, headers=headers) as resp:
                bodies[page] = await resp.read()
    return auth, bodies


async def library(session: CannedSession, items: int, *, msgspec: bool, by_page: bool = False) -> float:
    """CPU µs per workflow of a default walk over the canned pages (without msgspec: as if missing)."""
    with contextlib.nullcontext() if msgspec else _walks.msgspec_missing():
        async with AirudderClient(
            app_key="key",
            app_secret="secret",
            base_url="http://127.0.0.1:9",
            session=session,  # type: ignore[arg-type]
        ) as client:
            await client.list_workflows(page=1, size=SIZE)  # the token, untimed
            cpu = time.process_time()
            async with client.iter_workflows(page_size=SIZE, max_items=items) as walk:
                n = await _walks.consume(walk, by_page=by_page)
            cpu = time.process_time() - cpu
    assert n == items, n
    return cpu / n * 1e6


async def window(session: CannedSession, items: int) -> float:
    """CPU µs per workflow of a plain prefetch window (8 tasks, orjson, the fast hook) over the pages."""

    async def fetch(page: int) -> Any:
        async with session.get("", params={"page": str(page), "size": str(SIZE)}) as resp:
            return orjson.loads(await resp.read())["data"]

    last = math.ceil(items / SIZE)
    n, cpu = 0, time.process_time()
    pending: deque[asyncio.Task[Any]] = deque()
    data, next_page = await fetch(1), 2
    while True:
        while len(pending) < 8 and next_page <= last:
            pending.append(asyncio.ensure_future(fetch(next_page)))
            next_page += 1
        for _wf in structure_items(Workflow, data["lists"], "data.lists"):
            n += 1
        if not pending:
            break
        data = await pending.popleft()
    cpu = time.process_time() - cpu
    assert n == items, n
    return cpu / n * 1e6


def decode_alone(pages: dict[int, bytes], items: int, *, msgspec: bool) -> float:
    """CPU µs per workflow of decoding and structuring the pages, nothing else."""
    last = math.ceil(items / SIZE)
    cpu = time.process_time()
    for page in range(1, last + 1):
        if msgspec:
            _convert.decode_page(pages[page])
        else:
            structure_items(Workflow, orjson.loads(pages[page])["data"]["lists"], "data.lists")
    return (time.process_time() - cpu) / items * 1e6


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=200, help="pages of 200 workflows per walk")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    has_msgspec = _convert._page_decoders() is not None
    auth, pages = await capture(args.pages)
    session = CannedSession(auth, pages)
    items = args.pages * SIZE

    async def decode(msgspec: bool) -> float:
        return decode_alone(pages, items, msgspec=msgspec)

    # case -> (timed run, the decode it contains)
    cases: dict[str, tuple[Callable[[], Awaitable[float]], str]] = {
        "iter_workflows, without msgspec": (lambda: library(session, items, msgspec=False), "orjson"),
        "iter_workflows .by_page(), without msgspec": (
            lambda: library(session, items, msgspec=False, by_page=True),
            "orjson",
        ),
        "plain window K=8, typed (orjson + fast hook)": (lambda: window(session, items), "orjson"),
        "decode alone: orjson + fast hook": (lambda: decode(False), ""),
    }
    if has_msgspec:
        cases["iter_workflows, msgspec (the default)"] = (
            lambda: library(session, items, msgspec=True),
            "msgspec",
        )
        cases["decode alone: msgspec"] = (lambda: decode(True), "")
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(args.repeat):
        order = list(cases) if rep % 2 == 0 else list(reversed(cases))
        for name in order:
            runs[name].append(await cases[name][0]())
    alone = {
        "orjson": runs["decode alone: orjson + fast hook"],
        "msgspec": runs.get("decode alone: msgspec", []),
    }
    print(
        f"{items:,} workflows per walk ({args.pages} pages of {SIZE}), {args.repeat} repetitions, no sockets"
    )
    print()
    print("| case | CPU µs per workflow, median (min) | of which the machinery, median (min) |")
    print("|---|---:|---:|")
    for name, (_run, decoded) in cases.items():
        values = runs[name]
        cell = ""
        if decoded:  # medians and minimums apart: single repetitions drift too much to pair
            base = alone[decoded]
            middle, least = statistics.median(values) - statistics.median(base), min(values) - min(base)
            cell = f"{middle:.2f} ({least:.2f})"
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}) | {cell} |")


if __name__ == "__main__":
    asyncio.run(main())

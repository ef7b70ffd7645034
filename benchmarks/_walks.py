"""
The walks the benchmarks time: the library's iter_workflows(), three hand-written sequential loops, and
a plain prefetch window (with and without typed structuring).

Every walk opens its own client, authenticates and sends one warm-up request before the clock starts,
so the timed part is the walk alone: N items, page after page, each item touched once by the consumer.
Each walk calls *probe* (the server's CPU seconds so far) just outside its clock and returns (items
walked, wall seconds, CPU seconds of this process, CPU seconds of the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import orjson

from airudder_async import DEFAULT_LIMITS, AirudderClient, Limits, WorkflowIterator, _convert

AUTH_PATH = "/service/cloud/auth"
LIST_PATH = "/service/cloud/workflow/instancelist"

Server = dict[str, Any]  # the JSON line printed by _server.py: url, app_key, app_secret, ...
Probe = Callable[[], float]
Result = tuple[int, float, float, float]  # items, wall seconds, client CPU seconds, server CPU seconds
Walk = Callable[[Server, int, int, Probe], Awaitable[Result]]


def library(prefetch: int, *, by_page: bool = False, msgspec: bool = True) -> Walk:
    """
    Return a walk through `client.iter_workflows(page_size=, prefetch=, max_items=)` (typed items).

    With *by_page* the consumer takes the walk a page (a list) at a time through `walk.by_page()`.
    Without *msgspec* the walk takes the path of an install without the msgspec extra (orjson and the
    fast hook), as if msgspec were missing: the library's only use of it is `_convert._page_decoders()`.
    """

    async def walk(server: Server, size: int, items: int, probe: Probe) -> Result:
        # Limits.max_in_flight (default 8) caps the requests in flight whatever the prefetch: raise it
        # for deeper windows, as a user asking for prefetch=16 would have to.
        limits = Limits(max_in_flight=max(prefetch, DEFAULT_LIMITS.max_in_flight))
        decoding = contextlib.nullcontext() if msgspec else msgspec_missing()
        client = AirudderClient(
            app_key=server["app_key"], app_secret=server["app_secret"], base_url=server["url"], limits=limits
        )
        with decoding:
            async with client:
                await client.list_workflows(page=1, size=1)  # token and one open connection, untimed
                cap = None if items >= server["workflows"] else items  # a full walk keeps the default
                server_cpu = probe()
                started, cpu = time.perf_counter(), time.process_time()
                async with client.iter_workflows(page_size=size, prefetch=prefetch, max_items=cap) as it:
                    n = await consume(it, by_page=by_page)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                return n, elapsed, cpu, probe() - server_cpu

    return walk


def _no_msgspec() -> None:
    """`_convert._page_decoders()` where msgspec is not installed."""
    return None


@contextlib.contextmanager
def msgspec_missing() -> Iterator[None]:
    """Within the block, the library decodes pages as an install without the msgspec extra does."""
    decoders = _convert._page_decoders
    _convert._page_decoders = _no_msgspec  # type: ignore[assignment]
    try:
        yield
    finally:
        _convert._page_decoders = decoders  # type: ignore[assignment]


async def consume(walk: WorkflowIterator, *, by_page: bool) -> int:
    """Touch every workflow of *walk*, item by item or a page at a time; return how many there were."""
    n = 0
    if by_page:
        async for batch in walk.by_page():
            for _wf in batch:
                n += 1
    else:
        async for _wf in walk:
            n += 1
    return n


def _pages(count: int, size: int, items: int, page: int, got: int, n: int) -> bool:
    """Tell whether a plain loop asks for another page (same stop rule for every baseline)."""
    return n < items and got == size and page * size < count


def plain_aiohttp(decode: str) -> Walk:
    """Return a sequential aiohttp loop decoding with `resp.json()` ("json") or orjson ("orjson")."""

    async def walk(server: Server, size: int, items: int, probe: Probe) -> Result:
        url = server["url"] + LIST_PATH
        async with aiohttp.ClientSession() as session:
            creds = {"APPKey": server["app_key"], "APPSecret": server["app_secret"]}
            async with session.post(server["url"] + AUTH_PATH, json=creds) as resp:
                token = (await resp.json())["data"]["token"]
            headers = {"Authorization": f"Token {token}"}
            async with session.get(url, params={"page": "1", "size": "1"}, headers=headers) as resp:
                await resp.read()  # warm-up, untimed
            n, page = 0, 1
            server_cpu = probe()
            started, cpu = time.perf_counter(), time.process_time()
            while True:
                params = {"page": str(page), "size": str(size)}
                async with session.get(url, params=params, headers=headers) as resp:
                    if decode == "orjson":
                        body = orjson.loads(await resp.read())
                    else:
                        body = await resp.json()
                data = body["data"]
                lists = data["lists"]
                for _item in lists:
                    n += 1
                    if n >= items:
                        break
                if not _pages(data["count"], size, items, page, len(lists), n):
                    break
                page += 1
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            return n, elapsed, cpu, probe() - server_cpu

    return walk


def plain_httpx() -> Walk:
    """Return a sequential httpx.AsyncClient loop decoding with `resp.json()`."""

    async def walk(server: Server, size: int, items: int, probe: Probe) -> Result:
        async with httpx.AsyncClient(base_url=server["url"]) as client:
            creds = {"APPKey": server["app_key"], "APPSecret": server["app_secret"]}
            token = (await client.post(AUTH_PATH, json=creds)).json()["data"]["token"]
            headers = {"Authorization": f"Token {token}"}
            (await client.get(LIST_PATH, params={"page": "1", "size": "1"}, headers=headers)).read()
            n, page = 0, 1
            server_cpu = probe()
            started, cpu = time.perf_counter(), time.process_time()
            while True:
                params = {"page": str(page), "size": str(size)}
                body = (await client.get(LIST_PATH, params=params, headers=headers)).json()
                data = body["data"]
                lists = data["lists"]
                for _item in lists:
                    n += 1
                    if n >= items:
                        break
                if not _pages(data["count"], size, items, page, len(lists), n):
                    break
                page += 1
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            return n, elapsed, cpu, probe() - server_cpu

    return walk


def plain_window(k: int, *, typed: bool = False) -> Walk:
    """
    Return a plain prefetch window: page 1 alone (for `count`), then K requests in flight, in order.

    The baseline a prefetching walk is measured against: aiohttp, orjson dicts, no pacing, retries or
    checks. With *typed* each page is also structured into `Workflow` objects the way the library
    does (its fast path), so the difference to the library is the library's own per-page work.
    """

    async def walk(server: Server, size: int, items: int, probe: Probe) -> Result:
        from airudder_async._convert import structure_items
        from airudder_async.models import Workflow

        url = server["url"] + LIST_PATH
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(k, 8))) as session:
            creds = {"APPKey": server["app_key"], "APPSecret": server["app_secret"]}
            async with session.post(server["url"] + AUTH_PATH, json=creds) as resp:
                token = (await resp.json())["data"]["token"]
            headers = {"Authorization": f"Token {token}"}

            async def fetch(page: int) -> dict[str, Any]:
                params = {"page": str(page), "size": str(size)}
                async with session.get(url, params=params, headers=headers) as resp:
                    data: dict[str, Any] = orjson.loads(await resp.read())["data"]
                return data

            await fetch(1)  # warm-up, untimed
            n = 0
            server_cpu = probe()
            started, cpu = time.perf_counter(), time.process_time()
            first = await fetch(1)
            last = min(math.ceil(first["count"] / size), math.ceil(items / size))
            window: deque[asyncio.Task[dict[str, Any]]] = deque()
            next_page, data = 2, first
            while True:
                while len(window) < k and next_page <= last:
                    window.append(asyncio.ensure_future(fetch(next_page)))
                    next_page += 1
                lists = data["lists"]
                rows = structure_items(Workflow, lists, "data.lists") if typed else lists
                for _item in rows:
                    n += 1
                    if n >= items:
                        break
                if n >= items or not window:
                    break
                data = await window.popleft()
            for task in window:
                task.cancel()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            return n, elapsed, cpu, probe() - server_cpu

    return walk

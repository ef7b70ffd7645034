"""
The client against hostile answers: outcome, answer time and peak RSS, beside a plain aiohttp loop.

Usage: python benchmarks/hostile_client.py [--cases NAME,...]

A hostile server runs in its own process. Each case runs in a fresh client process (so VmHWM is that
case's own peak): once with `AirudderClient.list_workflows()` at its defaults, once with the plain loop
a user might write (`session.get()`, `resp.read()`, `json.loads()`), each bounded by a 60 s deadline
and a 4 GiB address-space limit so a case that would exhaust the machine reports it instead. Prints a
Markdown table. Not collected by pytest; bounded to a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from aiohttp import web

TOKEN = "tok-bench-0123456789abcdef"
SECRET = "bench-secret-0123456789"
LIST = "/service/cloud/workflow/instancelist"
DEADLINE = 60.0
ADDRESS_SPACE = 4 * 1024**3


def _envelope(data: object) -> bytes:
    return json.dumps({"code": 200, "status": "OK", "data": data}).encode()


def _row(**change: object) -> dict[str, object]:
    row: dict[str, object] = {
        "workflow_id": "wf-1",
        "name": "n",
        "template_name": "t",
        "start_time": None,
        "end_time": None,
        "total": 1,
        "status": "finished",
        "create_time": "2026-01-01T00:00:00Z",
    }
    row.update(change)
    return row


# -- the hostile answers, by case name ----------------------------------------------------------------


def _static(body: bytes, *, status: int = 200, **headers: str) -> Callable[[web.Request], object]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    return handler


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b" " * 65536
    try:
        while True:
            await response.write(chunk)
    except (ConnectionError, RuntimeError):
        pass
    return response


async def _trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        for _ in range(120):
            await response.write(b" ")
            await asyncio.sleep(5)  # the sender's pace: a byte every 5 s
    except (ConnectionError, RuntimeError):
        pass
    return response


async def _echo(request: web.Request) -> web.StreamResponse:
    token = request.headers.get("Authorization", "").removeprefix("Token ")
    body = {
        "code": 400,
        "status": f"ERROR {token}",
        "message": f"bad token {token} " + "x" * 5_000_000,
        "data": {token: [token]},
    }
    return web.Response(body=json.dumps(body).encode(), status=400)


def _cases() -> dict[str, tuple[str, Callable[[web.Request], object]]]:
    member = gzip.compress(b" " * 10_000_000, compresslevel=9)
    deep = 8_000_000
    return {
        "gzip-bomb": (
            "1.5 MB gzip inflating to 1.5 GB",
            _static(member * 150, **{"Content-Encoding": "gzip"}),
        ),
        "endless": ("chunked body that never ends", _endless),
        "deep-16MB": (
            "16 MB of nested brackets",
            _static(b'{"code":200,"status":"OK","data":' + b"[" * deep + b"]" * deep + b"}"),
        ),
        "retry-after-overflow": (
            "429, Retry-After year 99999999999999999999",
            _static(b"", status=429, **{"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}),
        ),
        "deflate-garbage": (
            "200, deflate header, garbage body",
            _static(b"\x00junk" * 200, **{"Content-Encoding": "deflate"}),
        ),
        "token-echo-5MB": ("400 echoing the token, 5 MB message", _echo),
        "count-10^400": (
            "count = 10**400",
            _static(b'{"code":200,"status":"OK","data":{"count":1' + b"0" * 400 + b',"lists":[]}}'),
        ),
        "lone-surrogate": (
            "name = \\ud800",
            _static(_envelope({"count": 1, "lists": [_row(name="\ud800")]})),
        ),
        "trickle": ("1 byte every 5 s", _trickle),
    }


async def _serve() -> None:
    cases = _cases()

    async def auth(request: web.Request) -> web.Response:
        return web.Response(body=_envelope({"token": TOKEN}))

    async def listing(request: web.Request) -> web.StreamResponse:
        _, handler = cases[request.query.get("case") or request.headers.get("X-Case", "")]
        return await handler(request)  # type: ignore[misc, no-any-return]  # handlers above

    app = web.Application()
    app.router.add_post("/service/cloud/auth", auth)
    app.router.add_get(LIST, listing)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        pass
    await runner.cleanup()


# -- one case in a fresh process --------------------------------------------------------------------------


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _library(url: str, case: str) -> str:
    from airudder_async import AirudderClient, RetryPolicy, Timeouts
    from airudder_async.errors import AirudderError

    retry = RetryPolicy(attempts=1)
    async with AirudderClient(
        app_key="k", app_secret=SECRET, base_url=url, retry=retry, timeouts=Timeouts(read=10.0)
    ) as client:
        client._loop.headers["X-Case"] = case  # type: ignore[union-attr]  # route the case; open client
        try:
            page = await client.list_workflows()
        except AirudderError as exc:
            leaked = TOKEN in repr(exc.__dict__) + str(exc) or exc.__cause__ is not None
            return f"{type(exc).__name__}{' LEAK' if leaked else ''}"
        return f"ok, {len(page.items)} item(s)"


async def _plain(url: str, case: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/service/cloud/auth", json={"APPKey": "k", "APPSecret": SECRET}) as r:
            token = json.loads(await r.read())["data"]["token"]
        headers = {"Authorization": f"Token {token}", "X-Case": case}
        try:
            async with session.get(
                url + LIST, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=10)
            ) as r:
                data = json.loads(await r.read())
        except Exception as exc:  # the plain loop has no error tree: report what escaped
            return f"raw {type(exc).__name__}"
        return f"ok ({type(data).__name__})"


def _run_one(url: str, case: str, which: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    run = _library if which == "library" else _plain
    if which == "library":
        import airudder_async._client  # noqa: F401 - imported before the clock starts, as in the plain loop
    started = time.perf_counter()
    try:
        outcome = asyncio.run(asyncio.wait_for(run(url, case), DEADLINE))
    except MemoryError:
        outcome = "MemoryError"
    except TimeoutError:
        outcome = f"still running at {DEADLINE:g} s"
    except Exception as exc:
        outcome = f"raw {type(exc).__name__}"
    print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - started, "rss_mib": _hwm_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("URL", "CASE", "WHICH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    if args.one:
        _run_one(*args.one)
        return
    cases = _cases()
    names = args.cases.split(",") if args.cases else list(cases)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{json.loads(server.stdout.readline())['port']}"
        columns = ["case", "input", "library: outcome", "time", "peak RSS", "plain aiohttp loop: outcome"]
        print("| " + " | ".join([*columns, "time", "peak RSS"]) + " |")
        print("|---|---|---|---:|---:|---|---:|---:|")
        for name in names:
            row = [name, cases[name][0]]
            for which in ("library", "plain"):
                done = subprocess.run(
                    [sys.executable, __file__, "--one", url, name, which],
                    capture_output=True,
                    text=True,
                    timeout=DEADLINE + 30,
                )
                try:
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    row += [f"crashed ({done.returncode})", "", ""]
                    continue
                row += [result["outcome"], f"{result['seconds']:.2f} s", f"{result['rss_mib']:.0f} MiB"]
            print("| " + " | ".join(row) + " |", flush=True)
    finally:
        server.stdin.close()  # type: ignore[union-attr]  # opened with PIPE
        server.wait(timeout=10)


if __name__ == "__main__":
    main()

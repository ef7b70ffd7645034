"""
Send hostile webhooks to a receiver in its own process; print, per attack, the answers, the time they
took, the receiver's memory growth, and how fast a valid webhook sent during the attack is answered.

    python benchmarks/hostile_webhooks.py [--only NAME] [--code DIR] [--timeout 20]

Each attack gets a fresh receiver (`webhook_app()` with default `WebhookLimits`, run by a
`web.AppRunner(keepalive_timeout=15, read_bufsize=16_384)` as the README advises; the row marked
"aiohttp buffers" keeps aiohttp's default read_bufsize, 256 KiB in aiohttp 3.14, which lets each
connection buffer up to twice that before the handler runs) so its memory is measured alone: growth is
the receiver's peak RSS (VmHWM, reset through /proc/PID/clear_refs after a warm-up webhook) minus its
RSS after that warm-up. The valid webhook is posted 50 ms after the attack starts, from a process of
its own (the attacking process is busy pushing its bodies), and timed from its first byte to the
answer. Targets from issue #8: the valid webhook answered in under 0.2 s, and RSS growth under 100 MB
for 300 concurrent 1 MiB hostile bodies.

*--code DIR* runs the receiver from another checkout (e.g. `git archive <rev> | tar -x -C DIR`), to
compare; an attack whose answers do not all arrive within *--timeout* seconds shows as "timeout".
Bounded: under a minute with the current code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PATH = "/airudder/webhook"
MIB = 1_048_576
ROW_BOMB = b'{"rows":[' + b",".join([b"{}"] * 340_000) + b"]}"  # the reproduction
DEEP = b'{"a":' + b"[" * 5_000 + b"]" * 5_000 + b"}"  # under max_items, so max_depth refuses it
ROW = {"nodetask_id": "n", "nodetask_name": "x", "node_type": "call"}
HEAD = b"POST /airudder/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def status_body(n: int) -> bytes:
    """A valid Workflow Status Change body, distinct per *n*."""
    body = {"workflow_id": f"w-{n}", "workflow_name": "n", "status": "s", "actions": [ROW]}
    return json.dumps(body).encode()


PADDED = status_body(0)[:-1] + b', "note": "' + b"x" * (MIB - 200) + b'"}'


def padded_body(n: int) -> bytes:
    """A valid Workflow Status Change body of nearly 1 MiB (a long note), distinct per *n*."""
    return PADDED.replace(b'"w-0"', f'"w-{n}"'.encode(), 1)


def rows_body(n: int) -> bytes:
    """A valid List Completion body of 1,000 rows, just under 64 KiB: the costliest small body."""
    head = {"workflow_id": "w", "workflow_name": "n", "case_id": f"c-{n}", "callee_number": "1"}
    return json.dumps({**head, "rows": [ROW] * 1_000}, separators=(",", ":")).encode()


# ---------------------------------------------------------------- the receiver process


def serve(slow: bool, advised: bool) -> None:
    """Run the receiver on a free loopback port, print the port, and serve until killed."""
    from aiohttp import web

    from airudder_async.webhooks import WebhookEvent, webhook_app

    # Log lines are formatted (that is part of the cost) and dropped.
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115

    async def callback(event: WebhookEvent) -> None:
        if slow:
            await asyncio.sleep(3600)

    async def run() -> None:
        buffers: dict[str, Any] = {"read_bufsize": 16_384} if advised else {}
        runner = web.AppRunner(webhook_app(callback), keepalive_timeout=15, **buffers)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


VALID_SENDER = """
import http.client, sys, time
body = sys.argv[2].encode()
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
conn.connect()
sys.stdin.readline()  # go
start = time.perf_counter()
conn.request("POST", "/airudder/webhook", body, {"Content-Type": "application/json"})
status = conn.getresponse().status
print(status, time.perf_counter() - start, flush=True)
"""


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _status_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = (line.split(":", 1) for line in f)
        return {k: int(v.split()[0]) for k, v in fields if k in ("VmRSS", "VmHWM")}


# ---------------------------------------------------------------- senders


@dataclass
class Outcome:
    answers: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, outcome: Outcome) -> None:
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            outcome.answers[str(r.status)] += 1
    except aiohttp.ClientError:  # refused before the whole body was sent: the server closed
        outcome.answers["reset"] += 1
    outcome.slowest = max(outcome.slowest, time.perf_counter() - start)


async def _raw(port: int, data: bytes, outcome: Outcome) -> None:
    """Send *data* and then nothing, until the server answers or closes."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await reader.read(100)
    outcome.answers[answer.split(b"\r\n")[0].decode().removeprefix("HTTP/1.1 ") or "closed"] += 1
    outcome.slowest = max(outcome.slowest, time.perf_counter() - start)
    writer.close()


Attack = Callable[[aiohttp.ClientSession, str, int, Outcome], Awaitable[None]]


def flood(bodies: Callable[[int], bytes], count: int) -> Attack:
    async def attack(session: aiohttp.ClientSession, url: str, port: int, outcome: Outcome) -> None:
        await asyncio.gather(*(_post(session, url, bodies(n), outcome) for n in range(count)))

    return attack


def trickle(data: bytes) -> Attack:
    async def attack(session: aiohttp.ClientSession, url: str, port: int, outcome: Outcome) -> None:
        await _raw(port, data, outcome)

    return attack


ATTACKS: dict[str, tuple[str, Attack]] = {
    # name: (receiver mode, attack)
    "1 MiB row bomb": ("fast", flood(lambda n: ROW_BOMB, 1)),
    "deep nesting (5,000)": ("fast", flood(lambda n: DEEP, 1)),
    "300 x 1 MiB row bombs": ("fast", flood(lambda n: ROW_BOMB, 300)),
    "300 x 1 MiB row bombs, aiohttp buffers": ("fast-buffers", flood(lambda n: ROW_BOMB, 300)),
    "300 x 1 MiB valid, slow callback": ("slow", flood(padded_body, 300)),
    "300 small valid, slow callback": ("slow", flood(status_body, 300)),
    "300 x 64 KiB of 1,000 rows": ("fast", flood(rows_body, 300)),
    "trickled body (then silence)": ("fast", trickle(HEAD + b"Content-Length: 100\r\n\r\n{")),
    "trickled headers (then silence)": ("fast", trickle(HEAD[:30])),
}


async def _measure(attack: Attack, pid: int, port: int, wait_s: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{PATH}"
    valid = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VALID_SENDER,
        str(port),
        status_body(-2).decode(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert valid.stdin is not None
    assert valid.stdout is not None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await _post(session, url, status_body(-1), Outcome())  # warm-up
        _reset_peak(pid)
        baseline = _status_kib(pid)["VmRSS"]
        outcome = Outcome()
        start = time.perf_counter()
        hostile = asyncio.ensure_future(attack(session, url, port, outcome))
        await asyncio.sleep(0.05)
        valid.stdin.write(b"go\n")
        answer = [b"none", b"nan"]
        try:
            answer = (await asyncio.wait_for(valid.stdout.readline(), wait_s)).split()
            await asyncio.wait_for(hostile, wait_s)
            took = f"{time.perf_counter() - start:.2f}"
        except TimeoutError:
            hostile.cancel()
            took = "timeout"
        peak = _status_kib(pid)["VmHWM"]
    if valid.returncode is None:
        valid.kill()
    await valid.wait()
    return {
        "answers": " ".join(f"{k}x{v}" for k, v in sorted(outcome.answers.items())) or "none",
        "slowest_s": f"{outcome.slowest:.2f}" if took != "timeout" else "timeout",
        "total_s": took,
        "rss_growth_mb": round((peak - baseline) / 1024, 1),
        "valid": answer[0].decode(),
        "valid_s": f"{float(answer[1]):.3f}",
    }


def run_attack(name: str, code: str | None, wait_s: float) -> dict[str, Any]:
    """Start a fresh receiver, run one attack against it, and return the table row."""
    mode, attack = ATTACKS[name]
    env = {**os.environ, "PYTHONPATH": code} if code else None
    child = subprocess.Popen([sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        return {"attack": name, **asyncio.run(_measure(attack, child.pid, port, wait_s))}
    finally:
        child.kill()
        child.wait()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--serve", choices=["fast", "fast-buffers", "slow"], help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=sorted(ATTACKS), action="append")
    parser.add_argument("--code", help="run the receiver from this checkout (PYTHONPATH)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the answers")
    args = parser.parse_args()
    if args.serve:
        serve(slow=args.serve == "slow", advised=args.serve != "fast-buffers")
        return
    rows = [run_attack(name, args.code, args.timeout) for name in args.only or ATTACKS]
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()

"""
Walk N workflows in a fresh process and report peak RSS before and after, as one JSON line.

Usage: python benchmarks/_rss.py URL APP_KEY APP_SECRET ITEMS

The baseline is taken after importing the library, authenticating and opening one connection, so the
delta is what the walk itself costs. Items are counted and dropped, as a streaming consumer would.

Linux carries `ru_maxrss` across exec: a process started straight from a big parent reports the
parent's peak. run.py therefore starts this script through a small launcher process; VmHWM (this
process's own peak since exec) is reported beside it as a cross-check.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

from airudder_async import AirudderClient


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


async def walk(url: str, app_key: str, app_secret: str, items: int) -> dict[str, int | None]:
    async with AirudderClient(app_key=app_key, app_secret=app_secret, base_url=url) as client:
        await client.list_workflows(page=1, size=1)
        baseline, hwm_baseline = _maxrss_kib(), _hwm_kib()
        n = 0
        async with client.iter_workflows(max_items=items) as it:  # default page size and prefetch
            async for _wf in it:
                n += 1
        peak, hwm_peak = _maxrss_kib(), _hwm_kib()
    if n != items:
        raise RuntimeError(f"walked {n} items, expected {items}")
    return {
        "items": n,
        "baseline_kib": baseline,
        "peak_kib": peak,
        "delta_kib": peak - baseline,
        "vmhwm_baseline_kib": hwm_baseline,
        "vmhwm_peak_kib": hwm_peak,
    }


def main() -> None:
    url, app_key, app_secret, items = sys.argv[1:5]
    print(json.dumps(asyncio.run(walk(url, app_key, app_secret, int(items)))))


if __name__ == "__main__":
    main()

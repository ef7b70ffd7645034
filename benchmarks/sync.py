"""
Benchmark `airudder-async sync` (SQLite and PostgreSQL) against `export` to JSONL; print a Markdown table.

Usage: python benchmarks/sync.py [--workflows 100000] [--small 20000] [--kills 5] [--no-postgres]

A FakeAirudder (0 ms latency) runs in its own process with N recent workflows (`add_history`), and
every measured command is a fresh `python -m airudder_async` process, so interpreter start-up counts
for export and sync alike and peak RSS (`wait4`) is each command's own. It measures, in one run:

1. `export` to JSONL of the sandbox, then a first `sync` into SQLite and into PostgreSQL (a server that
   this script starts with initdb + pg_ctl, as the tests do);
2. 500 status changes + 300 new workflows on the server, a second sync of each (changes applied and
   recorded, rows, pages read), then a third with nothing changed;
3. peak RSS of export and of the SQLite sync at the small size and at N;
4. SIGKILL at --kills random moments of an N-workflow SQLite sync, each followed by a restart; the
   final table and history are compared, row for row, with those of an uninterrupted sync.

It takes about two minutes on 2 cores. Not collected by pytest, never a CI gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.pgserver import PostgresServer  # noqa: E402 - the repository root is on the path now

SUMMARY = re.compile(
    r"([\d,]+) read in ([\d,]+) pages: ([\d,]+) inserted, ([\d,]+) changed, ([\d,]+) unchanged"
)
DATA = "workflow_id, name, template_name, start_time, end_time, total, status, create_time, extra"


# -- the server process ---------------------------------------------------------------------------------


async def serve(workflows: int) -> None:
    """Serve N recent workflows until stdin closes; `mutate C N SEED` lines change them."""
    from airudder_async.testing import FakeAirudder

    async with FakeAirudder() as fake:
        fake.record_requests = False
        fake.add_history(workflows)
        print(json.dumps({"url": fake.url, "key": fake.app_key, "secret": fake.app_secret}), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if words and words[0] == "mutate":
                changed, new = fake.mutate_random(
                    status_changes=int(words[1]), new=int(words[2]), seed=int(words[3])
                )
                print(json.dumps({"changed": len(changed), "new": len(new)}), flush=True)


class Server:
    """A FakeAirudder in a child process."""

    def __init__(self, workflows: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(workflows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRUDDER_")},
            "AIRUDDER_BASE_URL": info["url"],
            "AIRUDDER_APP_KEY": info["key"],
            "AIRUDDER_APP_SECRET": info["secret"],
        }

    def mutate(self, changes: int, new: int, seed: int) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"mutate {changes} {new} {seed}\n")
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- measured commands ----------------------------------------------------------------------------------


def run(env: dict[str, str], *argv: str) -> dict[str, Any]:
    """Run `python -m airudder_async ARGV`; return its wall time, peak RSS (MiB) and stderr."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airudder_async", *argv], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {text}")
    cpu = usage.ru_utime + usage.ru_stime
    out: dict[str, Any] = {"seconds": elapsed, "cpu": cpu, "rss_mib": usage.ru_maxrss / 1024, "stderr": text}
    match = SUMMARY.search(text)
    if match:
        read, pages, inserted, changed, unchanged = (int(g.replace(",", "")) for g in match.groups())
        out |= {
            "read": read,
            "pages": pages,
            "inserted": inserted,
            "changed": changed,
            "unchanged": unchanged,
        }
    return out


def history_rows(path: Path) -> int:
    """The number of history rows committed so far (0 before the file exists or has its tables)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            (count,) = db.execute("SELECT coalesce(max(id), 0) FROM workflow_history").fetchone()
            return int(count)
    except sqlite3.Error:
        return 0


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def pg_create(server: PostgresServer, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.url(name)


def best(env: dict[str, str], repeat: int, *argv: str, setup: Any = None) -> dict[str, Any]:
    """The fastest of *repeat* runs (after *setup* each time)."""
    results = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        results.append(run(env, *argv))
    return min(results, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=20_000, help="the second size for peak RSS")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each first-sync timing (best kept)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    n = args.workflows
    load0 = f"{os.getloadavg()[0]:.2f}"
    tmp = Path(tempfile.mkdtemp(prefix="airudder-sync-bench-"))
    pg = None if args.no_postgres else PostgresServer().start()
    report: list[str] = []

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def clean(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-sync.lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    try:
        small = Server(args.small)
        try:
            rss_small_export = run(small.env, "export", "-o", str(tmp / "small.jsonl"))
            rss_small_sync = run(small.env, "sync", "--db", str(tmp / "small.db"))
        finally:
            small.close()

        server = Server(n)
        try:
            db = tmp / "wf.db"
            say(f"export of {n:,} workflows ...")
            export = best(server.env, args.repeat, "export", "-o", str(tmp / "wf.jsonl"))
            say(f"  {export['seconds']:.2f} s; first sync into SQLite ...")
            first_sqlite = best(server.env, args.repeat, "sync", "--db", str(db), setup=lambda: clean(db))
            say(f"  {first_sqlite['seconds']:.2f} s")
            first_pg = second_pg = third_pg = None
            pg_urls: list[str] = []
            if pg is not None:
                say("first sync into PostgreSQL ...")
                results = []
                for i in range(args.repeat):
                    url = asyncio.run(pg_create(pg, f"bench_{i}"))
                    pg_urls.append(url)
                    results.append(run(server.env, "sync", "--db", url))
                first_pg = min(results, key=lambda r: r["seconds"])
                say(f"  {first_pg['seconds']:.2f} s")
            server.mutate(500, 300, seed=1)
            second_sqlite = run(server.env, "sync", "--db", str(db))
            third_sqlite = run(server.env, "sync", "--db", str(db))
            rows_sqlite = sqlite_rows(db, "SELECT count(*) FROM workflows")[0][0]
            history_sqlite = sqlite_rows(db, "SELECT kind, count(*) FROM workflow_history GROUP BY kind")
            if pg is not None:
                url = pg_urls[-1]
                second_pg = run(server.env, "sync", "--db", url)
                third_pg = run(server.env, "sync", "--db", url)
                rows_pg = asyncio.run(pg_rows(url, "SELECT count(*) FROM workflows"))[0][0]
                history_pg = asyncio.run(
                    pg_rows(url, "SELECT kind, count(*) FROM workflow_history GROUP BY kind ORDER BY kind")
                )

            # SIGKILL at random moments, then a restart; compare with an uninterrupted sync.
            killed, straight = tmp / "killed.db", tmp / "straight.db"
            kill_log = []
            if args.kills:
                rng = random.Random(2026)
                for target in sorted(rng.sample(range(1, n), args.kills)):
                    # A random moment of the walk: once the mirror's history reaches a random row count
                    # (polled; a benchmark may wait on the wall clock), the process gets SIGKILL.
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "airudder_async", "sync", "--db", str(killed)],
                        env=server.env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    done = 0
                    while proc.poll() is None and done < target:
                        time.sleep(0.005)
                        done = history_rows(killed)
                    proc.send_signal(signal.SIGKILL)
                    code = proc.wait()
                    kill_log.append(f"{target:,} ({history_rows(killed):,} rows, exit {code})")
                restarted = run(server.env, "sync", "--db", str(killed))
                run(server.env, "sync", "--db", str(straight))
                query = f"SELECT {DATA} FROM workflows ORDER BY workflow_id"
                hist = "SELECT workflow_id, kind, old_status, new_status, changes FROM workflow_history "
                hist += "ORDER BY workflow_id, kind"
                same_rows = sqlite_rows(killed, query) == sqlite_rows(straight, query)
                same_history = sqlite_rows(killed, hist) == sqlite_rows(straight, hist)
                killed_rows = sqlite_rows(killed, "SELECT count(*) FROM workflows")[0][0]
        finally:
            server.close()

        x = "\u00d7"
        report.append(
            f"## sync benchmark: {n:,} sandbox workflows, FakeAirudder at 0 ms, best of {args.repeat}"
        )
        report.append("")
        report.append(f"Load average at the start {load0}, at the end {os.getloadavg()[0]:.2f} (2 cores).")
        report.append("")
        report.append("| command | seconds | vs export | CPU s (client) | peak RSS (MiB) |")
        report.append("|---|---|---|---|---|")
        firsts = [("export to JSONL", export), ("first sync into SQLite", first_sqlite)]
        if first_pg is not None:
            firsts.append(("first sync into PostgreSQL", first_pg))
        for label, r in firsts:
            report.append(
                f"| {label} | {r['seconds']:.2f} | {r['seconds'] / export['seconds']:.2f}{x} | "
                f"{r['cpu']:.2f} | {r['rss_mib']:.0f} |"
            )
        report.append("")
        report.append(
            "| run (after 500 status changes + 300 new) | read | pages | inserted | changed | seconds |"
        )
        report.append("|---|---|---|---|---|---|")
        runs = [("SQLite, second", second_sqlite), ("SQLite, third", third_sqlite)]
        if second_pg is not None and third_pg is not None:
            runs += [("PostgreSQL, second", second_pg), ("PostgreSQL, third", third_pg)]
        for label, r in runs:
            report.append(
                f"| {label} | {r['read']:,} | {r['pages']:,} | {r['inserted']:,} | {r['changed']:,} | "
                f"{r['seconds']:.2f} |"
            )
        report.append("")
        report.append(f"SQLite: {rows_sqlite:,} rows; history by kind: {history_sqlite}")
        if pg is not None:
            report.append(f"PostgreSQL: {rows_pg:,} rows; history by kind: {history_pg}")
        report.append("")
        report.append("| peak RSS (MiB) | " + f"{args.small:,} | {n:,} |")
        report.append("|---|---|---|")
        report.append(f"| export | {rss_small_export['rss_mib']:.0f} | {export['rss_mib']:.0f} |")
        report.append(
            f"| sync into SQLite | {rss_small_sync['rss_mib']:.0f} | {first_sqlite['rss_mib']:.0f} |"
        )
        if args.kills:
            report.append("")
            resumed = "(resumed) " if "(resumed)" in restarted["stderr"] else ""
            report.append(
                f"SIGKILL once the history reached {', '.join(kill_log)}; the restart {resumed}"
                f"read {restarted['read']:,}; final table {killed_rows:,} rows, equal to an uninterrupted "
                f"sync: rows {same_rows}, history {same_history}"
            )
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # 100,000-row databases and exports, several of each
    print("\n".join(report))


if __name__ == "__main__":
    main()

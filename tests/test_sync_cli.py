"""
`airudder-async sync`: in-process runs against FakeAirudder and the sandbox, and real processes SIGKILLed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from airudder_async._cli import SyncProgress, duration, sync_sandbox
from airudder_async.sync import FINAL_STATUSES
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault
from tests.support import cli

pytestmark = pytest.mark.anyio

DATA = "workflow_id, name, template_name, start_time, end_time, total, status, create_time, extra"


def rows(path: Path) -> list[tuple[object, ...]]:
    """The mirrored data columns, ordered by id."""
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(f"SELECT {DATA} FROM workflows ORDER BY workflow_id").fetchall()


def changes(path: Path) -> list[tuple[object, ...]]:
    """The history without observation times, ordered by workflow and kind."""
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(
            "SELECT workflow_id, kind, old_status, new_status, changes FROM workflow_history "
            "ORDER BY workflow_id, kind"
        ).fetchall()


@pytest.fixture
def env(fake: FakeAirudder, monkeypatch: pytest.MonkeyPatch) -> FakeAirudder:
    """The fake server, with AIRUDDER_* in the environment pointing at it."""
    monkeypatch.setenv("AIRUDDER_BASE_URL", fake.url)
    monkeypatch.setenv("AIRUDDER_APP_KEY", fake.app_key)
    monkeypatch.setenv("AIRUDDER_APP_SECRET", fake.app_secret)
    return fake


async def test_sandbox_sync_follows_the_rounds(tmp_path: Path) -> None:
    """The sandbox evolves by --sandbox-round: each new round brings changes, a repeated round none."""
    db = str(tmp_path / "wf.db")
    first = await cli("sync", "--sandbox", "600", "--db", db)
    assert (first.code, first.out) == (0, b"")
    assert first.err.startswith(f"sync {db}: 600 read in 3 pages: 600 inserted, 0 changed")
    second = await cli("sync", "--sandbox", "600", "--sandbox-round", "1", "--db", db)
    assert "2 inserted, 3 changed" in second.err
    again = await cli("sync", "--sandbox", "600", "--sandbox-round", "1", "--db", db)
    assert "0 inserted, 0 changed" in again.err
    assert len(rows(tmp_path / "wf.db")) == 602


async def test_dry_run_and_progress(tmp_path: Path) -> None:
    """--dry-run says what would change and writes nothing; --progress shows inserted and changed."""
    db = str(tmp_path / "wf.db")
    await cli("sync", "--sandbox", "400", "--db", db)
    before = rows(tmp_path / "wf.db")
    dry = await cli("sync", "--sandbox", "400", "--sandbox-round", "2", "--db", db, "--dry-run")
    assert dry.code == 0
    assert "2 would insert, 4 would change" in dry.err
    assert "dry run: nothing written" in dry.err
    assert rows(tmp_path / "wf.db") == before
    shown = await cli("sync", "--sandbox", "400", "--sandbox-round", "2", "--db", db, "--progress",
                      "--page-size", "50", "--full")  # fmt: skip
    lines = shown.err.splitlines()
    assert lines[-2].startswith("pages 9, 402 items")
    assert lines[-2].endswith("2 inserted, 4 changed")
    assert "402 read in 9 pages: 2 inserted, 4 changed" in lines[-1]
    missing = await cli("sync", "--sandbox", "5", "--db", str(tmp_path / "new.db"), "--dry-run")
    assert missing.code == 2
    assert "does not exist: a dry run writes nothing" in missing.err
    assert not (tmp_path / "new.db").exists()


async def test_sync_against_the_api_from_the_environment(env: FakeAirudder, tmp_path: Path) -> None:
    """Credentials from the environment, --since/--until respected, and the mirror matches the server."""
    env.add_history(250)
    db = tmp_path / "wf.db"
    done = await cli("sync", "--db", str(db), "--lookback", "2d")
    assert done.code == 0, done.err
    assert len(rows(db)) == 250
    until = str(env.workflows[100]["create_time"])
    windowed = await cli("sync", "--db", str(db), "--until", until, "--since", until)
    assert "1 read in 1 pages: 0 inserted, 0 changed, 1 unchanged" in windowed.err


async def test_an_api_failure_exits_1_and_says_how_to_continue(env: FakeAirudder, tmp_path: Path) -> None:
    """A failed walk exits 1 with the error and the hint to rerun; the rerun finishes the mirror."""
    env.add_history(500)
    env.inject(Fault.http_status(400), on=3)
    db = tmp_path / "wf.db"
    failed = await cli("sync", "--db", str(db), "--page-size", "100", "--prefetch", "1")
    assert failed.code == 1
    assert "error: GET /service/cloud/workflow/instancelist: HTTP 400" in failed.err
    assert "run the same command again" in failed.err
    again = await cli("sync", "--db", str(db), "--page-size", "100")
    assert "500 read in 5 pages: 500 inserted" in again.err
    assert "(resumed)" in again.err
    env.inject(Fault.http_status(400), on=2)
    dry = await cli("sync", "--db", str(db), "--dry-run", "--full")
    assert dry.code == 1
    assert "run the same command again" not in dry.err


async def test_database_problems_exit_with_clear_errors(tmp_path: Path) -> None:
    """Locked and future-schema databases exit 2, an unwritable path exits 1; each with one error line."""
    db = tmp_path / "wf.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA user_version = 3")
    future = await cli("sync", "--sandbox", "5", "--db", str(db))
    assert future.code == 2
    assert future.err.startswith(f"error: {db} has schema version 3")
    (tmp_path / "file").write_text("")
    unwritable = await cli("sync", "--sandbox", "5", "--db", str(tmp_path / "file" / "x.db"))
    assert unwritable.code == 1
    assert unwritable.err.startswith("error: cannot open")
    fresh = tmp_path / "fresh.db"
    lock = os.open(f"{fresh}-sync.lock", os.O_RDWR | os.O_CREAT)
    import fcntl

    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        locked = await cli("sync", "--sandbox", "5", "--db", str(fresh))
    finally:
        os.close(lock)
    assert locked.code == 2
    assert "locked by another writer" in locked.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-items", "5"], "--max-items does not apply to sync"),
        (
            ["--partition", "0/2", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"],
            "--partition does not apply to sync",
        ),
        (["--full", "--since", "2026-01-01T00:00:00Z"], "--full reads everything"),
        (["--lookback", "soon"], "is not a duration"),
    ],
)
async def test_bad_sync_options_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options that make no sense for sync exit 2 before anything is opened."""
    done = await cli("sync", "--sandbox", "5", "--db", str(tmp_path / "wf.db"), *argv)
    assert done.code == 2
    assert message in capsys.readouterr().err  # argparse writes to the process's stderr
    assert not (tmp_path / "wf.db").exists()


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604_800), ("12h", 43_200), ("30m", 1800), ("90s", 90), ("2.5", 2.5)]
)
def test_durations(text: str, seconds: float) -> None:
    """--lookback takes a number with an optional d/h/m/s unit."""
    assert duration(text) == timedelta(seconds=seconds)


def test_a_duration_too_long_is_refused() -> None:
    """A duration beyond what timedelta holds is an argparse error, not a crash."""
    with pytest.raises(argparse.ArgumentTypeError, match="too long"):
        duration("1" * 30 + "d")


def test_sync_progress_line() -> None:
    """The sync progress line adds the counts inserted and changed to the walk's line."""
    progress = SyncProgress(io.StringIO(), enabled=True, tty=False, clock=lambda: 0.0)
    progress.inserted, progress.changed = 1234, 5
    line = progress.format(pages=3, done=600, total=None, elapsed=2.0, final=False)
    assert line == "pages 3, 600 items, 300 items/s, 1,234 inserted, 5 changed"


async def test_the_sync_sandbox_is_recent_and_mostly_settled() -> None:
    """The sandbox's old workflows are final; rounds change open ones and add new ones."""
    async with FakeAirudder() as fake:
        sync_sandbox(fake, 4000, 2)
        assert len(fake.workflows) == 4000 + 2 * 13
        old = fake.workflows[-1000:]
        assert all(wf["status"] in FINAL_STATUSES for wf in old)


# -- real processes -----------------------------------------------------------------------------------


def _env(fake: FakeAirudder) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRUDDER_")}
    return {
        **base,
        "AIRUDDER_BASE_URL": fake.url,
        "AIRUDDER_APP_KEY": fake.app_key,
        "AIRUDDER_APP_SECRET": fake.app_secret,
    }


async def test_sync_survives_five_sigkills(tmp_path: Path) -> None:
    """A sync SIGKILLed at 5 random moments and restarted each time ends with the very table (and
    history) of an uninterrupted sync: nothing lost, nothing twice."""
    killed, clean = tmp_path / "killed.db", tmp_path / "clean.db"
    cmd = [sys.executable, "-m", "airudder_async", "sync", "--page-size", "10", "--prefetch", "3"]
    rng = random.Random(12)
    async with FakeAirudder() as fake:
        fake.add_history(3000)
        environ = _env(fake)
        with anyio.fail_after(120):  # a deadline for a broken build, never a wait: the gates say when
            for _ in range(5):
                # Past the pages that may be pending (16 waiting, 16 being written, those prefetched), so
                # each run has had to wait for a commit before it is held and killed.
                gate = fake.gate(INSTANCELIST_PATH, after=rng.randint(40, 55))
                async with await anyio.open_process(
                    [*cmd, "--db", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=environ,
                ) as proc:  # fmt: skip
                    await gate.wait_held(1, within=60)
                    proc.kill()
                    assert await proc.wait() == -signal.SIGKILL
                gate.release()
            with closing(sqlite3.connect(killed)) as db, db:
                (pending,) = db.execute("SELECT cursor FROM sync_state").fetchone()
                (mirrored,) = db.execute("SELECT count(*) FROM workflows").fetchone()
            assert json.loads(pending)["received"] == mirrored
            assert 0 < mirrored < 3000
            done = await anyio.run_process([*cmd, "--db", str(killed)], env=environ, check=False)
            assert done.returncode == 0, done.stderr
            assert b"(resumed)" in done.stderr
            straight = await anyio.run_process([*cmd, "--db", str(clean)], env=environ, check=False)
            assert straight.returncode == 0
    assert len(rows(killed)) == 3000
    assert rows(killed) == rows(clean)
    assert changes(killed) == changes(clean)

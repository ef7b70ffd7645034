"""
`airudder-async export --partition I/K`: options, checkpoints, and K real processes with one killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from airudder_async.testing import AUTH_PATH, INSTANCELIST_PATH, FakeAirudder, make_workflows
from tests.redis_support import RedisServer
from tests.support import cli

pytestmark = pytest.mark.anyio


def window(n: int) -> tuple[str, str]:
    """--since and --until spanning exactly the sandbox's *n* workflows."""
    times = [str(w["create_time"]) for w in make_workflows(n)]
    return min(times), max(times)


def ids(path: Path) -> list[str]:
    """The workflow ids of a JSON lines export, in file order."""
    return [json.loads(line)["workflow_id"] for line in path.read_bytes().splitlines()]


DAY = ["--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"]
TWO_SECONDS = ["--since", "2026-01-01T00:00:00Z", "--until", "2026-01-01T00:00:01Z"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--partition", "0/2"], "needs --since and --until"),
        (["--partition", "2/2", *DAY], "I must be between 0 and K - 1"),
        (["--partition", "x/2", *DAY], "is not I/K"),
        (["--partition", "0/3", *TWO_SECONDS], "a window of 2 seconds cannot be split into 3"),
    ],
)
async def test_partition_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --partition, or one without both bounds or with too short a window, exits 2 and says why."""
    run = await cli("workflows", "--sandbox", "10", *argv)
    assert run.code == 2
    assert message in capsys.readouterr().err  # argparse writes to the real stderr


async def test_partition_exports_add_up_and_resume_checks_the_part(tmp_path: Path) -> None:
    """The K part exports together hold the full export once each; a part resumes only as itself."""
    since, until = window(1000)
    full = tmp_path / "full.jsonl"
    assert (await cli("export", "--sandbox", "1000", "-o", str(full))).code == 0
    parts = []
    for i in range(4):
        out = tmp_path / f"part{i}.jsonl"
        run = await cli("export", "--sandbox", "1000", "--since", since, "--until", until,
                        "--partition", f"{i}/4", "-o", str(out))  # fmt: skip
        assert (run.code, run.err) == (0, "")
        parts.append(ids(out))
    assert all(len(p) == 250 for p in parts)
    assert [wid for part in reversed(parts) for wid in part] == ids(full)

    # A checkpoint left by part 1 resumes only as part 1.
    checkpoint = tmp_path / "p.ckpt"
    filters = {"since": since, "until": until, "page_size": 200, "max_items": None, "partition": "1/4"}
    cursor = {"v": 1, "page": 2, "page_size": 200, "start_time": since, "end_time": until}
    state = {"v": 1, "format": "jsonl", "filters": filters, "cursor": cursor, "offset": 0}
    checkpoint.write_text(json.dumps(state))
    common = ["export", "--sandbox", "1000", "--since", since, "--until", until, "-o", str(tmp_path / "p"),
              "--checkpoint", str(checkpoint), "--resume"]  # fmt: skip
    run = await cli(*common, "--partition", "2/4")
    assert run.code == 2
    assert "--partition 1/4" in run.err


def _env(fake: FakeAirudder) -> dict[str, str]:
    return {
        **os.environ,
        "AIRUDDER_BASE_URL": fake.url,
        "AIRUDDER_APP_KEY": fake.app_key,
        "AIRUDDER_APP_SECRET": fake.app_secret,
    }


async def test_four_partition_processes_one_killed_and_resumed(tmp_path: Path) -> None:
    """K = 4 parts of 10,000 workflows as 4 processes, one SIGKILLed and resumed: each workflow once."""
    async with FakeAirudder(workflows=10_000) as fake:
        times = [datetime.fromisoformat(str(w["create_time"])) for w in fake.workflows]
        since, until = min(times).isoformat(), max(times).isoformat()
        environ = _env(fake)

        def command(i: int) -> list[str]:
            return [sys.executable, "-m", "airudder_async", "export", "--since", since, "--until", until,
                    "--partition", f"{i}/4", "--page-size", "100", "--prefetch", "1",
                    "-o", str(tmp_path / f"part{i}.jsonl")]  # fmt: skip

        with anyio.fail_after(60):  # a deadline for a broken build, never a wait: the gate says when
            gate = fake.gate(INSTANCELIST_PATH, after=5)  # part 3's pages 1-5 are served, the 6th waits
            async with await anyio.open_process(
                command(3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ
            ) as proc:
                await gate.wait_held(1, within=30)
                proc.kill()
                assert await proc.wait() == -signal.SIGKILL
            gate.release()
            checkpoint = tmp_path / "part3.jsonl.checkpoint.json"
            assert json.loads(checkpoint.read_bytes())["cursor"]["received"] == 500

            async def run(argv: list[str]) -> None:
                done = await anyio.run_process(argv, env=environ, check=False)
                assert (done.returncode, done.stderr) == (0, b"")

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(run, command(i))
                tg.start_soon(run, [*command(3), "--resume"])
        exported = [wid for i in range(4) for wid in ids(tmp_path / f"part{i}.jsonl")]
    assert len(exported) == 10_000
    assert sorted(exported) == sorted(fake.workflow_ids())
    assert not checkpoint.exists()


async def test_cli_processes_share_the_token_through_redis(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AIRUDDER_REDIS_URL, two exports make one auth request between them, under a --rate budget."""
    async with FakeAirudder(workflows=300) as fake:
        for name, value in {**_env(fake), "AIRUDDER_REDIS_URL": redis_server.url}.items():
            monkeypatch.setenv(name, value)
        for i in range(2):
            run = await cli(
                "export", "--rate", "500", "--page-size", "50", "-o", str(tmp_path / f"{i}.jsonl")
            )
            assert (run.code, run.err) == (0, "")
        assert fake.hits("POST", AUTH_PATH) == 1
    assert ids(tmp_path / "0.jsonl") == ids(tmp_path / "1.jsonl") == fake.workflow_ids()


async def test_cli_redis_url_problems_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad AIRUDDER_REDIS_URL, a missing redis extra or a bad --rate exit 2 with what to do."""
    monkeypatch.setenv("AIRUDDER_APP_KEY", "key")
    monkeypatch.setenv("AIRUDDER_APP_SECRET", "secret")
    monkeypatch.setenv("AIRUDDER_REDIS_URL", "http://user:pa55@host")
    run = await cli("workflows")
    assert run.code == 2
    assert "must be a redis://" in run.err
    assert "pa55" not in run.err
    monkeypatch.setitem(sys.modules, "airudder_async.redis", None)
    run = await cli("workflows")
    assert run.code == 2
    assert "pip install 'airudder-async[redis]'" in run.err
    assert (await cli("workflows", "--sandbox", "5", "--rate", "0")).code == 2
    assert "--rate must be" in capsys.readouterr().err


async def test_sandbox_takes_the_rate() -> None:
    """--rate paces the sandbox walk too."""
    run = await cli("workflows", "--sandbox", "30", "--page-size", "10", "--rate", "1000")
    assert run.code == 0
    assert len(run.out.splitlines()) == 30

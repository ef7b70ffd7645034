"""
The `airudder-async` command line, run in-process against FakeAirudder, and as a real process twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.from_thread
import pytest

from airudder_async.__main__ import amain, main
from airudder_async._cli import CSV_FIELDS, Progress, _duration, _fsync_if_possible, _silence_stdout, program
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault, make_workflows
from tests.support import cli

pytestmark = pytest.mark.anyio


@pytest.fixture
def env(fake: FakeAirudder, monkeypatch: pytest.MonkeyPatch) -> FakeAirudder:
    """The fake server, with AIRUDDER_* in the environment pointing at it."""
    monkeypatch.setenv("AIRUDDER_BASE_URL", fake.url)
    monkeypatch.setenv("AIRUDDER_APP_KEY", fake.app_key)
    monkeypatch.setenv("AIRUDDER_APP_SECRET", fake.app_secret)
    return fake


def jsonl(data: bytes) -> list[dict[str, object]]:
    """Parse JSON lines, insisting that every line is a whole object."""
    assert data.endswith(b"\n") or data == b""
    return [json.loads(line) for line in data.splitlines()]


def csv_rows(path: Path) -> list[list[str]]:
    """Read a CSV file the way the csv module wants it (newline='')."""
    with open(path, newline="") as f:
        return list(csv.reader(f))


def wire_row(wf: dict[str, object]) -> list[str]:
    """The CSV row expected for a wire-form workflow: empty for null, text otherwise."""
    return ["" if wf[name] is None else str(wf[name]) for name in CSV_FIELDS]


def tokens(fake: FakeAirudder) -> set[str]:
    """Every token the fake server saw in an Authorization header."""
    return {
        r.headers["Authorization"].split(" ", 1)[1] for r in fake.requests if "Authorization" in r.headers
    }


def listdir(path: Path) -> list[str]:
    """The sorted names in the directory *path*."""
    return sorted(p.name for p in path.iterdir())


def append(path: Path, data: bytes) -> None:
    """Append *data* to the file *path*, as a process killed mid-write would leave it."""
    with open(path, "ab") as f:
        f.write(data)


# -- workflows ----------------------------------------------------------------------------------------


async def test_workflows_streams_every_workflow_as_json_lines(env: FakeAirudder) -> None:
    """`workflows` writes one to_dict() per line in the server's order (newest first), nothing on stderr."""
    env.add_workflows(450)
    run = await cli("workflows", "--page-size", "200")
    assert (run.code, run.err) == (0, "")
    assert jsonl(run.out) == env.workflows
    assert env.hits("GET", INSTANCELIST_PATH) == 3


async def test_workflows_filters_by_since_and_until(env: FakeAirudder) -> None:
    """--since and --until (Z or another offset, space or T) bound the creation time, both inclusive."""
    env.add_workflows(100)
    since = str(env.workflows[70]["create_time"])
    plus7 = timezone(timedelta(hours=7))
    until = datetime.fromisoformat(str(env.workflows[20]["create_time"])).astimezone(plus7)
    run = await cli("workflows", "--since", since, "--until", until.isoformat(sep=" "), "--page-size", "15")
    assert run.code == 0, run.err
    assert jsonl(run.out) == env.workflows[20:71]
    first = next(r for r in env.requests if r.path == INSTANCELIST_PATH)
    assert first.query["start_time"].endswith("+00:00")
    assert first.query["end_time"].endswith("+07:00")


async def test_workflows_max_items_stops_early(env: FakeAirudder) -> None:
    """--max-items stops the stream after that many workflows."""
    env.add_workflows(90)
    run = await cli("workflows", "--max-items", "33", "--page-size", "10")
    assert run.code == 0
    assert jsonl(run.out) == env.workflows[:33]


@pytest.mark.parametrize(
    "argv",
    [
        ["workflows", "--page-size", "0"],
        ["workflows", "--page-size", "201"],
        ["workflows", "--page-size", "ten"],
        ["workflows", "--since", "2026-01-01T00:00:00"],
        ["export", "--until", "2026-01-01"],
        ["export", "--until", "yesterday"],
        ["workflows", "--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
        ["workflows", "--max-items", "0"],
        ["workflows", "--prefetch", "0"],
        ["export", "--prefetch", "65"],
        ["export", "--resume"],
        ["export", "--format", "xml"],
        ["workflows", "--sandbox", "--sandbox-latency", "-1"],
        ["workflows", "--sandbox", "--sandbox-latency", "inf"],
        ["workflows", "--sandbox", "--sandbox-latency", "nan"],
        ["workflows", "--since", "0001-01-01T00:00:00+00:01"],
    ],
    ids=lambda argv: " ".join(argv),
)
async def test_bad_arguments_exit_2_before_any_request(
    env: FakeAirudder, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A bad option value exits with status 2 and an argparse error, before any request is sent."""
    run = await cli(*argv)
    assert run.code == 2
    assert run.out == b""
    assert "error:" in run.err + capsys.readouterr().err
    assert env.requests == []


async def test_missing_credentials_exit_2_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without credentials the CLI names both variables and --sandbox on one stderr line, and exits 2."""
    for name in ("AIRUDDER_APP_KEY", "AIRUDDER_APP_SECRET", "AIRUDDER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRUDDER_APP_KEY", "a-key-without-secret")
    for command in ("workflows", "export"):
        run = await cli(command)
        assert (run.code, run.out) == (2, b"")
        assert run.err.count("\n") == 1
        assert "AIRUDDER_APP_KEY" in run.err
        assert "AIRUDDER_APP_SECRET" in run.err
        assert "--sandbox" in run.err
        assert "a-key-without-secret" not in run.err


async def test_sandbox_serves_the_synthetic_workflows(monkeypatch: pytest.MonkeyPatch) -> None:
    """--sandbox N walks N deterministic synthetic workflows from an in-process fake, without credentials."""
    for name in ("AIRUDDER_APP_KEY", "AIRUDDER_APP_SECRET", "AIRUDDER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    run = await cli("workflows", "--sandbox", "450", "--page-size", "100")
    assert (run.code, run.err) == (0, "")
    assert jsonl(run.out) == make_workflows(450)


def test_main_uses_the_process_streams(capsys: pytest.CaptureFixture[str]) -> None:
    """main() runs its own event loop, writes to sys.stdout and returns the exit status."""
    assert main(["workflows", "--sandbox", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["workflows", "--page-size", "0"]) == 2
    assert "--page-size" in capsys.readouterr().err


# -- progress -----------------------------------------------------------------------------------------


async def test_progress_is_off_without_a_tty_unless_asked(env: FakeAirudder) -> None:
    """Without a TTY stderr stays empty; --progress adds a final line with items, total and rate."""
    env.add_workflows(45)
    quiet = await cli("workflows", "--page-size", "10")
    loud = await cli("workflows", "--page-size", "10", "--progress")
    assert quiet.err == ""
    assert loud.out == quiet.out
    (line,) = loud.err.splitlines()
    assert line.startswith("pages 5, 45 of 45 items (100%), ")
    assert "items/s" in line


def test_progress_prints_plain_lines_at_most_every_second() -> None:
    """Without a TTY, Progress prints a line once a second has passed, plus the final line."""
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, enabled=True, tty=False, clock=lambda: now[0])
    for t, done in ((0.5, 10), (1.2, 20), (1.5, 30), (2.0, 40)):
        now[0] = t
        progress.update(pages=done // 10, done=done, total=100)
    now[0] = 3.0
    progress.update(pages=10, done=100, total=100, final=True)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "pages 2, 20 of 100 items (20%), 17 items/s, ETA 5 s",
        "pages 10, 100 of 100 items (100%), 33 items/s, done in 3.0 s",
    ]


def test_progress_rewrites_one_line_on_a_tty() -> None:
    """On a TTY, Progress rewrites one line with a carriage return and ends it on the final update."""
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, enabled=True, tty=True, clock=lambda: now[0])
    now[0] = 0.5
    progress.update(pages=1, done=10, total=None)
    progress.close()
    now[0] = 1.0
    progress.update(pages=2, done=20, total=20, final=True)
    progress.close()
    assert stream.getvalue() == (
        "\rpages 1, 10 items, 20 items/s\x1b[K\n"
        "\rpages 2, 20 of 20 items (100%), 20 items/s, done in 1.0 s\x1b[K\n"
    )


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.4, "0 s"), (59, "59 s"), (61, "1:01"), (3600, "1:00:00"), (45296, "12:34:56")]
)
def test_eta_is_short_and_readable(seconds: float, shown: str) -> None:
    """The ETA shows seconds, then m:ss, then h:mm:ss."""
    assert _duration(seconds) == shown


# -- export -------------------------------------------------------------------------------------------


async def test_export_jsonl_to_a_file(env: FakeAirudder, tmp_path: Path) -> None:
    """`export -o FILE` writes JSON lines and leaves no checkpoint behind on success."""
    env.add_workflows(120)
    out = tmp_path / "wf.jsonl"
    run = await cli("export", "-o", str(out), "--page-size", "50")
    assert (run.code, run.out, run.err) == (0, b"", "")
    assert jsonl(out.read_bytes()) == env.workflows
    assert listdir(tmp_path) == ["wf.jsonl"]


async def test_export_to_stdout_writes_no_checkpoint(
    env: FakeAirudder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export` without -o (or with -o -) writes to stdout and creates no file."""
    env.add_workflows(30)
    monkeypatch.chdir(tmp_path)
    for argv in (["export"], ["export", "-o", "-"]):
        run = await cli(*argv, "--page-size", "7")
        assert run.code == 0
        assert jsonl(run.out) == env.workflows
    assert listdir(tmp_path) == []


async def test_export_csv_round_trips(env: FakeAirudder, tmp_path: Path) -> None:
    """CSV has the 8 wire names as header, Z times, empty cells for null, and parses back to the values."""
    env.add_workflows(60)
    out = tmp_path / "wf.csv"
    run = await cli("export", "--format", "csv", "-o", str(out), "--page-size", "25")
    assert run.code == 0, run.err
    header, *rows = csv_rows(out)
    assert header == list(CSV_FIELDS)
    assert rows == [wire_row(wf) for wf in env.workflows]
    assert any(row[3] == "" for row in rows)  # start_time null
    assert any(row[4] == "" for row in rows)  # end_time null
    assert all(row[7].endswith("Z") for row in rows)


async def test_export_csv_quotes_awkward_values(env: FakeAirudder, tmp_path: Path) -> None:
    """Names with commas, quotes and newlines survive the CSV round trip."""
    env.create_workflow({"name": 'a, "quoted"\nname', "workflow_template_name": "t,1", "end_time": None})
    out = tmp_path / "wf.csv"
    run = await cli("export", "--format", "csv", "-o", str(out))
    assert run.code == 0, run.err
    assert csv_rows(out)[1:] == [wire_row(wf) for wf in env.workflows]


@pytest.mark.parametrize(("fmt", "prefetch"), [("jsonl", "1"), ("csv", "1"), ("jsonl", "8"), ("csv", "8")])
async def test_export_resumes_after_a_failure_exactly_once(
    env: FakeAirudder, tmp_path: Path, fmt: str, prefetch: str
) -> None:
    """An export ended by an unretried error resumes: every workflow exactly once, and one CSV header."""
    env.add_workflows(230)
    out = tmp_path / f"wf.{fmt}"
    argv = ["export", "-o", str(out), "--format", fmt, "--page-size", "50", "--prefetch", prefetch]
    env.inject(Fault.malformed_json(), on=3)  # not JSON: a DecodeError, which is never retried
    failed = await cli(*argv)
    assert failed.code == 1
    assert failed.err.startswith("error: GET /service/cloud/workflow/instancelist: ")
    checkpoint = tmp_path / f"wf.{fmt}.checkpoint.json"
    assert checkpoint.exists()
    partial = out.read_bytes()
    written = len(partial.splitlines()) - (fmt == "csv")
    assert 0 < written < 230
    if prefetch == "1":
        assert written == 100  # pages 1 and 2; the 3rd request failed
        assert "the export stopped after 100 workflows" in failed.err
    assert json.loads(checkpoint.read_text())["offset"] == len(partial)

    done = await cli(*argv, "--resume")
    assert (done.code, done.err) == (0, "")
    if fmt == "csv":
        header, *rows = csv_rows(out)
        assert header == list(CSV_FIELDS)
        assert rows == [wire_row(wf) for wf in env.workflows]
    else:
        assert jsonl(out.read_bytes()) == env.workflows
    assert not checkpoint.exists()


async def test_resume_drops_a_half_written_line(env: FakeAirudder, tmp_path: Path) -> None:
    """A resume truncates the output to the checkpoint's offset, so a torn last line disappears."""
    env.add_workflows(100)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "20", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=4)
    assert (await cli(*argv)).code == 1
    append(out, b'{"workflow_id": "torn-by-a-kill", "na')
    assert (await cli(*argv, "--resume")).code == 0
    assert jsonl(out.read_bytes()) == env.workflows


async def test_failed_export_prints_the_exact_resume_command(env: FakeAirudder, tmp_path: Path) -> None:
    """A failed export prints its own command line plus --resume, shell-quoted, and that command finishes."""
    env.add_workflows(40)
    out = tmp_path / "my export's file.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=[2, 4])
    failed = await cli(*argv)
    command = shlex.join(["airudder-async", *argv, "--resume"])
    assert failed.code == 1
    assert failed.err.splitlines()[-1] == "  " + command

    again = await cli(*shlex.split(command)[1:])  # dies once more; the hint has --resume only once
    assert again.code == 1
    assert again.err.splitlines()[-1] == "  " + command
    done = await cli(*shlex.split(command)[1:])
    assert done.code == 0
    assert jsonl(out.read_bytes()) == env.workflows


async def test_resume_counts_max_items_from_the_start(env: FakeAirudder, tmp_path: Path) -> None:
    """--max-items bounds the whole export, across a resume."""
    env.add_workflows(200)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "50", "--prefetch", "1", "--max-items", "120"]
    env.inject(Fault.malformed_json(), on=3)
    assert (await cli(*argv)).code == 1
    assert len(out.read_bytes().splitlines()) == 100
    assert (await cli(*argv, "--resume")).code == 0
    assert jsonl(out.read_bytes()) == env.workflows[:120]


async def test_resume_to_stdout_with_a_checkpoint(env: FakeAirudder, tmp_path: Path) -> None:
    """An export to stdout with --checkpoint resumes to stdout; the two outputs join to the whole list."""
    env.add_workflows(60)
    checkpoint = tmp_path / "stdout.checkpoint.json"
    argv = ["export", "--checkpoint", str(checkpoint), "--page-size", "20", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=3)
    first = await cli(*argv)
    assert first.code == 1
    offset = json.loads(checkpoint.read_text())["offset"]
    second = await cli(*argv, "--resume")
    assert second.code == 0
    assert f"truncate -s {offset}" in second.err
    assert jsonl(first.out[:offset] + second.out) == env.workflows
    assert not checkpoint.exists()


async def test_checkpoint_misuse_exits_2_before_any_request(env: FakeAirudder, tmp_path: Path) -> None:
    """--resume without a checkpoint, a leftover checkpoint without --resume, or other options exit 2."""
    env.add_workflows(30)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    nothing = await cli(*argv, "--resume")
    assert nothing.code == 2
    assert "no checkpoint" in nothing.err
    assert env.requests == []

    env.inject(Fault.malformed_json(), on=2)
    assert (await cli(*argv)).code == 1
    sent = len(env.requests)
    again = await cli(*argv)
    assert again.code == 2
    assert "--resume" in again.err
    other = await cli(*argv, "--format", "csv", "--resume")
    assert other.code == 2
    assert "--format jsonl" in other.err
    assert len(env.requests) == sent
    (tmp_path / "wf.jsonl.checkpoint.json").write_text("{not json")
    broken = await cli(*argv, "--resume")
    assert broken.code == 2
    assert "not an export checkpoint" in broken.err


async def test_secrets_never_reach_stdout_or_stderr(
    env: FakeAirudder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the APPSecret nor a token appears in any output, on success, on failure or when refused."""
    env.add_workflows(50)
    out = tmp_path / "wf.jsonl"
    runs = [await cli("workflows", "--progress", "--page-size", "10")]
    env.inject(Fault.revoke_token(), on=2)  # a 401, then a second token
    env.inject(Fault.malformed_json(), on=4)
    runs.append(await cli("export", "-o", str(out), "--progress", "--page-size", "10", "--prefetch", "1"))
    assert runs[-1].code == 1
    monkeypatch.setenv("AIRUDDER_APP_SECRET", "wrong-secret-1234")
    refused = await cli("workflows")
    assert refused.code == 1
    assert refused.err.startswith("error: ")
    runs.append(refused)
    secrets = {env.app_secret, "wrong-secret-1234", *tokens(env)}
    assert len(secrets) > 2
    for run in runs:
        for secret in secrets:
            assert secret not in run.err
            assert secret.encode() not in run.out


async def test_base_url_must_be_https(env: FakeAirudder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-http AIRUDDER_BASE_URL to a remote host is refused with exit status 2 before any request."""
    monkeypatch.setenv("AIRUDDER_BASE_URL", "http://api.example.com")
    run = await cli("workflows")
    assert run.code == 2
    assert run.err.startswith("error: AIRUDDER_BASE_URL: ")
    assert env.requests == []


async def test_output_problems_are_reported(env: FakeAirudder, tmp_path: Path) -> None:
    """An output or checkpoint that cannot be written is a one-line error, exit status 1."""
    env.add_workflows(10)
    no_dir = tmp_path / "missing"
    run = await cli("export", "-o", str(no_dir / "wf.jsonl"))
    assert run.code == 1
    assert run.err.startswith(f"error: cannot open {no_dir / 'wf.jsonl'}: ")
    run = await cli("export", "-o", str(tmp_path / "wf.jsonl"), "--checkpoint", str(no_dir / "ck.json"))
    assert run.code == 1
    assert run.err.startswith("error: cannot write the export: ")
    assert "resume" not in run.err  # no checkpoint was written, so there is nothing to resume
    assert env.requests == []


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"v": 1}', '{"v": 1, "offset": 0, "cursor": {"v": 1, "page": 0, "page_size": 5}}'],
)
async def test_a_broken_checkpoint_exits_2(env: FakeAirudder, tmp_path: Path, content: str) -> None:
    """A checkpoint that is not JSON, not an object, incomplete or holds a bad cursor is refused (exit 2)."""
    out = tmp_path / "wf.jsonl"
    out.write_bytes(b"")
    (tmp_path / "wf.jsonl.checkpoint.json").write_text(content)
    run = await cli("export", "-o", str(out), "--resume")
    assert run.code == 2
    assert "is not an export checkpoint" in run.err
    assert env.requests == []


async def test_resume_checks_the_output_file(env: FakeAirudder, tmp_path: Path) -> None:
    """A resume exits 2 when the output is gone or shorter than recorded, or the checkpoint is unreadable."""
    env.add_workflows(30)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=3)
    assert (await cli(*argv)).code == 1
    sent = len(env.requests)
    out.write_bytes(out.read_bytes()[:-1])
    short = await cli(*argv, "--resume")
    assert short.code == 2
    assert "the checkpoint recorded" in short.err
    out.unlink()
    gone = await cli(*argv, "--resume")
    assert gone.code == 2
    assert "is gone" in gone.err
    for unreadable in (tmp_path, tmp_path / "wf.jsonl.checkpoint.json" / "x"):  # a directory; ENOTDIR
        run = await cli(*argv, "--resume", "--checkpoint", str(unreadable))
        assert run.code == 2
        assert run.err.startswith(f"error: cannot read checkpoint {unreadable}: ")
    assert len(env.requests) == sent


async def test_resume_after_the_last_page_only_cleans_up(env: FakeAirudder, tmp_path: Path) -> None:
    """A checkpoint already at --max-items (died before removing it) resumes without a request."""
    env.add_workflows(30)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--max-items", "20", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=2)
    assert (await cli(*argv)).code == 1
    checkpoint = tmp_path / "wf.jsonl.checkpoint.json"
    state = json.loads(checkpoint.read_text())
    state["cursor"]["received"] = 20  # as if the last page was written, then the process died
    checkpoint.write_text(json.dumps(state))
    sent = len(env.requests)
    done = await cli(*argv, "--resume", "--progress")
    assert done.code == 0
    assert "20 of 20 items" in done.err
    assert len(env.requests) == sent
    assert not checkpoint.exists()


class _CancelOnWrite(io.BytesIO):
    """A stdout that cancels *scope* (what Ctrl-C does) during its *n*-th write."""

    def __init__(self, scope: anyio.CancelScope, n: int) -> None:
        super().__init__()
        self.scope, self.n, self.writes = scope, n, 0

    def write(self, data: object) -> int:
        self.writes += 1
        if self.writes == self.n:
            anyio.from_thread.run_sync(self.scope.cancel)  # the CLI writes pages from a worker thread
        assert isinstance(data, bytes)
        return super().write(data)


async def test_an_interrupted_export_prints_the_resume_command(env: FakeAirudder, tmp_path: Path) -> None:
    """Cancelling an export (what Ctrl-C does) prints how far it got and the resume command."""
    env.add_workflows(50)
    argv = ["export", "--checkpoint", str(tmp_path / "ck.json"), "--page-size", "10", "--prefetch", "1"]
    err = io.StringIO()
    with anyio.CancelScope() as scope:
        out = _CancelOnWrite(scope, 3)
        await amain(argv, stdout=out, stderr=err)
    assert scope.cancelled_caught
    assert err.getvalue().splitlines() == [
        "interrupted after 30 workflows (all saved in the output); resume with:",
        "  " + shlex.join(["airudder-async", *argv, "--resume"]),
    ]
    offset = json.loads((tmp_path / "ck.json").read_text())["offset"]
    resumed = await cli(*argv, "--resume")
    assert resumed.code == 0
    assert jsonl(out.getvalue()[:offset] + resumed.out) == env.workflows


def pipe() -> tuple[BinaryIO, BinaryIO]:
    """A real pipe as (reader, writer) binary streams."""
    read_fd, write_fd = os.pipe()
    return open(read_fd, "rb"), open(write_fd, "wb")


class _ClosedPipe(io.BytesIO):
    """A stdout whose reader went away."""

    def write(self, data: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("command", ["workflows", "export"])
async def test_broken_pipe_in_process_exits_0(env: FakeAirudder, command: str) -> None:
    """A BrokenPipeError on stdout ends the command quietly with status 0."""
    env.add_workflows(5)
    err = io.StringIO()
    assert await amain([command], stdout=_ClosedPipe(), stderr=err) == 0
    assert err.getvalue() == ""


async def test_export_to_a_pipe_skips_fsync(env: FakeAirudder, tmp_path: Path) -> None:
    """Export to a pipe with --checkpoint works: fsync on a pipe is skipped, the checkpoint still written."""
    env.add_workflows(10)
    reader, writer = pipe()
    with reader, writer:
        code = await amain(
            ["export", "--checkpoint", str(tmp_path / "ck.json")], stdout=writer, stderr=io.StringIO()
        )
        writer.close()
        data = reader.read()
    assert code == 0
    assert jsonl(data) == env.workflows


def test_fsync_errors_other_than_not_supported_propagate() -> None:
    """_fsync_if_possible ignores 'not supported here' but re-raises real errors such as EBADF."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)

    class Closed(io.BytesIO):
        def fileno(self) -> int:
            return write_fd

    with pytest.raises(OSError, match="Bad file descriptor"):
        _fsync_if_possible(Closed())


def test_silence_stdout_points_the_fd_at_devnull() -> None:
    """After a broken pipe, stdout's descriptor is redirected to /dev/null so later flushes succeed."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with open(write_fd, "wb", buffering=0) as stream:
        with pytest.raises(BrokenPipeError):
            stream.write(b"x")
        _silence_stdout(stream)
        assert stream.write(b"x") == 1
    _silence_stdout(io.BytesIO())  # no descriptor: nothing to do


def test_program_names_the_command_to_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume hint starts with python -m, the short script name when on PATH, or the path as started."""
    monkeypatch.setattr(sys, "argv", ["/somewhere/airudder_async/__main__.py"])
    assert program() == [sys.executable, "-m", "airudder_async"]
    script = tmp_path / "airudder-async"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program() == ["airudder-async"]
    monkeypatch.setenv("PATH", "")
    assert program() == [str(script)]
    monkeypatch.setattr(sys, "argv", [])
    assert program() == ["airudder-async"]


async def test_amain_reads_sys_argv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """amain() without argv parses sys.argv[1:] (here a bad page size: status 2)."""
    monkeypatch.setattr(sys, "argv", ["airudder-async", "workflows", "--page-size", "0"])
    assert await amain() == 2
    assert "--page-size" in capsys.readouterr().err


def test_main_turns_ctrl_c_into_status_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() returns 130 when Ctrl-C reaches it."""

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(anyio, "run", interrupted)
    assert main(["workflows", "--sandbox"]) == 130


# -- real processes -----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRUDDER_")}


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    """`workflows | head -1`: the CLI exits 0 with an empty stderr when stdout's reader goes away."""
    cmd = [sys.executable, "-m", "airudder_async", "workflows", "--sandbox", "20000"]
    pipe = subprocess.PIPE
    with subprocess.Popen(cmd, stdout=pipe, stderr=pipe, env=_env(), cwd=tmp_path) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert json.loads(proc.stdout.readline())["name"] == "wf-0"
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=20)
    assert (code, err) == (0, b"")


async def test_export_survives_sigkill_and_resumes(tmp_path: Path) -> None:
    """An export SIGKILLed while its 6th page is on the way resumes to every workflow, once each."""
    out = tmp_path / "wf.jsonl"
    checkpoint = tmp_path / "wf.jsonl.checkpoint.json"
    cmd = [sys.executable, "-m", "airudder_async", "export", "--page-size", "200", "--prefetch", "1",
           "-o", str(out)]  # fmt: skip
    async with FakeAirudder(workflows=2000) as fake:
        gate = fake.gate(INSTANCELIST_PATH, after=5)  # pages 1-5 are served, the 6th waits
        environ = {
            **_env(),
            "AIRUDDER_BASE_URL": fake.url,
            "AIRUDDER_APP_KEY": fake.app_key,
            "AIRUDDER_APP_SECRET": fake.app_secret,
        }
        with anyio.fail_after(30):  # a deadline for a broken build, never a wait: the gate says when
            async with await anyio.open_process(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ
            ) as proc:
                await gate.wait_held(1, within=30)  # the process starts first: more than the default
                proc.kill()
                assert await proc.wait() == -signal.SIGKILL
            gate.release()
            received = json.loads(checkpoint.read_bytes())["cursor"]["received"]
            assert 0 < received < 2000
            assert len(out.read_bytes().splitlines()) < 2000

            resumed = await anyio.run_process([*cmd, "--resume"], env=environ, check=False)
        assert (resumed.returncode, resumed.stderr) == (0, b"")
        ids = [line["workflow_id"] for line in jsonl(out.read_bytes())]
        assert ids == fake.workflow_ids()
    assert not checkpoint.exists()

"""
The command line against hostile input: server text, planted files, clashing paths, concurrent exports.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async import _cli
from airudder_async._cli import (
    Progress,
    aware_time,
    encode_csv,
    encode_jsonl,
    printable,
    write_checkpoint,
)
from airudder_async.models import Workflow
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault, Gate
from tests.support import Run, cli

pytestmark = pytest.mark.anyio

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\r\n  airudder-async export --resume\x7f\x00"
UNPRINTABLE = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0))}


class Gated(NamedTuple):
    """A fake server and the gate that holds its 3rd instancelist answer (and every later one)."""

    fake: FakeAirudder
    gate: Gate


def point_at(fake: FakeAirudder, monkeypatch: pytest.MonkeyPatch) -> FakeAirudder:
    """Put AIRUDDER_* for *fake* in the environment and return it."""
    monkeypatch.setenv("AIRUDDER_BASE_URL", fake.url)
    monkeypatch.setenv("AIRUDDER_APP_KEY", fake.app_key)
    monkeypatch.setenv("AIRUDDER_APP_SECRET", fake.app_secret)
    return fake


@pytest.fixture
def env(fake: FakeAirudder, monkeypatch: pytest.MonkeyPatch) -> FakeAirudder:
    """The fake server, with AIRUDDER_* in the environment pointing at it."""
    return point_at(fake, monkeypatch)


@pytest.fixture
async def gated(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gated]:
    """A fake of 100 workflows that holds the 3rd instancelist answer, in the environment."""
    async with FakeAirudder(workflows=100) as fake:
        point_at(fake, monkeypatch)
        gate = fake.gate(INSTANCELIST_PATH, after=2)
        yield Gated(fake, gate)
        gate.release()


def jsonl(data: bytes) -> list[dict[str, object]]:
    """Parse JSON lines (with the stdlib, which accepts lone surrogates), insisting on whole lines."""
    assert data.endswith(b"\n") or data == b""
    return [json.loads(line) for line in data.splitlines()]


def listdir(path: Path) -> list[str]:
    """The sorted names in the directory *path*."""
    return sorted(p.name for p in path.iterdir())


def snapshot(path: Path) -> dict[str, tuple[bool, bytes | None]]:
    """Each name in the directory *path*: whether it is a symlink, and the bytes it reads as (if any)."""
    return {p.name: (p.is_symlink(), p.read_bytes() if p.exists() else None) for p in path.iterdir()}


def csv_rows(path: Path) -> list[list[str]]:
    """Read a CSV file the way the csv module wants it (newline=''), as UTF-8."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def page_body(workflows: list[dict[str, object]], count: int) -> bytes:
    """An instancelist answer made by the stdlib encoder, which writes lone surrogates as escapes."""
    return json.dumps({"data": {"lists": workflows, "count": count}, "status": "OK", "code": 200}).encode()


def with_names(fake: FakeAirudder, names: dict[int, str]) -> list[dict[str, object]]:
    """A copy of the fake's workflows with the names at the given indexes replaced."""
    copy = [dict(wf) for wf in fake.workflows]
    for index, name in names.items():
        copy[index]["name"] = name
    return copy


def workflow(name: str = "n", **times: datetime | None) -> Workflow:
    """A workflow built directly, with *name* and any of its times replaced."""
    fields: dict[str, Any] = {
        "workflow_id": "id",
        "name": name,
        "template_name": "t",
        "start_time": None,
        "end_time": None,
        "total": 1,
        "status": "finished",
        "create_time": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return Workflow(**{**fields, **times})


# -- lone surrogates in server text -------------------------------------------------------------------

# st.text() rarely yields surrogates even from such an alphabet: join the characters ourselves.
ANY_TEXT = st.lists(st.one_of(st.characters(), st.characters(codec=None, categories=["Cs"]))).map("".join)
# What a JSON decoder can hand over: adjacent escapes of a high and a low surrogate become one character.
DECODED_TEXT = ANY_TEXT.map(lambda text: json.loads(json.dumps(text)))


@given(names=st.lists(DECODED_TEXT, max_size=5))
def test_encode_jsonl_round_trips_any_text(names: list[str]) -> None:
    """Every line encode_jsonl writes is JSON that reads back to to_dict(), lone surrogates included."""
    items = [workflow(name) for name in names]
    data = encode_jsonl(items)
    data.decode()  # always valid UTF-8
    assert jsonl(data) == [wf.to_dict() for wf in items]


@given(name=ANY_TEXT)
def test_encode_csv_never_fails_and_keeps_encodable_text(name: str) -> None:
    """encode_csv always writes UTF-8; text without lone surrogates reads back unchanged."""
    data = encode_csv([workflow(name)])
    text = data.decode()
    (row,) = csv.reader(io.StringIO(text, newline=""))
    if not any("\ud800" <= c <= "\udfff" for c in name):
        assert row[1] == name


async def test_lone_surrogate_names_are_written_escaped(env: FakeAirudder, tmp_path: Path) -> None:
    """`workflows` and `export` write a lone-surrogate name as a JSON escape that reads back to it."""
    env.add_workflows(3)
    served = with_names(env, {1: "bad \ud800 name", 2: "caf\u00e9 \U0001f600"})
    env.inject(Fault.answer(page_body(served, 3)), on=[1, 2])
    streamed = await cli("workflows")
    out = tmp_path / "wf.jsonl"
    exported = await cli("export", "-o", str(out))
    assert (streamed.code, streamed.err, exported.code, exported.err) == (0, "", 0, "")
    for data in (streamed.out, out.read_bytes()):
        assert jsonl(data) == served
        assert b"\\ud800" in data
        assert "caf\u00e9".encode() in data  # lines without a surrogate stay plain UTF-8


async def test_lone_surrogate_name_in_csv_is_backslash_escaped(env: FakeAirudder, tmp_path: Path) -> None:
    """In CSV a lone surrogate becomes the text \\ud800 (backslashreplace); the file is valid UTF-8."""
    env.add_workflows(2)
    env.inject(Fault.answer(page_body(with_names(env, {0: "a\ud800b"}), 2)))
    out = tmp_path / "wf.csv"
    run = await cli("export", "--format", "csv", "-o", str(out))
    assert (run.code, run.err) == (0, "")
    assert [row[1] for row in csv_rows(out)] == ["name", "a\\ud800b", env.workflows[1]["name"]]


async def test_an_export_past_a_lone_surrogate_resumes(env: FakeAirudder, tmp_path: Path) -> None:
    """An export that stops after a page with a lone surrogate resumes to every workflow exactly once."""
    env.add_workflows(30)
    served = with_names(env, {12: "\udfff"})
    env.inject(Fault.answer(page_body(served[10:20], 30)), on=2)
    env.inject(Fault.malformed_json(), on=3)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    failed = await cli(*argv)
    assert failed.code == 1
    assert "after 20 workflows" in failed.err
    done = await cli(*argv, "--resume")
    assert (done.code, done.err) == (0, "")
    assert jsonl(out.read_bytes()) == served


# -- times that do not convert to UTC -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"])
async def test_a_time_beyond_utc_range_exits_2(env: FakeAirudder, text: str) -> None:
    """--since/--until that cannot be converted to UTC are an argparse error (exit 2), not a traceback."""
    for option in ("--since", "--until"):
        run = await cli("export", option, text)
        assert run.code == 2
    assert env.requests == []


OFFSETS = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)


@given(st.one_of(st.text(), st.datetimes(timezones=st.builds(timezone, OFFSETS)).map(datetime.isoformat)))
def test_aware_time_raises_only_argument_type_errors(text: str) -> None:
    """aware_time either returns a time that converts to UTC or raises argparse.ArgumentTypeError."""
    try:
        value = aware_time(text)
    except argparse.ArgumentTypeError:
        return
    assert value.astimezone(UTC).tzinfo is UTC


async def test_csv_times_beyond_utc_range_keep_their_offset(env: FakeAirudder, tmp_path: Path) -> None:
    """A server time that cannot be converted to UTC is written to CSV as sent, with its offset."""
    env.add_workflows(2)
    served = [dict(wf) for wf in env.workflows]
    served[0]["start_time"] = "0001-01-01T00:00:00+01:00"
    served[1]["end_time"] = "9999-12-31T23:59:59-01:00"
    env.inject(Fault.answer(page_body(served, 2)))
    out = tmp_path / "wf.csv"
    run = await cli("export", "--format", "csv", "-o", str(out))
    assert (run.code, run.err) == (0, "")
    header, *cells = csv_rows(out)
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    assert rows[0]["start_time"] == "0001-01-01T00:00:00+01:00"
    assert rows[1]["end_time"] == "9999-12-31T23:59:59-01:00"
    assert rows[1]["create_time"].endswith("Z")


def test_progress_with_an_enormous_total_shows_no_eta() -> None:
    """A total too large for float arithmetic drops the ETA instead of raising OverflowError."""
    progress = Progress(io.StringIO(), enabled=True, tty=False, clock=lambda: 0.0)
    line = progress.format(pages=1, done=10, total=10**400, elapsed=1.0, final=False)
    assert line.startswith("pages 1, 10 of ")
    assert "ETA" not in line


# -- terminal escapes in server text --------------------------------------------------------------------


@given(ANY_TEXT)
def test_printable_leaves_no_control_characters(text: str) -> None:
    """printable() output has no C0, DEL, C1 or lone surrogate; text without them is unchanged."""
    shown = printable(text)
    assert not UNPRINTABLE & set(shown)
    assert not any("\ud800" <= c <= "\udfff" for c in shown)
    if not any(c in UNPRINTABLE or "\ud800" <= c <= "\udfff" for c in text):
        assert shown == text


def test_printable_escapes_visibly_and_bounds_length() -> None:
    """Control characters become Python-style escapes, and a *limit* cuts long text with a count."""
    assert printable("a\x1b[2Jb\n\t\x9b") == "a\\x1b[2Jb\\n\\t\\x9b"
    assert printable("x" * 50, limit=10) == "x" * 10 + "... (40 more characters)"
    assert printable("x" * 10, limit=10) == "x" * 10


@pytest.mark.parametrize("status", [200, 400, 404])
async def test_server_messages_reach_the_terminal_escaped(
    env: FakeAirudder, tmp_path: Path, status: int
) -> None:
    """An error message from the server is printed on one line with every control character escaped."""
    env.add_workflows(20)
    body = {"code": 4001 if status == 200 else status, "status": "ERR", "message": HOSTILE * 300}
    env.inject(Fault.answer(body, status=status), on=[1, 3])
    streamed = await cli("workflows", "--progress")
    argv = ["export", "-o", str(tmp_path / "wf.jsonl"), "--progress", "--page-size", "10", "--prefetch", "1"]
    exported = await cli(*argv)
    for run in (streamed, exported):
        assert run.code == 1
        assert not UNPRINTABLE.difference("\n") & set(run.err)
        error = run.err.splitlines()[0]
        assert error.startswith("error: ")
        assert "\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\r\\n  airudder-async" in error
        assert len(error) < 7000
    assert exported.err.splitlines()[-2:] == [
        "the export stopped after 10 workflows (all saved in the output); resume with:",
        "  " + shlex.join(["airudder-async", *argv, "--resume"]),
    ]


async def test_file_names_are_printed_escaped(env: FakeAirudder, tmp_path: Path) -> None:
    """A file name with control characters is escaped in error messages too."""
    out = tmp_path / "no\x1b]0;x\x07dir" / "wf.jsonl"
    run = await cli("export", "-o", str(out))
    assert run.code == 1
    assert "\x1b" not in run.err
    assert "no\\x1b]0;x\\x07dir" in run.err


# -- the checkpoint and the output are different files ---------------------------------------------------


@pytest.mark.parametrize("link", ["same", "symlink-checkpoint", "symlink-output", "hardlink"])
async def test_a_checkpoint_that_is_the_output_exits_2(env: FakeAirudder, tmp_path: Path, link: str) -> None:
    """A checkpoint resolving to the output (same name, a symlink either way, a hard link) exits 2."""
    env.add_workflows(5)
    out, checkpoint = tmp_path / "wf.jsonl", tmp_path / "ck.json"
    if link == "same":
        checkpoint = out
    elif link == "symlink-checkpoint":
        checkpoint.symlink_to(out)
    elif link == "symlink-output":
        out.symlink_to(checkpoint)
    else:
        out.write_bytes(b"keep me\n")
        os.link(out, checkpoint)
    before = snapshot(tmp_path)
    for extra in ([], ["--resume"]):
        run = await cli("export", "-o", str(out), "--checkpoint", str(checkpoint), *extra)
        assert run.code == 2
        assert "is the output" in run.err
    assert snapshot(tmp_path) == before
    assert env.requests == []


async def test_an_output_at_the_old_temp_name_survives(env: FakeAirudder, tmp_path: Path) -> None:
    """`--checkpoint X -o X.tmp` finishes with the whole export: checkpoint temp files never reuse a name."""
    env.add_workflows(25)
    out = tmp_path / "ck.json.tmp"
    run = await cli("export", "-o", str(out), "--checkpoint", str(tmp_path / "ck.json"), "--page-size", "10")
    assert (run.code, run.err) == (0, "")
    assert jsonl(out.read_bytes()) == env.workflows
    assert listdir(tmp_path) == ["ck.json.tmp"]


# -- planted files ---------------------------------------------------------------------------------------


async def test_a_planted_temp_symlink_is_not_followed(env: FakeAirudder, tmp_path: Path) -> None:
    """A symlink planted at the old fixed temp name is left alone: the file it points to is unchanged."""
    env.add_workflows(25)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "wf.jsonl"
    planted = tmp_path / "wf.jsonl.checkpoint.json.tmp"
    planted.symlink_to(victim)
    env.inject(Fault.malformed_json(), on=2)
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    assert (await cli(*argv)).code == 1
    assert victim.read_bytes() == b"precious\n"
    checkpoint = tmp_path / "wf.jsonl.checkpoint.json"
    assert not checkpoint.is_symlink()
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o600
    assert (await cli(*argv, "--resume")).code == 0
    assert victim.read_bytes() == b"precious\n"
    assert planted.is_symlink()
    assert jsonl(out.read_bytes()) == env.workflows


def test_write_checkpoint_leaves_no_temp_file_when_it_fails(tmp_path: Path) -> None:
    """A checkpoint that cannot be put in place (a directory is in the way) leaves no temp file behind."""
    (tmp_path / "ck.json").mkdir()
    with pytest.raises(IsADirectoryError):
        write_checkpoint(tmp_path / "ck.json", {"v": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.json"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
async def test_a_checkpoint_that_is_not_a_regular_file_exits_2(
    env: FakeAirudder, tmp_path: Path, kind: str
) -> None:
    """--resume from a FIFO, a directory or a device is refused at once (no hang, no endless read)."""
    out = tmp_path / "wf.jsonl"
    out.write_bytes(b"")
    checkpoint = tmp_path / "ck.json"
    if kind == "fifo":
        os.mkfifo(checkpoint)
    elif kind == "directory":
        checkpoint.mkdir()
    else:
        checkpoint.symlink_to(os.devnull)
    run = await cli("export", "-o", str(out), "--checkpoint", str(checkpoint), "--resume")
    assert run.code == 2
    assert "not a regular file" in run.err
    assert env.requests == []


async def test_an_oversized_checkpoint_exits_2(env: FakeAirudder, tmp_path: Path) -> None:
    """A checkpoint larger than any real one is refused without being read whole."""
    out = tmp_path / "wf.jsonl"
    out.write_bytes(b"")
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_bytes(b" " * (2 << 20))
    run = await cli("export", "-o", str(out), "--checkpoint", str(checkpoint), "--resume")
    assert run.code == 2
    assert "too large" in run.err


@pytest.mark.parametrize("cursor_time", ["0001-01-01T00:00:00+01:00", "not a time"])
async def test_a_checkpoint_with_a_bad_time_exits_2(
    env: FakeAirudder, tmp_path: Path, cursor_time: str
) -> None:
    """A checkpoint whose cursor time is not a time, or does not convert to UTC, is refused (exit 2)."""
    env.add_workflows(30)
    out = tmp_path / "wf.jsonl"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    env.inject(Fault.malformed_json(), on=2)
    assert (await cli(*argv)).code == 1
    checkpoint = tmp_path / "wf.jsonl.checkpoint.json"
    state = json.loads(checkpoint.read_text())
    state["cursor"]["end_time"] = cursor_time
    checkpoint.write_text(json.dumps(state))
    sent = len(env.requests)
    run = await cli(*argv, "--resume")
    assert run.code == 2
    assert "is not an export checkpoint" in run.err
    assert len(env.requests) == sent


@pytest.mark.parametrize("kind", ["fifo", "device"])
async def test_an_output_that_is_not_a_regular_file_exits_2(
    env: FakeAirudder, tmp_path: Path, kind: str
) -> None:
    """-o naming a FIFO or a device is refused (use stdout for pipes) without blocking or writing."""
    if kind == "fifo":
        out = tmp_path / "fifo"
        os.mkfifo(out)
        reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so opening for writing works
    else:
        out, reader = Path(os.devnull), -1
    try:
        run = await cli("export", "-o", str(out), "--checkpoint", str(tmp_path / "ck.json"))
    finally:
        if reader >= 0:
            os.close(reader)
    assert run.code == 2
    assert "not a regular file" in run.err
    assert listdir(tmp_path) == (["fifo"] if kind == "fifo" else [])


# -- concurrent exports -----------------------------------------------------------------------------------


async def during_export(
    gated: Gated, argv: list[str], *others: list[str], meanwhile: Callable[[], object] = list
) -> tuple[Run, list[Run]]:
    """Run export *argv*; while the server holds its 3rd page, call *meanwhile*, run each of *others*."""
    first: list[Run] = []

    async def export() -> None:
        first.append(await cli(*argv))

    async with anyio.create_task_group() as tg:
        tg.start_soon(export)
        await gated.gate.wait_held(1)
        meanwhile()
        runs = [await cli(*other) for other in others]
        gated.gate.release()
    return first[0], runs


async def test_a_second_export_to_the_same_output_fails_fast(gated: Gated, tmp_path: Path) -> None:
    """While an export runs, a second one to its output, or a resume, exits 2; the first ends whole."""
    out = tmp_path / "wf.jsonl"
    (tmp_path / "link.jsonl").symlink_to(out)
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    via_link = ["export", "-o", str(tmp_path / "link.jsonl"), "--page-size", "10"]
    first, others = await during_export(gated, argv, argv, [*argv, "--resume"], via_link)
    for run in others:
        assert (run.code, run.out) == (2, b"")
        assert run.err.startswith("error: another export is writing ")
    assert (first.code, first.err) == (0, "")
    assert jsonl(out.read_bytes()) == gated.fake.workflows
    assert listdir(tmp_path) == ["link.jsonl", "wf.jsonl"]


async def test_two_exports_racing_past_the_checkpoint_check_do_not_mix(gated: Gated, tmp_path: Path) -> None:
    """A second export that finds no checkpoint yet (both started at once) still exits 2 on the lock."""
    out = tmp_path / "wf.jsonl"
    checkpoint = tmp_path / "wf.jsonl.checkpoint.json"
    argv = ["export", "-o", str(out), "--page-size", "10", "--prefetch", "1"]
    first, (second,) = await during_export(gated, argv, argv, meanwhile=checkpoint.unlink)
    assert (second.code, second.out) == (2, b"")
    assert second.err.startswith("error: another export is writing ")
    assert (first.code, first.err) == (0, "")
    assert jsonl(out.read_bytes()) == gated.fake.workflows
    assert listdir(tmp_path) == ["wf.jsonl"]


async def test_a_second_export_with_the_same_checkpoint_to_stdout_fails_fast(
    gated: Gated, tmp_path: Path
) -> None:
    """Two exports to stdout with one --checkpoint: the second exits 2; the first ends whole, no lock left."""
    argv = ["export", "--checkpoint", str(tmp_path / "ck.json"), "--page-size", "10", "--prefetch", "1"]
    first, (second,) = await during_export(gated, argv, argv)
    assert (second.code, second.out) == (2, b"")
    assert second.err.startswith("error: another export is using the checkpoint ")
    assert (first.code, first.err) == (0, "")
    assert jsonl(first.out) == gated.fake.workflows
    assert listdir(tmp_path) == []


async def test_a_planted_lock_symlink_is_not_followed(env: FakeAirudder, tmp_path: Path) -> None:
    """A symlink planted at the checkpoint's lock file is refused (exit 2); its target is unchanged."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "ck.json.lock").symlink_to(victim)
    run = await cli("export", "--checkpoint", str(tmp_path / "ck.json"))
    assert run.code == 2
    assert run.err.startswith(f"error: {tmp_path / 'ck.json.lock'} is a symbolic link: remove it")
    assert victim.read_bytes() == b"precious\n"
    missing = await cli("export", "--checkpoint", str(tmp_path / "missing" / "ck.json"))
    assert missing.code == 1
    assert missing.err.startswith(f"error: cannot open {tmp_path / 'missing' / 'ck.json.lock'}: ")
    assert env.requests == []


async def test_a_lock_file_replaced_while_locking_counts_as_busy(
    env: FakeAirudder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the lock file changes between opening and locking it (another export ended), exit 2."""
    monkeypatch.setattr(_cli, "_is_same_inode", lambda fd, path: False)
    run = await cli("export", "--checkpoint", str(tmp_path / "ck.json"))
    assert run.code == 2
    assert "another export is using" in run.err


def test_is_same_inode_notices_a_removed_or_replaced_file(tmp_path: Path) -> None:
    """_is_same_inode is true for the open file's own path, false once it is removed or replaced."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _cli._is_same_inode(fd, path)
        path.unlink()
        assert not _cli._is_same_inode(fd, path)
        path.write_bytes(b"")
        assert not _cli._is_same_inode(fd, path)
    finally:
        os.close(fd)


@pytest.mark.parametrize("output", [True, False])
async def test_without_fcntl_exports_run_unlocked_with_a_note(
    env: FakeAirudder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: bool
) -> None:
    """Where fcntl is missing (Windows) an export still runs, and says that it is not locked."""
    env.add_workflows(5)
    monkeypatch.setattr(_cli, "fcntl", None)
    target = ["-o", str(tmp_path / "wf.jsonl")] if output else ["--checkpoint", str(tmp_path / "ck.json")]
    run = await cli("export", *target)
    assert run.code == 0
    assert run.err.startswith("note: no file locking on this platform")

"""
The `airudder-async` command line: `workflows` streams JSON lines, `export` writes a resumable file.

`__main__.py` holds the argparse parser; everything that runs lives here so tests can call `run()` in
their own event loop. An export is made restartable by a checkpoint written after every page: the page
is written, flushed and fsynced to the output first, then the checkpoint (walk cursor + output byte
offset) replaces the old one atomically. A resumed export truncates the output to that offset, so a
page half-written when the process died is dropped and fetched again.

Hostile input: text from the server or from file names reaches stderr only through `printable()`
(control characters become visible escapes), a lone surrogate in a workflow is written as a JSON escape
(CSV: `backslashreplace`), the checkpoint's temp file is created exclusively (never through a planted
symlink), the checkpoint may not be the output, and an advisory lock on the output (on a lock file
beside the checkpoint when writing to stdout) makes a second export of the same file fail at once.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, TextIO

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from .testing import FakeAirudder

from . import _json
from ._client import AirudderClient
from ._config import DEFAULT_LIMITS, Limits
from ._pagination import WorkflowIterator
from ._time import format_time
from .errors import AirudderError
from .models import Cursor, Workflow
from .sync import FINAL_STATUSES

if TYPE_CHECKING:
    from .redis import RedisCoordination

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows): exports run unlocked, with a note
    fcntl = None

# Flags that exist only on some systems are 0 elsewhere (Windows has no FIFOs; POSIX has no O_BINARY).
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY: int = getattr(os, "O_BINARY", 0)

__all__ = [
    "CSV_FIELDS",
    "PROG",
    "aware_time",
    "duration",
    "int_between",
    "printable",
    "program",
    "run",
]

PROG = "airudder-async"
CSV_FIELDS = (
    "workflow_id",
    "name",
    "template_name",
    "start_time",
    "end_time",
    "total",
    "status",
    "create_time",
)
_CHECKPOINT_VERSION = 1
_CHECKPOINT_MAX_BYTES = 1 << 20  # a real checkpoint is well under 1 KiB
_MESSAGE_LIMIT = 1000  # characters of an error message shown (a server may send megabytes)
# C0 (newline and tab included: every message is one line), DEL, C1, and lone surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNLOCKED_NOTE = (
    "note: no file locking on this platform (no fcntl): make sure no other export writes this file"
)
_MISSING_CREDENTIALS = (
    "error: no credentials: set AIRUDDER_APP_KEY and AIRUDDER_APP_SECRET in the environment "
    "(AIRUDDER_BASE_URL is optional), or pass --sandbox to try the built-in fake server"
)


class UsageError(Exception):
    """A bad combination of options or files, found before any request: exit status 2."""


# -- argument types (used by the parser in __main__) --------------------------------------------------


def aware_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries an offset (`Z` or `+07:00`); argparse reports the error."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-01-01T00:00:00Z or '2026-01-01 00:00:00+07:00'"
        ) from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or an offset like +07:00")
    try:
        format_time(value, "utc")
    except ValueError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise argparse.ArgumentTypeError(f"{text!r} is outside the range of UTC times") from None
    return value


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """Return an argparse type that accepts an integer in *low*..*high* (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def partition_spec(text: str) -> tuple[int, int]:
    """Parse `--partition I/K` (I from 0 to K - 1); argparse reports the error."""
    match = re.fullmatch(r"([0-9]{1,9})/([0-9]{1,9})", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K, e.g. 0/4 (I counts from 0 to K - 1)")
    i, k = int(match[1]), int(match[2])
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be between 0 and K - 1")
    return i, k


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)")
_UNIT = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "": 1.0}


def duration(text: str) -> timedelta:
    """Parse a duration like 7d, 12h, 30m, 90s or 90 (seconds); argparse reports the error."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 7d, 12h, 30m or 90s")
    try:
        return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def program() -> list[str]:
    """Return how this process was started (for the resume hint): the script, or python -m."""
    arg0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(arg0) == "__main__.py":
        return [sys.executable, "-m", "airudder_async"]
    name = os.path.basename(arg0)
    found = shutil.which(name) if name else None
    if found and os.path.realpath(found) == os.path.realpath(arg0):
        return [name]  # on PATH: the short name runs the same script
    return [arg0 or PROG]


def printable(text: str, *, limit: int | None = None) -> str:
    """
    Return *text* safe to print on a terminal: C0 and C1 controls, DEL and lone surrogates become
    Python-style escapes (ESC prints as the four characters \\x1b); more than *limit* characters are cut.
    """
    more = 0
    if limit is not None and len(text) > limit:
        text, more = text[:limit], len(text) - limit
    shown = _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)
    return f"{shown}... ({more:,} more characters)" if more else shown


def _say(stderr: TextIO, *lines: str) -> None:
    # Every line for stderr goes through here, so no server text or file name can drive the terminal.
    for line in lines:
        stderr.write(printable(line) + "\n")
    stderr.flush()


def _fail(stderr: TextIO, exc: BaseException) -> None:
    _say(stderr, "error: " + printable(str(exc), limit=_MESSAGE_LIMIT))


# -- output -------------------------------------------------------------------------------------------


def encode_jsonl(items: Sequence[Workflow]) -> bytes:
    """
    Return *items* as JSON lines, one `Workflow.to_dict()` each; a line holding a lone surrogate is
    written with ASCII escapes (`"\\ud800"`), valid JSON that reads back to the same string.
    """
    dumps = _json.dumps
    try:
        return b"".join([dumps(wf.to_dict()) + b"\n" for wf in items])
    except (TypeError, ValueError):  # orjson refuses lone surrogates; the stdlib cannot make them UTF-8
        return b"".join([_json_line(wf.to_dict()) for wf in items])


def _json_line(data: dict[str, object]) -> bytes:
    try:
        return _json.dumps(data) + b"\n"
    except (TypeError, ValueError):
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def encode_csv(items: Sequence[Workflow], *, header: bool = False) -> bytes:
    """
    Return *items* as CSV rows (wire field order, UTC times with Z, empty cells for null).

    A lone surrogate is written as the text `\\ud800` (`backslashreplace`), and a time that has no
    UTC equivalent (year 1 or 9999 near the edge) as sent, with its offset.
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(CSV_FIELDS)
    writer.writerows(
        [
            (
                wf.workflow_id,
                wf.name,
                wf.template_name,
                _time_cell(wf.start_time),
                _time_cell(wf.end_time),
                wf.total,
                wf.status,
                _time_cell(wf.create_time),
            )
            for wf in items
        ]
    )
    return buf.getvalue().encode("utf-8", "backslashreplace")


def _time_cell(value: datetime | None) -> str:
    if value is None:
        return ""
    try:
        return format_time(value, "utc")
    except ValueError:  # no UTC equivalent (year 1 or 9999 near the edge): as sent
        return value.isoformat()


def _fsync_if_possible(stream: BinaryIO) -> None:
    # stdout may be a pipe, a terminal or (in tests) a BytesIO: nothing to sync there.
    try:
        os.fsync(stream.fileno())
    except io.UnsupportedOperation:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def _silence_stdout(stream: BinaryIO) -> None:
    # After EPIPE, point fd 1 at /dev/null so the interpreter's final flush cannot fail noisily.
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class Progress:
    """
    Progress on stderr: one line rewritten in place on a TTY, plain lines at most every second otherwise.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        tty: bool,
        start_done: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._enabled = enabled
        self._tty = tty
        self._interval = 0.1 if tty else 1.0
        self._clock = clock
        self._start = self._last = clock()
        self._start_done = start_done
        self._open_line = False

    def update(self, *, pages: int, done: int, total: int | None, final: bool = False) -> None:
        """Show the state when *final* or when the interval has passed since the last line."""
        if not self._enabled:
            return
        now = self._clock()
        if not final and now - self._last < self._interval:
            return
        self._last = now
        line = printable(
            self.format(pages=pages, done=done, total=total, elapsed=now - self._start, final=final)
        )
        if self._tty:
            self._stream.write(f"\r{line}\x1b[K")
            self._open_line = not final
            if final:
                self._stream.write("\n")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def format(self, *, pages: int, done: int, total: int | None, elapsed: float, final: bool) -> str:
        """Return one progress line: pages, items of total, rate, and an ETA while running."""
        items = f"{done:,} of {total:,} items" if total is not None else f"{done:,} items"
        if total:
            items += f" ({min(done, total) * 100 // total}%)"
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        parts = [f"pages {pages:,}", items, f"{rate:,.0f} items/s"]
        if final:
            parts.append(f"done in {elapsed:.1f} s")
        elif total is not None and rate > 0 and done < total:
            with contextlib.suppress(OverflowError):  # a total beyond float range: no ETA
                parts.append(f"ETA {_duration((total - done) / rate)}")
        return ", ".join(parts)

    def close(self) -> None:
        """End a line left open on the TTY (before an error message is printed)."""
        if self._open_line:
            self._stream.write("\n")
            self._stream.flush()
            self._open_line = False


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


async def _pump(
    it: WorkflowIterator,
    commit: Callable[[list[Workflow], Cursor], None],
    progress: Progress,
    max_items: int | None,
) -> None:
    """Consume *it*, handing each page's items to *commit* (in a thread) with the cursor after them."""
    before = it.cursor.page - 1  # pages done by an earlier run of a resumed export
    async for batch in it.by_page():
        cursor = it.cursor  # after a whole page: the resume point is the next page
        await anyio.to_thread.run_sync(commit, batch, cursor)
        progress.update(pages=before + it.pages, done=cursor.received, total=_target(it, max_items))
    progress.update(
        pages=before + it.pages, done=it.cursor.received, total=_target(it, max_items), final=True
    )


def _target(it: WorkflowIterator, max_items: int | None) -> int | None:
    total = it.count
    if total is not None and max_items is not None:
        total = min(total, max_items)
    return total


# -- checkpoint ---------------------------------------------------------------------------------------


def _utc_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_time(value, "utc")


def _filters(args: argparse.Namespace) -> dict[str, object]:
    return {
        "since": _utc_or_none(args.since),
        "until": _utc_or_none(args.until),
        "page_size": args.page_size,
        "max_items": args.max_items,
        "partition": None if args.partition is None else "/".join(map(str, args.partition)),
    }


def write_checkpoint(path: Path, state: Mapping[str, object]) -> None:
    """
    Replace *path* atomically with *state*: a new temp file in the same directory, fsynced, renamed.

    The temp file gets a fresh name, created exclusively with mode 0600 (`mkstemp`: `O_EXCL`, no
    symlink followed), so a file planted at a predictable name is never written through.
    """
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            f.write(json.dumps(state, indent=2).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        # No fsync of the directory: if a power cut loses the rename, the older checkpoint is still
        # consistent (its offset is behind the synced output, and a resume truncates back to it).
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Checkpoint:
    """A loaded checkpoint: the walk cursor and the output byte offset after the last full page."""

    def __init__(self, *, cursor: Cursor, offset: int) -> None:
        self.cursor = cursor
        self.offset = offset

    @classmethod
    def load(cls, path: Path, args: argparse.Namespace) -> Checkpoint:
        """Read *path* and check that it belongs to an export with the options in *args*."""
        raw = _read_checkpoint(path)
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or state.get("v") != _CHECKPOINT_VERSION:
                raise ValueError(f"not a version {_CHECKPOINT_VERSION} checkpoint")
            cursor_data, offset = state.get("cursor"), state.get("offset")
            if not isinstance(cursor_data, dict) or type(offset) is not int or offset < 0:
                raise ValueError("cursor or offset missing")
            cursor = Cursor.from_dict(cursor_data)
            _utc_or_none(cursor.start_time)  # both must convert to UTC for the requests
            _utc_or_none(cursor.end_time)
        except (ValueError, OverflowError, RecursionError) as exc:
            raise UsageError(f"{path} is not an export checkpoint: {exc}") from None
        wanted = {"format": args.format, **_filters(args)}
        recorded = {"format": state.get("format"), **_as_dict(state.get("filters"))}
        differ = [key for key in wanted if wanted[key] != recorded.get(key)]
        if differ:
            was = " ".join(f"--{key.replace('_', '-')} {recorded.get(key)}" for key in differ)
            raise UsageError(
                f"checkpoint {path} was written by an export with {was}; resume with the same options"
            )
        return cls(cursor=cursor, offset=offset)


def _read_checkpoint(path: Path) -> bytes:
    """Return the bytes of the checkpoint *path*: a regular file of at most 1 MiB, or a UsageError."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)  # a FIFO opens at once, no hang
    except FileNotFoundError:
        raise UsageError(f"no checkpoint at {path}: nothing to resume (run without --resume)") from None
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        raw = os.read(fd, _CHECKPOINT_MAX_BYTES + 1) if regular else b""  # one read: a regular file
    finally:
        os.close(fd)
    if not regular:
        raise UsageError(f"cannot read checkpoint {path}: not a regular file")
    if len(raw) > _CHECKPOINT_MAX_BYTES:
        raise UsageError(f"{path} is too large for an export checkpoint")
    return raw


def _as_dict(value: object) -> dict[str, object]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


class ExportSink:
    """Writes pages to the output, then records the checkpoint; every method blocks (run it in a thread)."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        fmt: str,
        offset: int,
        checkpoint: Path | None,
        meta: Mapping[str, object],
        strict_fsync: bool,
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.offset = offset
        self.checkpoint = checkpoint
        self._meta = dict(meta)
        self._strict_fsync = strict_fsync
        self.saved: Cursor | None = None  # the cursor of the last checkpoint on disk

    def write(self, data: bytes) -> None:
        """Write *data*, flush it, and make it durable when the output is a file."""
        if data:
            self.stream.write(data)
            self.offset += len(data)
        self.stream.flush()
        if self._strict_fsync:
            os.fsync(self.stream.fileno())
        else:
            _fsync_if_possible(self.stream)

    def save(self, cursor: Cursor) -> None:
        """Record that everything up to *cursor* is in the output, up to the current offset."""
        if self.checkpoint is None:
            return
        write_checkpoint(self.checkpoint, {**self._meta, "cursor": cursor.to_dict(), "offset": self.offset})
        self.saved = cursor

    def commit(self, items: list[Workflow], cursor: Cursor) -> None:
        """Write one page of *items*, then the checkpoint at *cursor*."""
        self.write(encode_csv(items) if self.fmt == "csv" else encode_jsonl(items))
        self.save(cursor)


# -- commands -----------------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace,
    *,
    command: Sequence[str],
    stdout: BinaryIO,
    stderr: TextIO,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    Run the parsed command *args* and return the exit status (0 ok, 1 failed, 2 bad usage).

    *command* is the whole command line (program included), echoed with `--resume` when an export
    fails. Credentials come from *environ* (default: `os.environ`) unless `--sandbox` is given.
    """
    client: AirudderClient | None = None
    coordination = None
    if args.sandbox is None:
        try:
            coordination = _coordination(environ)
            limits = Limits(requests_per_second=args.rate) if args.rate else DEFAULT_LIMITS
            client = AirudderClient.from_env(environ, limits=limits, coordination=coordination)
        except UsageError as exc:
            _say(stderr, f"error: {exc}")
            return 2
        except RuntimeError:
            _say(stderr, _MISSING_CREDENTIALS)
            return 2
        except ValueError as exc:
            _say(stderr, f"error: AIRUDDER_BASE_URL: {exc}")
            return 2
    enabled = args.progress if args.progress is not None else stderr.isatty()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if coordination is not None:
                stack.push_async_callback(coordination.aclose)
            if client is None:
                from .testing import FakeAirudder  # imported late: it pulls in aiohttp.web

                sync = args.command == "sync"  # its sandbox is recent and changes by rounds
                fake = await stack.enter_async_context(
                    FakeAirudder(workflows=0 if sync else args.sandbox, latency=args.sandbox_latency)
                )
                if sync:
                    sync_sandbox(fake, args.sandbox, args.sandbox_round)
                client = (
                    fake.client(limits=Limits(requests_per_second=args.rate)) if args.rate else fake.client()
                )
            if args.command == "sync":
                return await _sync(args, client, stack, stderr=stderr, progress_enabled=enabled)
            if args.command == "export":
                return await _export(
                    args,
                    client,
                    stack,
                    command=command,
                    stdout=stdout,
                    stderr=stderr,
                    progress_enabled=enabled,
                )
            return await _workflows(
                args, client, stack, stdout=stdout, stderr=stderr, progress_enabled=enabled
            )
    except UsageError as exc:
        _say(stderr, f"error: {exc}")
        return 2
    except BrokenPipeError:
        _silence_stdout(stdout)
        return 0


def _coordination(environ: Mapping[str, str] | None) -> RedisCoordination | None:
    """The Redis coordination `AIRUDDER_REDIS_URL` asks for (read from the environment only, so the
    URL and its password never appear in the command line or in the resume command printed)."""
    url = (os.environ if environ is None else environ).get("AIRUDDER_REDIS_URL")
    if not url:
        return None
    try:
        from .redis import RedisCoordination
    except ImportError:
        raise UsageError(
            "AIRUDDER_REDIS_URL is set but the redis extra is missing: pip install 'airudder-async[redis]'"
        ) from None
    try:
        return RedisCoordination(url=url)
    except ValueError:
        raise UsageError("AIRUDDER_REDIS_URL must be a redis://, rediss:// or unix:// URL") from None


async def _workflows(
    args: argparse.Namespace,
    client: AirudderClient,
    stack: contextlib.AsyncExitStack,
    *,
    stdout: BinaryIO,
    stderr: TextIO,
    progress_enabled: bool,
) -> int:
    await stack.enter_async_context(client)
    progress = Progress(stderr, enabled=progress_enabled, tty=stderr.isatty())

    def commit(items: list[Workflow], _cursor: Cursor) -> None:
        stdout.write(encode_jsonl(items))
        stdout.flush()

    it = _new_walk(client, args)
    try:
        async with it:
            await _pump(it, commit, progress, args.max_items)
    except AirudderError as exc:
        progress.close()
        _fail(stderr, exc)
        return 1
    finally:
        progress.close()
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """Tell whether *a* and *b* name one file: the same path after symlinks, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _open_locked(path: Path, flags: int, mode: int, busy: str) -> tuple[int, bool]:
    """
    Open the regular file *path* for writing (never truncating) and lock it exclusively without waiting.

    Return the descriptor and whether it is locked (False without fcntl); raise UsageError with *busy*
    when another process holds the lock, and for a FIFO, device or directory.
    """
    fd = os.open(path, os.O_WRONLY | _O_NONBLOCK | _O_BINARY | flags, mode)  # a FIFO cannot hang us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path} is not a regular file: export to stdout (no -o) for a pipe or device")
        if fcntl is None:
            return fd, False
        os.set_blocking(fd, True)  # POSIX only (so after the fcntl check); a no-op on a regular file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the descriptor is closed
        except BlockingIOError:
            raise UsageError(busy) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _new_walk(client: AirudderClient, args: argparse.Namespace) -> WorkflowIterator:
    """The walk the walk options in *args* describe, from its start."""
    return client.iter_workflows(
        start_time=args.since,
        end_time=args.until,
        page_size=args.page_size,
        max_items=args.max_items,
        prefetch=args.prefetch,
        partition=args.partition,
    )


def _open_output(path: Path, resume: Checkpoint | None, stderr: TextIO) -> BinaryIO:
    """Open and lock the export file, created for a new export; it must exist for a resume."""
    busy = f"another export is writing {path}: wait for it to end; a second one would corrupt it"
    try:
        fd, locked = _open_locked(path, os.O_CREAT if resume is None else 0, 0o666, busy)
    except FileNotFoundError:
        if resume is None:
            raise
        raise UsageError(f"cannot resume: the output {path} is gone (the checkpoint expects it)") from None
    if not locked:
        _say(stderr, _UNLOCKED_NOTE)
    return open(fd, "wb")  # an open descriptor: "wb" does not truncate it


def _rewind(stream: BinaryIO, path: Path, resume: Checkpoint | None) -> None:
    """Cut the locked output to nothing for a new export, or back to the checkpoint's offset."""
    offset = 0 if resume is None else resume.offset
    size = os.fstat(stream.fileno()).st_size
    if size < offset:
        raise UsageError(f"cannot resume: {path} has {size} bytes but the checkpoint recorded {offset}")
    stream.truncate(offset)  # drops whatever was written after the last checkpoint
    stream.seek(offset)


def _is_same_inode(fd: int, path: Path) -> bool:
    """Tell whether *path* still names the file open as *fd*."""
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def _checkpoint_lock(checkpoint: Path, stderr: TextIO) -> Iterator[None]:
    """
    Hold `CHECKPOINT.lock` for an export to stdout (the checkpoint itself is replaced on every page).
    """
    path = checkpoint.with_name(checkpoint.name + ".lock")
    busy = f"another export is using the checkpoint {checkpoint}: wait for it to end"
    try:
        fd, locked = _open_locked(path, os.O_CREAT | _O_NOFOLLOW, 0o600, busy)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UsageError(f"{path} is a symbolic link: remove it (a lock file is never followed)") from None
    try:
        if locked and not _is_same_inode(fd, path):  # the export that held it removed it meanwhile
            raise UsageError(busy)
        if not locked:
            _say(stderr, _UNLOCKED_NOTE)
        yield
    finally:
        if _is_same_inode(fd, path):
            path.unlink()
        os.close(fd)


async def _export(
    args: argparse.Namespace,
    client: AirudderClient,
    stack: contextlib.AsyncExitStack,
    *,
    command: Sequence[str],
    stdout: BinaryIO,
    stderr: TextIO,
    progress_enabled: bool,
) -> int:
    output = None if args.output in (None, "-") else Path(args.output)
    if args.checkpoint:
        checkpoint: Path | None = Path(args.checkpoint)
    elif output is not None:
        checkpoint = output.with_name(output.name + ".checkpoint.json")
    else:
        checkpoint = None  # stdout without --checkpoint: nothing to resume from
    if output is not None and checkpoint is not None and _same_file(output, checkpoint):
        raise UsageError(f"the checkpoint {checkpoint} is the output {output}: give another --checkpoint")
    resume: Checkpoint | None = None
    if args.resume:
        if checkpoint is None:
            raise UsageError("--resume with output to stdout needs --checkpoint PATH")
        resume = Checkpoint.load(checkpoint, args)
    resume_hint = shlex.join([*command] if "--resume" in command else [*command, "--resume"])

    remaining = args.max_items  # a resumed export counts --max-items from the very start
    if resume is not None and remaining is not None:
        remaining = max(0, remaining - resume.cursor.received)
    await stack.enter_async_context(client)
    if resume is None:
        it = _new_walk(client, args)
    else:
        it = client.iter_workflows(cursor=resume.cursor, prefetch=args.prefetch, max_items=remaining or None)
    stack.push_async_callback(it.aclose)

    # Lock before looking at or cutting anything, so a second export of the same file changes nothing.
    try:
        if output is not None:
            stream = stack.enter_context(_open_output(output, resume, stderr))
        else:
            stream = stdout
            if checkpoint is not None:
                stack.enter_context(_checkpoint_lock(checkpoint, stderr))
    except OSError as exc:
        _say(stderr, f"error: cannot open {exc.filename}: {exc.strerror}")
        return 1
    if resume is None and checkpoint is not None and checkpoint.exists():
        raise UsageError(
            f"{checkpoint} is left from an unfinished export: add --resume to continue it, "
            "or delete it to start over"
        )
    if output is not None:
        _rewind(stream, output, resume)
    meta = {
        "v": _CHECKPOINT_VERSION,
        "format": args.format,
        "filters": _filters(args),
        "output": None if output is None else str(output.resolve()),
    }
    sink = ExportSink(
        stream,
        fmt=args.format,
        offset=0 if resume is None else resume.offset,
        checkpoint=checkpoint,
        meta=meta,
        strict_fsync=output is not None,
    )
    start = it.cursor
    progress = Progress(stderr, enabled=progress_enabled, tty=stderr.isatty(), start_done=start.received)
    if resume is not None and output is None:
        _say(
            stderr,
            f"note: resuming to stdout: append this to the earlier output cut to {resume.offset} bytes "
            f"(e.g. truncate -s {resume.offset} FILE)",
        )
    try:
        if resume is None:
            header = encode_csv([], header=True) if args.format == "csv" else b""
            # The first checkpoint pins the walk's window before any request, so even a run that
            # dies on its first page resumes the same snapshot.
            await anyio.to_thread.run_sync(sink.write, header)
            await anyio.to_thread.run_sync(sink.save, start)
        else:
            sink.saved = start
        if remaining is None or remaining > 0:
            await _pump(it, sink.commit, progress, args.max_items)
        else:
            progress.update(pages=0, done=start.received, total=args.max_items, final=True)
    except BrokenPipeError:
        raise
    except AirudderError as exc:
        progress.close()
        _fail(stderr, exc)
        _hint(stderr, sink, resume_hint, "the export stopped")
        return 1
    except OSError as exc:
        progress.close()
        _say(stderr, f"error: cannot write the export: {exc}")
        _hint(stderr, sink, resume_hint, "the export stopped")
        return 1
    except BaseException as exc:  # Ctrl-C arrives as a cancellation; the checkpoint still holds
        progress.close()
        cancelled = isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class()))
        _hint(stderr, sink, resume_hint, "interrupted" if cancelled else "the export stopped")
        raise
    finally:
        progress.close()
    if checkpoint is not None:
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()
    return 0


def _hint(stderr: TextIO, sink: ExportSink, resume_hint: str, what: str) -> None:
    if sink.saved is not None:
        _say(
            stderr,
            f"{what} after {sink.saved.received:,} workflows (all saved in the output); resume with:",
            f"  {resume_hint}",
        )
    stderr.flush()


# -- sync ---------------------------------------------------------------------------------------------


def sync_sandbox(fake: FakeAirudder, n: int, rounds: int) -> None:
    """
    Fill *fake* with *n* workflows whose newest is an hour before today's midnight (UTC), then apply
    *rounds* rounds of `mutate_random()`: the same day and arguments give the same data.
    """
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    fake.add_history(n, newest=today - timedelta(hours=1))
    for r in range(1, rounds + 1):
        open_ = sum(1 for wf in fake.workflows if wf["status"] not in FINAL_STATUSES)
        fake.mutate_random(status_changes=min(max(1, n // 200), open_), new=max(1, n // 300), seed=r)


def _is_missing(path: str) -> bool:
    # One stat before anything runs: not worth a worker thread.
    return not os.path.lexists(path)


class SyncProgress(Progress):
    """Progress of a sync: the walk's pages and items, plus the counts inserted and changed so far."""

    inserted = 0
    changed = 0

    def format(self, *, pages: int, done: int, total: int | None, elapsed: float, final: bool) -> str:
        """Return one progress line: pages, items, rate, inserted and changed."""
        line = super().format(pages=pages, done=done, total=total, elapsed=elapsed, final=final)
        return f"{line}, {self.inserted:,} inserted, {self.changed:,} changed"


async def _sync(
    args: argparse.Namespace,
    client: AirudderClient,
    stack: contextlib.AsyncExitStack,
    *,
    stderr: TextIO,
    progress_enabled: bool,
) -> int:
    from .errors import DatabaseLockedError, SchemaVersionError, SyncError
    from .sync import DEFAULT_LOOKBACK, SyncSummary, is_postgres_url, open_sink, redact_url, sync_workflows

    shown = redact_url(args.db) if is_postgres_url(args.db) else args.db
    if args.dry_run and not is_postgres_url(args.db) and _is_missing(args.db):
        raise UsageError(
            f"{shown} does not exist: a dry run writes nothing (a first sync inserts everything)"
        )
    progress = SyncProgress(stderr, enabled=progress_enabled, tty=stderr.isatty())

    def report(summary: SyncSummary) -> None:
        progress.inserted, progress.changed = summary.inserted, summary.changed
        progress.update(pages=summary.pages, done=summary.read, total=None)

    try:
        sink = await stack.enter_async_context(open_sink(args.db))
        await stack.enter_async_context(client)
        summary = await sync_workflows(
            client,
            sink,
            since=args.since,
            until=args.until,
            lookback=DEFAULT_LOOKBACK if args.lookback is None else args.lookback,
            full=args.full,
            dry_run=args.dry_run,
            page_size=args.page_size,
            prefetch=args.prefetch,
            on_progress=report,
        )
    except (DatabaseLockedError, SchemaVersionError) as exc:
        progress.close()
        _fail(stderr, exc)
        return 2
    except AirudderError as exc:
        progress.close()
        _fail(stderr, exc)
        if not isinstance(exc, SyncError) and not args.dry_run:
            _say(stderr, "run the same command again: it continues after the last page saved")
        return 1
    finally:
        progress.close()
    report(summary)
    progress.update(pages=summary.pages, done=summary.read, total=None, final=True)
    _say(stderr, f"sync {shown}: {summary.line()}")
    return 0

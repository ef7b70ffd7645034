"""
The `airudder-async` command line: `workflows` streams JSON lines, `export` writes a resumable file.

`__main__.py` holds the argparse parser; everything that runs lives here so tests can call `run()` in
their own event loop. An export is made restartable by a checkpoint written after every page: the page
is written, flushed and fsynced to the output first, then the checkpoint (walk cursor + output byte
offset) replaces the old one atomically. A resumed export truncates the output to that offset, so a
page half-written when the process died is dropped and fetched again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

import anyio
import anyio.to_thread

from . import _json
from ._client import AirudderClient
from ._pagination import WorkflowIterator
from .errors import AirudderError
from .models import Cursor, Workflow, _iso

__all__ = [
    "CSV_FIELDS",
    "PROG",
    "aware_time",
    "int_between",
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


# -- output -------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_jsonl(items: Sequence[Workflow]) -> bytes:
    """Return *items* as JSON lines, one `Workflow.to_dict()` each."""
    dumps = _json.dumps
    return b"".join([dumps(wf.to_dict()) + b"\n" for wf in items])


def encode_csv(items: Sequence[Workflow], *, header: bool = False) -> bytes:
    """Return *items* as CSV rows (wire field order, UTC times with Z, empty cells for null)."""
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
                _utc(wf.start_time),
                _utc(wf.end_time),
                wf.total,
                wf.status,
                _utc(wf.create_time),
            )
            for wf in items
        ]
    )
    return buf.getvalue().encode()


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
        line = self.format(pages=pages, done=done, total=total, elapsed=now - self._start, final=final)
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


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else _iso(value.astimezone(UTC))


def _filters(args: argparse.Namespace) -> dict[str, object]:
    return {
        "since": _iso_or_none(args.since),
        "until": _iso_or_none(args.until),
        "page_size": args.page_size,
        "max_items": args.max_items,
    }


def write_checkpoint(path: Path, state: Mapping[str, object]) -> None:
    """Replace *path* atomically with *state*: a temp file in the same directory, fsynced, renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(state, indent=2).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    # No fsync of the directory: if a power cut loses the rename, the older checkpoint is still
    # consistent (its offset is behind the synced output, and a resume truncates back to it).
    os.replace(tmp, path)


class Checkpoint:
    """A loaded checkpoint: the walk cursor and the output byte offset after the last full page."""

    def __init__(self, *, cursor: Cursor, offset: int) -> None:
        self.cursor = cursor
        self.offset = offset

    @classmethod
    def load(cls, path: Path, args: argparse.Namespace) -> Checkpoint:
        """Read *path* and check that it belongs to an export with the options in *args*."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no checkpoint at {path}: nothing to resume (run without --resume)") from None
        except OSError as exc:
            raise UsageError(f"cannot read checkpoint {path}: {exc.strerror}") from None
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or state.get("v") != _CHECKPOINT_VERSION:
                raise ValueError(f"not a version {_CHECKPOINT_VERSION} checkpoint")
            cursor_data, offset = state.get("cursor"), state.get("offset")
            if not isinstance(cursor_data, dict) or type(offset) is not int or offset < 0:
                raise ValueError("cursor or offset missing")
            cursor = Cursor.from_dict(cursor_data)
        except ValueError as exc:
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
    if args.sandbox is None:
        try:
            client = AirudderClient.from_env(environ)
        except RuntimeError:
            stderr.write(_MISSING_CREDENTIALS + "\n")
            return 2
        except ValueError as exc:
            stderr.write(f"error: AIRUDDER_BASE_URL: {exc}\n")
            return 2
    enabled = args.progress if args.progress is not None else stderr.isatty()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                from .testing import FakeAirudder  # imported late: it pulls in aiohttp.web

                fake = await stack.enter_async_context(
                    FakeAirudder(workflows=args.sandbox, latency=args.sandbox_latency)
                )
                client = fake.client()
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
        stderr.write(f"error: {exc}\n")
        return 2
    except BrokenPipeError:
        _silence_stdout(stdout)
        return 0


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

    it = client.iter_workflows(
        start_time=args.since,
        end_time=args.until,
        page_size=args.page_size,
        max_items=args.max_items,
        prefetch=args.prefetch,
    )
    try:
        async with it:
            await _pump(it, commit, progress, args.max_items)
    except AirudderError as exc:
        progress.close()
        stderr.write(f"error: {exc}\n")
        return 1
    finally:
        progress.close()
    return 0


def _open_output(path: Path, resume: Checkpoint | None) -> BinaryIO:
    """Open the export file: new (truncated), or cut back to the checkpoint's offset for a resume."""
    if resume is None:
        return open(path, "wb")
    try:
        stream = open(path, "r+b")  # noqa: SIM115 - the caller closes it (through its exit stack)
    except FileNotFoundError:
        raise UsageError(f"cannot resume: the output {path} is gone (the checkpoint expects it)") from None
    size = os.fstat(stream.fileno()).st_size
    if size < resume.offset:
        stream.close()
        raise UsageError(
            f"cannot resume: {path} has {size} bytes but the checkpoint recorded {resume.offset}"
        )
    stream.truncate(resume.offset)  # drops whatever was written after the last checkpoint
    stream.seek(resume.offset)
    return stream


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
    resume: Checkpoint | None = None
    if args.resume:
        if checkpoint is None:
            raise UsageError("--resume with output to stdout needs --checkpoint PATH")
        resume = Checkpoint.load(checkpoint, args)
    elif checkpoint is not None and checkpoint.exists():
        raise UsageError(
            f"{checkpoint} is left from an unfinished export: add --resume to continue it, "
            "or delete it to start over"
        )
    resume_hint = shlex.join([*command] if "--resume" in command else [*command, "--resume"])

    remaining = args.max_items  # a resumed export counts --max-items from the very start
    if resume is not None and remaining is not None:
        remaining = max(0, remaining - resume.cursor.received)
    await stack.enter_async_context(client)
    if resume is None:
        it = client.iter_workflows(
            start_time=args.since,
            end_time=args.until,
            page_size=args.page_size,
            max_items=args.max_items,
            prefetch=args.prefetch,
        )
    else:
        it = client.iter_workflows(cursor=resume.cursor, prefetch=args.prefetch, max_items=remaining or None)
    stack.push_async_callback(it.aclose)

    try:
        stream = stdout if output is None else stack.enter_context(_open_output(output, resume))
    except OSError as exc:
        stderr.write(f"error: cannot open {output}: {exc.strerror}\n")
        return 1
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
        stderr.write(
            f"note: resuming to stdout: append this to the earlier output cut to {resume.offset} bytes "
            f"(e.g. truncate -s {resume.offset} FILE)\n"
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
        stderr.write(f"error: {exc}\n")
        _hint(stderr, sink, resume_hint, "the export stopped")
        return 1
    except OSError as exc:
        progress.close()
        stderr.write(f"error: cannot write the export: {exc}\n")
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
        stderr.write(
            f"{what} after {sink.saved.received:,} workflows (all saved in the output); resume with:\n"
            f"  {resume_hint}\n"
        )
    stderr.flush()

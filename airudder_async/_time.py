"""
The one time parser and the one time formatter: every datetime that crosses the wire or a file goes here.

Kept apart from `_convert.py` (which imports the models) so that `models.py` can format its own times
without an import cycle; it imports nothing but the standard library.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

__all__ = ["TimeStyle", "format_time", "parse_time"]

TimeStyle = Literal["iso", "utc", "wire"]


def parse_time(value: object, *, assume_utc: bool = True) -> datetime:
    """
    Parse an ISO 8601 time (`Z` or an offset, `T` or a space) into an aware datetime.

    A time without an offset is UTC when *assume_utc*, else a `ValueError`. Anything but a string is a
    `TypeError`.
    """
    if type(value) is not str:
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        if not assume_utc:
            raise ValueError("the time has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def format_time(value: datetime, style: TimeStyle = "iso") -> str:
    """
    Format an aware *value*; raise `ValueError` for a naive one or one that has no UTC equivalent.

    *style* `"iso"` is ISO 8601 as given, with `Z` for UTC (models, cursors); `"utc"` converts to UTC
    and drops fractions (`2026-01-01T00:00:00Z`, CSV cells); `"wire"` is the documented request form
    `YYYY-MM-DD HH:MM:SS+HH:MM` (an offset with seconds, which that form cannot carry, becomes UTC).
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"{value!r} is naive: pass a timezone-aware datetime")
    if style == "iso":
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if style == "utc" or offset % timedelta(minutes=1):
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is outside the range of UTC times") from None
    value = value.replace(microsecond=0)
    if style == "utc":
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat(sep=" ")

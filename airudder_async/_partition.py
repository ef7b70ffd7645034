"""
Splitting a creation-time window into disjoint windows, one per worker (pure).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["partition_window"]

_SECOND = timedelta(seconds=1)


def partition_window(
    start_time: datetime, end_time: datetime, *, index: int, count: int
) -> tuple[datetime, datetime]:
    """
    Return window *index* (0 .. *count* - 1) of *count* disjoint windows covering *start_time*..*end_time*.

    The API's bounds are whole seconds and inclusive, so window *i* is `[t_i, t_{i+1} - 1 s]` with
    `t_i = start + ⌊i · N / count⌋ s` over the window's *N* seconds: together the windows hold every
    workflow of the whole window exactly once. Both times must be aware; fractions of a second are
    dropped, as the API drops them. The windows come back in UTC.

    Raises:
        ValueError: *index* is out of range, or the window has fewer seconds than *count*.
    """
    for name, number in (("index", index), ("count", count)):
        if type(number) is not int:
            raise TypeError(f"{name} must be an int, got {type(number).__name__}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition must be (index, count) with 0 <= index < count, got ({index}, {count})")
    for name, when in (("start_time", start_time), ("end_time", end_time)):
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise ValueError(f"a partitioned walk needs an aware {name}")
    try:
        start = start_time.astimezone(UTC).replace(microsecond=0)
        end = end_time.astimezone(UTC).replace(microsecond=0)
    except OverflowError:
        raise ValueError("the window is outside the range of UTC times") from None
    seconds = int((end - start) / _SECOND) + 1
    if seconds < count:
        raise ValueError(f"a window of {max(seconds, 0)} seconds cannot be split into {count} partitions")
    first = start + _SECOND * (index * seconds // count)
    after = start + _SECOND * ((index + 1) * seconds // count)
    return first, after - _SECOND

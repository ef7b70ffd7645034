"""
JSON decoding and encoding: orjson when it is installed (the `orjson` extra), the stdlib otherwise.

Decoding is bounded the same way on both: at most `MAX_DEPTH` levels of nesting (orjson's own fixed
limit, enforced for the stdlib by a scan before parsing, so Python versions whose parser recurses
deeper or shallower behave alike), and every failure is a `JSONDecodeError` with a short message and
no chained exception (a third-party decode error keeps the whole document in its `doc`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["HAS_ORJSON", "MAX_DEPTH", "JSONDecodeError", "depth_exceeds", "dumps", "loads"]

MAX_DEPTH = 1024  # levels of arrays/objects; orjson refuses deeper documents itself

# Every byte but the four brackets and the quote: deleted by bytes.translate in the depth scan.
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')


class JSONDecodeError(ValueError):
    """The bytes are not a JSON document within the bounds above."""


def depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """
    Tell whether *data* nests deeper than *limit* (or is so unbalanced that it cannot be JSON).

    Every step is a C-speed bytes operation: drop escapes, keep only brackets and quotes, drop the
    strings, then peel one level of innermost `[]`/`{}` pairs per round, at most *limit* rounds.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:  # strings holding brackets: keep what lies outside the quotes
        skeleton = b"".join(skeleton.split(b'"')[::2])
    for _ in range(limit):
        if not skeleton:
            return False
        peeled = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if peeled == skeleton:
            return True  # unbalanced: not JSON at all
        skeleton = peeled
    return bool(skeleton)


def _stdlib_loads(data: bytes) -> Any:
    failure = ""
    if depth_exceeds(data):
        failure = f"nested deeper than {MAX_DEPTH} levels, or unbalanced"
    else:
        try:
            return json.loads(data)
        except RecursionError:  # a recursion limit below MAX_DEPTH (deep call stacks, 3.11)
            failure = "nested too deeply for this interpreter"
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many int digits
            failure = (exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc))[:200]
    raise JSONDecodeError(failure)


def _stdlib_dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


loads: Callable[[bytes], Any]
dumps: Callable[[object], bytes]

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by the stdlib test run in tests/test_json.py
    HAS_ORJSON = False
    loads = _stdlib_loads
    dumps = _stdlib_dumps

else:
    HAS_ORJSON = True
    _orjson_loads = orjson.loads
    _OrjsonError = orjson.JSONDecodeError

    def loads(data: bytes) -> Any:
        try:
            return _orjson_loads(data)
        except _OrjsonError:
            pass
        # orjson refuses what the stdlib accepts (a lone surrogate escape such as "\ud800"): the
        # stdlib decides, so both installs accept the same documents.
        return _stdlib_loads(data)

    dumps = orjson.dumps

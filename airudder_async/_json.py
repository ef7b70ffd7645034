"""
JSON decoding and encoding: orjson when it is installed (the `orjson` extra), the stdlib otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["HAS_ORJSON", "JSONDecodeError", "dumps", "loads"]

loads: Callable[[bytes | str], Any]
dumps: Callable[[object], bytes]

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by the stdlib test run in tests/test_json.py
    HAS_ORJSON = False
    JSONDecodeError: tuple[type[Exception], ...] = (ValueError,)
    loads = json.loads

    def dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

else:
    HAS_ORJSON = True
    JSONDecodeError = (orjson.JSONDecodeError, ValueError)
    loads = orjson.loads
    dumps = orjson.dumps

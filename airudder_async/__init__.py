"""
airudder_async: an asyncio client for the AIRUDDER call-automation API.

```python
async with AirudderClient.from_env() as client:
    async for wf in client.iter_workflows(start_time=since):
        print(wf.workflow_id, wf.status)
```
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    NO_RETRY,
    Limits,
    RetryPolicy,
    Timeouts,
)
from ._partition import partition_window
from ._protocol import Response

if TYPE_CHECKING:
    from ._client import AirudderClient, ClientOptions, RequestOptions
    from ._pagination import PageBatches, WorkflowIterator

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "NO_RETRY",
    "AirudderClient",
    "ClientOptions",
    "Limits",
    "PageBatches",
    "RequestOptions",
    "Response",
    "RetryPolicy",
    "Timeouts",
    "WorkflowIterator",
    "__version__",
    "partition_window",
]

# The names that need aiohttp or anyio load on first use, so that the pure modules (`_protocol`,
# `_time`, `_json`, `errors`, `models`) import without them: `import airudder_async._protocol` runs
# this file first.
_LAZY = {
    "AirudderClient": "._client",
    "ClientOptions": "._client",
    "RequestOptions": "._client",
    "PageBatches": "._pagination",
    "WorkflowIterator": "._pagination",
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import version

        return version("airudder-async")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

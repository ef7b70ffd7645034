"""
airudder_async: an asyncio client for the AIRUDDER call-automation API.

```python
async with AirudderClient.from_env() as client:
    async for wf in client.iter_workflows(start_time=since):
        print(wf.workflow_id, wf.status)
```
"""

from __future__ import annotations

from ._client import AirudderClient
from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    NO_RETRY,
    Limits,
    RetryPolicy,
    Timeouts,
)
from ._pagination import PageBatches, WorkflowIterator
from ._session import Response

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "NO_RETRY",
    "AirudderClient",
    "Limits",
    "PageBatches",
    "Response",
    "RetryPolicy",
    "Timeouts",
    "WorkflowIterator",
    "__version__",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("airudder-async")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""
The public models a walk does not need, public as `airudder_async.models.X`: the answers of
`create_workflow()`, `find_workflows()` and `get_task_detail()` (`CreatedWorkflow`, `WorkflowMatches`,
`TaskDetail`), the `client.stats` snapshot (`ClientStats`) and the event hook's `RequestEvent`.

They live apart so that importing the client does not define them: `models` loads this module on first
use of one of these names.
"""

# No `from __future__ import annotations`: the annotations are evaluated here, so get_type_hints()
# resolves them although the classes name `airudder_async.models` as their module.
from collections.abc import Mapping
from typing import Literal

import attrs

__all__ = ["ClientStats", "CreatedWorkflow", "RequestEvent", "TaskDetail", "WorkflowMatches"]


@attrs.frozen(kw_only=True)
class ClientStats:
    """
    A snapshot of a client's counters since it was created; times are in seconds.

    *retries* maps a reason (`"429"`, `"503"`, `"transport"`, `"timeout"`, ...) to its retry count.
    *pacing_rate* is the request rate adaptive pacing allows now (requests per second; None while
    no limit has been met, or with `Limits(adaptive=False)`) and *pacing_cuts* how often a 429 or
    rising latency made it slow down.
    """

    requests: int = 0
    responses: int = 0
    errors: int = 0
    retries: Mapping[str, int] = attrs.field(factory=dict)
    rate_limited: int = 0
    auth_requests: int = 0
    token_refreshes: int = 0
    budget_wait: float = 0.0
    cooldown_wait: float = 0.0
    pacing_rate: float | None = None
    pacing_cuts: int = 0

    @property
    def total_retries(self) -> int:
        """
        Return the number of retries for every reason together.
        """
        return sum(self.retries.values())


@attrs.frozen(kw_only=True)
class RequestEvent:
    """
    What the client tells an `event_hook`: one attempt sent, answered, or about to be retried.

    *status* is the HTTP status (`None` before an answer or on a transport failure), *elapsed* the
    attempt's duration and *delay* the wait before a retry, in seconds; *reason* says why a retry happens.
    *pacing_rate* is the rate adaptive pacing allowed at that moment (see `ClientStats.pacing_rate`).
    """

    kind: Literal["request", "response", "retry"]
    method: str
    path: str
    attempt: int
    status: int | None = None
    elapsed: float | None = None
    delay: float | None = None
    reason: str | None = None
    pacing_rate: float | None = None


@attrs.frozen(kw_only=True)
class CreatedWorkflow:
    """
    The answer to `create_workflow()`: *workflow_id* when the answer names one, and the whole *data*.

    The vendor does not document this answer; `workflow_id` is read from `data.workflow_id` (a guess),
    and *data* keeps everything it held.
    """

    workflow_id: str | None
    data: object


@attrs.frozen(kw_only=True)
class WorkflowMatches:
    """
    The answer to `find_workflows()` (detailinstances): the workflow ids found, and the whole *data*.

    The answer's shape is undocumented: ids are collected from objects with a `workflow_id` in `data`,
    `data.lists` or `data.list` (a guess); *data* keeps everything.
    """

    workflow_ids: tuple[str, ...]
    data: object


@attrs.frozen(kw_only=True)
class TaskDetail:
    """
    The answer to `get_task_detail()` (taskdetail): the documented names, per-call *records*, and *data*.

    Any field may be missing (`None`) because the vendor documents names but not the shape; *data* keeps
    the whole answer.
    """

    workflow_id: str | None
    workflow_name: str | None
    nodetask_id: str | None
    nodetask_name: str | None
    case_id: str | None
    records: tuple[Mapping[str, object], ...]
    data: object


# Their public home: pickles and reprs name `airudder_async.models` (which loads them on access), so a
# pickle does not depend on this private module, and reads the same as before the move.
for _cls in (ClientStats, CreatedWorkflow, RequestEvent, TaskDetail, WorkflowMatches):
    _cls.__module__ = "airudder_async.models"
del _cls

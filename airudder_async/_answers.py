"""
The answers of `create_workflow()`, `find_workflows()` and `get_task_detail()`, public as
`airudder_async.models.CreatedWorkflow`, `WorkflowMatches` and `TaskDetail`.

They live apart so that importing the client does not define them: `models` loads this module on first
use of one of the three names.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["CreatedWorkflow", "TaskDetail", "WorkflowMatches"]


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
for _cls in (CreatedWorkflow, TaskDetail, WorkflowMatches):
    _cls.__module__ = "airudder_async.models"
del _cls

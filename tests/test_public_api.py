"""
The public surface: every `__all__`, the version, docstrings, and that names resolve.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import typing

import pytest

import airudder_async
from tests.support import run_fresh

PUBLIC = {
    "airudder_async": [
        "AirudderClient",
        "ClientOptions",
        "DEFAULT_LIMITS",
        "DEFAULT_RETRY",
        "DEFAULT_TIMEOUTS",
        "Limits",
        "NO_RETRY",
        "PageBatches",
        "RequestOptions",
        "Response",
        "RetryPolicy",
        "Timeouts",
        "WorkflowIterator",
        "__version__",
        "partition_window",
    ],
    "airudder_async.coordination": [
        "Coordination",
        "DedupeStore",
        "MemoryCoordination",
        "MemoryDedupeStore",
        "MemoryRateBudget",
        "MemoryTokenStore",
        "OnUnavailable",
        "RateBudget",
        "SharedToken",
        "TokenStore",
        "account_id",
    ],
    "airudder_async.redis": [
        "DEFAULT_LOCK_TIMEOUT",
        "DEFAULT_PREFIX",
        "DEFAULT_RECHECK",
        "DEFAULT_REDIS_TIMEOUT",
        "MAX_SHARED_TOKEN",
        "MAX_SHARED_WAIT",
        "RedisCoordination",
        "RedisDedupeStore",
        "RedisRateBudget",
        "RedisTokenStore",
    ],
    "airudder_async.errors": [
        "APIError",
        "AirudderError",
        "AuthenticationError",
        "CoordinationError",
        "DatabaseLockedError",
        "DecodeError",
        "InvalidRequestError",
        "NotFoundError",
        "RateLimitedError",
        "RequestTimeoutError",
        "ResponseTooLargeError",
        "SchemaVersionError",
        "ServerError",
        "SyncError",
        "TransportError",
    ],
    "airudder_async.models": [
        "ClientStats",
        "CreatedWorkflow",
        "Cursor",
        "Page",
        "RequestEvent",
        "TaskDetail",
        "Workflow",
        "WorkflowMatches",
        "WorkflowStatus",
    ],
    "airudder_async.sync": [
        "DEFAULT_LOOKBACK",
        "FINAL_STATUSES",
        "SCHEMA_VERSION",
        "PageCounts",
        "PageWrite",
        "RunState",
        "Sink",
        "SyncState",
        "SyncSummary",
        "open_sink",
        "plan_window",
        "redact_url",
        "sync_workflows",
    ],
    "airudder_async.testing": [
        "APINOTICEINFO_PATH",
        "AUTH_PATH",
        "CREATEINSTANCE_PATH",
        "DETAILINSTANCES_PATH",
        "FAKE_RETRY",
        "FakeAirudder",
        "Fault",
        "Gate",
        "INSTANCELIST_PATH",
        "RateLimit",
        "RateLimitStats",
        "RecordedRequest",
        "TASKDETAIL_PATH",
        "make_workflows",
    ],
    "airudder_async.webhooks": [
        "DEFAULT_WEBHOOK_LIMITS",
        "ChatbotSessionEndEvent",
        "CustomApiCallee",
        "CustomApiPushEvent",
        "GenericEvent",
        "ListCompletionEvent",
        "ListCompletionRow",
        "SIGNATURE_HEADER",
        "StatusChangeAction",
        "StatusChangeEvent",
        "WebhookEvent",
        "WebhookHandler",
        "WebhookKind",
        "WebhookLimits",
        "parse_webhook",
        "webhook_app",
        "webhook_handler",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_snapshot(module: str) -> None:
    """Each public module exports exactly the names in the snapshot, and each resolves."""
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_objects_are_documented(module: str) -> None:
    """Every public class and function, and every public method on them, has a docstring."""
    mod = importlib.import_module(module)
    assert mod.__doc__
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), f"{module}.{name} has no docstring"
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                assert inspect.getdoc(member), f"{module}.{name}.{attr} has no docstring"


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version, and unknown attributes still fail."""
    assert airudder_async.__version__ == importlib.metadata.version("airudder-async")
    with pytest.raises(AttributeError):
        _ = airudder_async.no_such_name  # type: ignore[attr-defined]  # checking the module __getattr__


def test_cli_and_webhooks_are_not_imported_by_the_package() -> None:
    """Importing the package imports neither the CLI nor the webhook receiver."""
    code = (
        "import sys, airudder_async; "
        "assert not {'airudder_async.__main__', 'airudder_async._cli', 'airudder_async.webhooks'} "
        "& set(sys.modules), sorted(m for m in sys.modules if m.startswith('airudder'))"
    )
    run_fresh(code)


def test_the_client_imports_cattrs_json_preset_only_for_an_item_it_refuses() -> None:
    """
    Importing the client (and decoding clean pages) leaves cattrs' JSON preset unloaded: only the
    detailed error of a refused item needs the converter (about 3 ms of import time otherwise).
    """
    code = (
        "import sys\n"
        "from airudder_async import AirudderClient\n"
        "from airudder_async._convert import parse_page\n"
        "from airudder_async.testing import make_workflows\n"
        "parse_page({'count': 2, 'lists': make_workflows(2)})\n"
        "assert 'cattrs.preconf.json' not in sys.modules\n"
        "try:\n"
        "    parse_page({'count': 1, 'lists': [{'workflow_id': 1}]})\n"
        "except Exception as exc:\n"
        "    assert type(exc).__name__ == 'DecodeError' and 'workflow_id' in str(exc), exc\n"
        "assert 'cattrs.preconf.json' in sys.modules\n"
    )
    run_fresh(code)


def test_lazy_names_are_listed_and_cached() -> None:
    """`dir()` lists the lazily imported names, and the first access caches them on the module."""
    assert {"AirudderClient", "WorkflowIterator", "RequestOptions"} <= set(dir(airudder_async))
    first = airudder_async.AirudderClient
    assert vars(airudder_async)["AirudderClient"] is first
    with pytest.raises(AttributeError):
        airudder_async.NoSuchName  # noqa: B018 - the access is the test


def test_importing_the_client_defers_what_only_some_calls_need() -> None:
    """
    `from airudder_async import AirudderClient` defines neither the models a walk does not need
    (the answers of three rarely used calls, `ClientStats`, `RequestEvent`) nor the Workflow fast hook,
    and loads no anyio.lowlevel: each costs import time (benchmarks/run.py).
    A client loads what it uses, and the models load on first access.
    """
    code = (
        "import sys, asyncio\n"
        "from airudder_async import AirudderClient\n"
        "from airudder_async import _convert\n"
        "assert 'airudder_async._lazy_models' not in sys.modules\n"
        "assert 'anyio.lowlevel' not in sys.modules\n"
        "assert _convert._fast == {}\n"
        "import attrs\n"
        "from airudder_async.models import Workflow\n"
        "assert attrs.fields(Workflow).workflow_id.type is str  # resolved at import, as before\n"
        "async def main():\n"
        "    async with AirudderClient(app_key='k', app_secret='s'):\n"
        "        assert 'anyio.lowlevel' in sys.modules\n"
        "asyncio.run(main())\n"
        "from airudder_async.models import TaskDetail\n"
        "assert 'airudder_async._lazy_models' in sys.modules\n"
    )
    run_fresh(code)


def test_lazy_models_are_listed_and_cached() -> None:
    """`dir(models)` lists the lazily defined models; the first access caches them; others still fail."""
    from airudder_async import models

    lazy = {"ClientStats", "CreatedWorkflow", "RequestEvent", "TaskDetail", "WorkflowMatches"}
    assert lazy <= set(dir(models))
    first = models.TaskDetail
    assert vars(models)["TaskDetail"] is first
    with pytest.raises(AttributeError, match="NoSuchModel"):
        models.NoSuchModel  # type: ignore[attr-defined]  # noqa: B018 - the access is the test


def test_lazy_models_pickle_under_their_public_module() -> None:
    """A lazily defined model pickles as `airudder_async.models.X`, so a pickle outlives the layout."""
    import pickle
    import typing

    from airudder_async import models

    detail = models.TaskDetail(
        workflow_id="w",
        workflow_name=None,
        nodetask_id=None,
        nodetask_name=None,
        case_id=None,
        records=({"a": 1},),
        data={"workflow_id": "w"},
    )
    blob = pickle.dumps(detail)
    assert b"airudder_async.models" in blob
    assert b"_lazy_models" not in blob
    assert pickle.loads(blob) == detail
    assert pickle.loads(pickle.dumps(models.ClientStats(requests=3))) == models.ClientStats(requests=3)
    lazy = (models.ClientStats, models.CreatedWorkflow, models.RequestEvent, models.TaskDetail)
    for cls in (*lazy, models.WorkflowMatches):
        assert cls.__module__ == "airudder_async.models"
        assert typing.get_type_hints(cls)  # the names in its annotations resolve in that module


def test_redis_is_imported_only_by_its_module() -> None:
    """A client, even with a MemoryCoordination, never imports redis; airudder_async.redis does."""
    code = (
        "import sys, airudder_async; from airudder_async.coordination import MemoryCoordination; "
        "airudder_async.AirudderClient(app_key='k', app_secret='s', coordination=MemoryCoordination()); "
        "assert 'redis' not in sys.modules; import airudder_async.redis; assert 'redis' in sys.modules"
    )
    run_fresh(code)


def _public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for module in sorted(PUBLIC):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                found.append((f"{module}.{name}", obj))
            if not inspect.isclass(obj):
                continue
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(member, property):
                    member = member.fget
                elif isinstance(member, classmethod | staticmethod):
                    member = member.__func__
                if inspect.isfunction(member):
                    found.append((f"{module}.{name}.{attr}", member))
    return found


def test_public_signatures_resolve_at_runtime() -> None:
    """
    `typing.get_type_hints()` resolves every public function's and method's annotations (what
    typeguard, beartype or sphinx-autodoc-typehints read), lazily defined models included.

    One known exception: `AirudderClient.__init__` names `Coordination`, which `_client` imports for
    type checkers only (importing `airudder_async.coordination` costs about 2 ms), so it resolves
    given that module's names, as `localns`.
    """
    from airudder_async import coordination

    found = _public_callables()
    assert len(found) > 50
    failed = []
    for name, member in found:
        localns = vars(coordination) if name == "airudder_async.AirudderClient.__init__" else None
        try:
            typing.get_type_hints(member, localns=localns)
        except Exception as exc:
            failed.append(f"{name}: {exc!r}")
    assert not failed

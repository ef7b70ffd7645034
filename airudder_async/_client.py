"""
AirudderClient: the lifecycle (async with / aclose) and one method per endpoint.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import platform
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypedDict, Unpack
from urllib.parse import urlsplit

import aiohttp

from . import models
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_LIMITS,
    DEFAULT_PAGE_SIZE,
    DEFAULT_PREFETCH,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    MAX_PAGE_SIZE,
    MAX_PREFETCH,
    Limits,
    RetryPolicy,
    Timeouts,
)
from ._convert import ids_in, parse_page, peek_page, rows, str_or_none
from ._pagination import TaskSet, WorkflowIterator
from ._partition import partition_window
from ._protocol import RAW_DEPTH, Response
from ._session import SendLoop
from ._time import format_time
from .errors import DecodeError
from .models import Cursor, Page, Workflow

if TYPE_CHECKING:  # a type only (in ClientOptions too): imported when a coordination is used
    from .coordination import Coordination

__all__ = ["INSTANCELIST_PATH", "AirudderClient"]

INSTANCELIST_PATH = "/service/cloud/workflow/instancelist"
CREATEINSTANCE_PATH = "/service/cloud/workflow/createinstance"
DETAILINSTANCES_PATH = "/service/cloud/workflow/detailinstances"
APINOTICEINFO_PATH = "/service/cloud/workflow/apinoticeinfo"
TASKDETAIL_PATH = "/service/cloud/workflow/taskdetail"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
_UNSAFE_URL = re.compile(r"[?#\\\s\x00-\x1f\x7f]")


@functools.cache
def _user_agent() -> str:
    """The User-Agent every client sends, read once: the installed version costs ~1 ms to look up."""
    from importlib.metadata import version

    ours = version("airudder-async")
    return f"airudder-async/{ours} Python/{platform.python_version()} aiohttp/{aiohttp.__version__}"


def check_base_url(url: str) -> str:
    """
    Return *url* without a trailing slash; refuse anything but https, except http to loopback.

    Only `scheme://host[:port][/prefix]` is accepted: no user info, query or fragment (not even a bare
    `?` or `#`, which would send the auth request somewhere else), no `.`/`..` segments, no spaces or
    control characters.
    """
    if not isinstance(url, str):
        raise TypeError(f"base_url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    prefix = parts.path.rstrip("/")
    if _UNSAFE_URL.search(url) or "@" in parts.netloc or (prefix and not _is_plain_path(prefix)):
        raise ValueError(f"base_url must be scheme://host[:port][/prefix], got {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"base_url {url!r} is plain http: the token would travel in clear text; "
            "use https (http is only allowed for loopback test servers)"
        )
    return url.rstrip("/")


def check_path(path: object) -> str:
    """
    Return *path* when it is an absolute API path of plain segments, else raise `ValueError`.

    Segments are letters, digits and `-._~`; `.` and `..` (which would climb out of a base URL's
    prefix), empty segments, `%` escapes, `?` and `#` are refused: pass query values as *params*.
    """
    if not isinstance(path, str) or not _is_plain_path(path):
        raise ValueError(f"path must be an absolute API path like '/service/cloud/...', got {path!r}")
    return path


def _is_plain_path(path: str) -> bool:
    """`/seg/seg...` of letters, digits and `-._~`, none of them `.` or `..`: the rule for both checks."""
    return bool(_PATH.fullmatch(path)) and not any(seg in (".", "..") for seg in path.split("/"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_window(start_time: datetime | None, end_time: datetime | None) -> None:
    for name, value in (("start_time", start_time), ("end_time", end_time)):
        if value is not None:
            if not isinstance(value, datetime):
                raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
            if value.utcoffset() is None:
                raise ValueError(f"{name} is naive: pass a timezone-aware datetime (e.g. tzinfo=UTC)")
            format_time(value, "utc")  # a time with no UTC equivalent (year 1 east of UTC) fails here
    if start_time is not None and end_time is not None and start_time > end_time:
        raise ValueError(f"start_time {start_time.isoformat()} is after end_time {end_time.isoformat()}")


def _check_e164(name: str, value: object) -> str:
    if not isinstance(value, str) or not _E164.fullmatch(value):
        raise ValueError(f"{name} must be an E.164 phone number like +8613711112222, got {value!r}")
    return value


def _check_text(name: str, value: object, *, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _merge_extra(body: dict[str, object], extra: Mapping[str, object] | None) -> dict[str, object]:
    if extra:
        clash = sorted(set(extra) & set(body))
        if clash:
            raise ValueError(f"extra repeats documented fields {clash}: pass them as arguments")
        body.update(extra)
    return body


def _filters(start_time: datetime | None, end_time: datetime | None) -> dict[str, str]:
    """The instancelist query parameters for a creation-time window, in the documented form."""
    params = {}
    if start_time is not None:
        params["start_time"] = format_time(start_time, "wire")
    if end_time is not None:
        params["end_time"] = format_time(end_time, "wire")
    return params


class ClientOptions(TypedDict, total=False):
    """
    The `AirudderClient` arguments besides the credentials and *base_url*, as taken by `from_env()`.
    """

    session: aiohttp.ClientSession | None
    timeouts: Timeouts
    limits: Limits
    retry: RetryPolicy
    user_agent: str | None
    event_hook: Callable[[models.RequestEvent], object] | None
    coordination: Coordination | None


_READ_ONLY = frozenset({"base_url", "timeouts", "limits", "retry", "user_agent"})


class RequestOptions(TypedDict, total=False):
    """
    The keyword arguments of `AirudderClient.request()` and `request_full()`; every one is optional.
    """

    params: Mapping[str, str | int] | None
    json: object
    idempotent: bool | None
    retry: RetryPolicy | None
    timeouts: Timeouts | None


_REQUEST_OPTIONS = frozenset(RequestOptions.__annotations__)


def _check_overrides(retry: object, timeouts: object, idempotent: object = None) -> None:
    """Refuse per-call overrides of the wrong type before anything is sent."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise TypeError(f"timeouts must be a Timeouts or None, got {type(timeouts).__name__}")
    if idempotent is not None and type(idempotent) is not bool:
        raise TypeError(f"idempotent must be a bool or None, got {type(idempotent).__name__}")


def _check_prefetch(value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_PREFETCH:
        raise ValueError(f"prefetch must be an int between 1 and {MAX_PREFETCH}, got {value!r}")


def _check_size(name: str, value: int) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise ValueError(f"{name} must be between 1 and {MAX_PAGE_SIZE}, got {value}")


class AirudderClient:
    """
    An asyncio client for the AIRUDDER API; use it as `async with AirudderClient(...) as client`.

    It owns one aiohttp session (or uses *session*, which it then never closes), obtains and renews
    the API token, and sends every request through one pacer (*limits*) and retry policy (*retry*).
    *event_hook* is called with a `RequestEvent` for each attempt, answer and retry. With a
    *coordination* (e.g. `airudder_async.redis.RedisCoordination`), every client of the same APPKey
    shares one token, one rate budget (*limits*' `requests_per_second` and `burst`) and one 429 cool-down.
    """

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
        retry: RetryPolicy = DEFAULT_RETRY,
        user_agent: str | None = None,
        event_hook: Callable[[models.RequestEvent], object] | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        for name, value in (("app_key", app_key), ("app_secret", app_secret)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        for name, obj, cls in (
            ("timeouts", timeouts, Timeouts),
            ("limits", limits, Limits),
            ("retry", retry, RetryPolicy),
        ):
            if not isinstance(obj, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(obj).__name__}")
        self._app_key = app_key
        self._app_secret = app_secret
        self.base_url: Final = check_base_url(base_url)
        self.timeouts: Final = timeouts
        self.limits: Final = limits
        self.retry: Final = retry
        self.user_agent: Final = user_agent or _user_agent()
        self._event_hook = event_hook
        self._coordination = coordination
        self._user_session = session
        self._session: aiohttp.ClientSession | None = None
        self._loop: SendLoop | None = None
        self._tasks: TaskSet | None = None  # the prefetch workers of its walks
        self._state = "new"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        base_url: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> Self:
        """
        Build a client from `AIRUDDER_APP_KEY`, `AIRUDDER_APP_SECRET` and optional `AIRUDDER_BASE_URL`.

        An explicit *base_url* wins over the environment; the *options* (`ClientOptions`) are the
        constructor's other arguments.
        Raises `RuntimeError` naming a missing variable.
        """
        env = os.environ if environ is None else environ
        missing = [n for n in ("AIRUDDER_APP_KEY", "AIRUDDER_APP_SECRET") if not env.get(n)]
        if missing:
            raise RuntimeError(f"set {' and '.join(missing)} in the environment")
        return cls(
            app_key=env["AIRUDDER_APP_KEY"],
            app_secret=env["AIRUDDER_APP_SECRET"],
            base_url=base_url or env.get("AIRUDDER_BASE_URL") or DEFAULT_BASE_URL,
            **options,
        )

    def __setattr__(self, name: str, value: object) -> None:
        # The configuration is copied into the send loop when the client opens, so a later change
        # would be silently ignored: refuse it instead (type checkers see `Final` too).
        if name in _READ_ONLY and name in self.__dict__:
            raise AttributeError(
                f"AirudderClient.{name} is read-only: pass retry=/timeouts= per call, or build another client"
            )
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        key = self._app_key
        shown = key[:4] + "…" if len(key) > 8 else "…"
        return f"<AirudderClient base_url={self.base_url!r} app_key={shown!r} state={self._state}>"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"this AirudderClient is {self._state}; create a new one")
        session = self._user_session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self.limits.max_connections, ttl_dns_cache=300)
            session = self._session = aiohttp.ClientSession(connector=connector)
        headers = {
            "User-Agent": self.user_agent,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._loop = SendLoop(
            session=session,
            base_url=self.base_url,
            headers=headers,
            limits=self.limits,
            retry=self.retry,
            timeouts=self.timeouts,
            app_key=self._app_key,
            app_secret=self._app_secret,
            event_hook=self._event_hook,
            coordination=self._coordination,
        )
        # Prefetch tasks belong to the client, not to the caller's task (a task group entered here
        # would keep a cancel scope open across the caller's code, and a client may be opened in one
        # task and closed in another): aclose() cancels them and waits, so nothing outlives the client.
        self._tasks = TaskSet()
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Cancel running walks and close the session (unless it was yours). Idempotent.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        tasks = self._tasks
        assert tasks is not None  # set by __aenter__ with the "open" state
        try:
            await tasks.aclose()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _require_open(self) -> SendLoop:
        if self._state != "open" or self._loop is None:
            if self._state == "new":
                raise RuntimeError("use `async with AirudderClient(...) as client` before calling the API")
            raise RuntimeError("this AirudderClient is closed")
        return self._loop

    @property
    def stats(self) -> models.ClientStats:
        """
        A snapshot of the counters: requests, retries by reason, 429s, budget waits, token refreshes.
        """
        if self._loop is None:
            return models.ClientStats()
        return self._loop.stats()

    # -- generic call --------------------------------------------------------------------------------

    async def request(self, method: str, path: str, **options: Unpack[RequestOptions]) -> object:
        """
        Call any API *path* with the client's auth, pacing, retries and error mapping; return `data`.

        The *options* are `RequestOptions`: *params* (query values, str or int), *json* (the body),
        *idempotent* (`True`/`False` decide whether the call may be retried; `None`, the default,
        retries GET calls and other methods only under a policy with `retry_unsafe`), and per-call
        *retry* and *timeouts*. Use `request_full()` for the whole envelope and headers.
        """
        response = await self.request_full(method, path, **options)
        return response.data

    async def request_full(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Response:
        """
        Like `request()`, but return the `Response`: HTTP status, headers and the decoded envelope.
        """
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"method must be an HTTP method name, got {method!r}")
        check_path(path)
        unknown = sorted(set(options) - _REQUEST_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; see RequestOptions")
        retry, timeouts, idempotent = options.get("retry"), options.get("timeouts"), options.get("idempotent")
        _check_overrides(retry, timeouts, idempotent)
        params = options.get("params")
        if params is not None:
            bad = [k for k, v in params.items() if not isinstance(k, str) or not isinstance(v, str | int)]
            if bad or any(isinstance(v, bool) for v in params.values()):
                raise TypeError(f"params values must be str or int, check {bad or list(params)}")
        loop = self._require_open()
        return await loop.send(
            method.upper(),
            path,
            params=None if params is None else {k: str(v) for k, v in params.items()},
            json=options.get("json"),
            idempotent=idempotent,
            retry=retry,
            timeouts=timeouts,
            max_depth=RAW_DEPTH,  # the data goes back as plain JSON: keep repr() and pickle working
        )

    # -- workflows -----------------------------------------------------------------------------------

    async def list_workflows(
        self,
        *,
        page: int = 1,
        size: int = 20,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Page[Workflow]:
        """
        Fetch one page of workflows, newest first; *size* is 1..200, *page* counts from 1.

        *start_time*/*end_time* bound the creation time and must be timezone-aware.
        """
        if type(page) is not int or page < 1:
            raise ValueError(f"page must be an int >= 1, got {page!r}")
        _check_size("size", size)
        _check_window(start_time, end_time)
        _check_overrides(retry, timeouts)
        loop = self._require_open()
        filters = _filters(start_time, end_time)
        items, count = _parse_instancelist(await self._fetch_page(loop, page, size, filters, retry, timeouts))
        return Page(items=tuple(items), count=count, page=page, size=size)

    def iter_workflows(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_items: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        snapshot: bool = True,
        cursor: Cursor | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        partition: tuple[int, int] | None = None,
    ) -> WorkflowIterator:
        """
        Walk every workflow, newest first, across pages; return an async iterator.

        Up to *prefetch* pages (at most 64) are requested ahead (1: one request at a time); the client's
        `Limits.max_in_flight` (default 8) still caps requests in flight, so raise it for a deeper
        window. Use `walk.by_page()` to get lists of a page each instead of items. With *snapshot* the
        walk pins *end_time* to the moment it starts, so workflows created meanwhile do not push older
        ones onto later pages. Pass a *cursor* (from `iterator.cursor` or an error's `cursor`) to
        resume a walk with its own window and page size. *retry* and *timeouts* override the
        client's for each page request of this walk. *partition* `(i, k)` walks only window *i* of the
        *k* disjoint windows `partition_window()` splits *start_time*..*end_time* into (both needed):
        the *k* partition walks together yield the whole walk's workflows, each once.
        """
        if max_items is not None and (type(max_items) is not int or max_items < 1):
            raise ValueError(f"max_items must be an int >= 1 or None, got {max_items!r}")
        _check_prefetch(prefetch)
        if cursor is not None:
            if not isinstance(cursor, Cursor):
                raise TypeError(f"cursor must be a Cursor, got {type(cursor).__name__}")
            if start_time is not None or end_time is not None:
                raise ValueError("a cursor carries its own window: do not pass start_time/end_time with it")
            if partition is not None:
                raise ValueError("a cursor carries its own window: do not pass partition with it")
            start_time, end_time, page_size = cursor.start_time, cursor.end_time, cursor.page_size
        if partition is not None:
            if start_time is None or end_time is None:
                raise ValueError(
                    "a partitioned walk needs both start_time and end_time (the same in every part)"
                )
            _check_window(start_time, end_time)
            if not isinstance(partition, tuple) or len(partition) != 2:
                raise TypeError(f"partition must be a tuple (index, count), got {partition!r}")
            start_time, end_time = partition_window(
                start_time, end_time, index=partition[0], count=partition[1]
            )
        _check_size("page_size", page_size)
        _check_window(start_time, end_time)
        _check_overrides(retry, timeouts)
        if snapshot and end_time is None and cursor is None:
            end_time = datetime.now(UTC).replace(microsecond=0)
            _check_window(start_time, end_time)
        loop = self._require_open()

        filters = _filters(start_time, end_time)

        async def fetch(page: int) -> object:
            self._require_open()  # a walk kept past the client's end says so, not aiohttp
            return await self._fetch_page(loop, page, page_size, filters, retry, timeouts)

        return WorkflowIterator(
            fetch=fetch,
            parse=_parse_instancelist,
            tasks=self._tasks,
            page_size=page_size,
            start_time=start_time,
            end_time=end_time,
            max_items=max_items,
            prefetch=prefetch,
            cursor=cursor,
        )

    # -- other workflow calls (answers undocumented: typed where known, data kept whole) ---------------

    async def create_workflow(
        self,
        *,
        workflow_template_id: int,
        name: str,
        end_time: datetime,
        workflow_template_name: str | None = None,
        workflow_name: str | None = None,
        auto_finish: int = 2,
        extra: Mapping[str, object] | None = None,
        retry_unsafe: bool = False,
    ) -> models.CreatedWorkflow:
        """
        Create a workflow task from a template (`POST /service/cloud/workflow/createinstance`).

        *extra* carries fields the vendor uses but does not document. The call is not retried on
        failure (it could create the task twice) unless *retry_unsafe* is true, or the client's
        `RetryPolicy` has `retry_unsafe`.
        """
        if type(workflow_template_id) is not int:
            raise TypeError(f"workflow_template_id must be an int, got {type(workflow_template_id).__name__}")
        _check_text("name", name)
        _check_text("workflow_template_name", workflow_template_name, required=False)
        _check_text("workflow_name", workflow_name, required=False)
        if type(auto_finish) is not int:
            raise TypeError(f"auto_finish must be an int, got {type(auto_finish).__name__}")
        _check_window(None, end_time)
        if end_time is None:
            raise ValueError("end_time is required")
        body: dict[str, object] = {
            "workflow_template_id": workflow_template_id,
            "name": name,
            "auto_finish": auto_finish,
            "end_time": format_time(end_time, "wire"),
        }
        if workflow_template_name is not None:
            body["workflow_template_name"] = workflow_template_name
        if workflow_name is not None:
            body["workflow_name"] = workflow_name
        data = await self.request(
            "POST",
            CREATEINSTANCE_PATH,
            json=_merge_extra(body, extra),
            idempotent=True if retry_unsafe else None,
        )
        return models.CreatedWorkflow(workflow_id=str_or_none(data, "workflow_id"), data=data)

    async def find_workflows(
        self,
        *,
        start_time: datetime,
        end_time: datetime,
        case_id: str | None = None,
        callee: str | None = None,
    ) -> models.WorkflowMatches:
        """
        Find workflows by *case_id* and/or *callee* (E.164) in a time window (`detailinstances`).
        """
        if start_time is None or end_time is None:
            raise ValueError("start_time and end_time are required")
        _check_window(start_time, end_time)
        _check_text("case_id", case_id, required=False)
        if case_id is None and callee is None:
            raise ValueError("pass case_id, callee or both")
        body: dict[str, object] = {
            "start_time": format_time(start_time, "wire"),
            "end_time": format_time(end_time, "wire"),
        }
        if case_id is not None:
            body["case_id"] = case_id
        if callee is not None:
            body["callee"] = _check_e164("callee", callee)
        # A lookup changes nothing, so it is safe to retry.
        data = await self.request("POST", DETAILINSTANCES_PATH, json=body, idempotent=True)
        return models.WorkflowMatches(workflow_ids=ids_in(data), data=data)

    async def verify_api_notice(
        self, *, workflow_id: str, node_id: str, callee: str, case_id: str | None = None
    ) -> object:
        """
        Ask AIRUDDER to verify a custom API node data push (`apinoticeinfo`); return the answer's data.
        """
        _check_text("workflow_id", workflow_id)
        _check_text("node_id", node_id)
        _check_text("case_id", case_id, required=False)
        body: dict[str, object] = {
            "workflow_id": workflow_id,
            "node_id": node_id,
            "callee": _check_e164("callee", callee),
        }
        if case_id is not None:
            body["case_id"] = case_id
        return await self.request("POST", APINOTICEINFO_PATH, json=body)

    async def get_task_detail(
        self, *, fields: Mapping[str, object], idempotent: bool = True
    ) -> models.TaskDetail:
        """
        Get the outbound task details of a workflow (`taskdetail`); its request *fields* are undocumented.

        A read, so it is retried unless *idempotent* is false.
        """
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError("fields must be a non-empty mapping of the request's fields")
        data = await self.request("POST", TASKDETAIL_PATH, json=dict(fields), idempotent=idempotent)
        records = rows(data, whole=False)
        return models.TaskDetail(
            workflow_id=str_or_none(data, "workflow_id"),
            workflow_name=str_or_none(data, "workflow_name"),
            nodetask_id=str_or_none(data, "nodetask_id"),
            nodetask_name=str_or_none(data, "nodetask_name"),
            case_id=str_or_none(data, "case_id"),
            records=records,
            data=data,
        )

    async def _fetch_page(
        self,
        loop: SendLoop,
        page: int,
        size: int,
        filters: Mapping[str, str],
        retry: RetryPolicy | None,
        timeouts: Timeouts | None,
    ) -> object:
        params = {"page": str(page), "size": str(size), **filters}
        response = await loop.send(
            "GET", INSTANCELIST_PATH, params=params, retry=retry, timeouts=timeouts, decode=peek_page
        )
        return response.data


def _parse_instancelist(data: object) -> tuple[list[Workflow], int]:
    """`parse_page()`, with the route of the request added to a `DecodeError`."""
    try:
        return parse_page(data)
    except DecodeError as exc:
        exc.method, exc.path = "GET", INSTANCELIST_PATH
        raise

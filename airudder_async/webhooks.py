"""
Receive AIRUDDER webhooks: typed events, a fast 2xx, duplicates dropped, your callback run afterwards.

```python
async def on_event(event: WebhookEvent) -> None:
    if isinstance(event, ListCompletionEvent):
        print(event.case_id, [row.node_type for row in event.rows])

app.add_subapp("/hooks", webhook_app(on_event))   # POST /hooks/airudder/webhook
```

AIRUDDER retries a delivery once a minute, up to 5 times, until it gets a 2xx (airudder-api.md
section 5). So the receiver answers as soon as the body is parsed, runs your callback afterwards in a
task group the app owns, and drops repeated bodies. A callback failure is logged on the
`airudder_async.webhooks` logger; it cannot turn into a retry, because the answer is already sent.

**No signature is checked unless you pass *verify_signature*.** AIRUDDER signs Chatbot Session End
notifications with an `X-AIRudder-Sign` header but does not publish the algorithm, so by default
anyone who can reach the URL can post events: give the URL a secret path, restrict it by network, or
supply your own check.

| answer | when |
|---|---|
| 200 | accepted (or a duplicate, which is not delivered again) |
| 400 | the body is not JSON, is not a JSON object, or could not be read |
| 401 | *verify_signature* did not return True |
| 413 | the body is larger than *max_body_size* |
| 415 | the content type is not `application/json` (a `charset` parameter is fine) |
| 500 | *verify_signature* raised (logged) |
| 503 | the handler is not running: not started, or shutting down |

A JSON object that does not fit the model of its kind is not refused (AIRUDDER's retries could not
fix it): it is delivered as a `GenericEvent` whose *decode_error* says why, with a WARNING log line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

import anyio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from anyio.abc import TaskGroup

from ._webhook_models import (
    SIGNATURE_HEADER,
    ChatbotSessionEndEvent,
    CustomApiCallee,
    CustomApiPushEvent,
    GenericEvent,
    ListCompletionEvent,
    ListCompletionRow,
    StatusChangeAction,
    StatusChangeEvent,
    WebhookEvent,
    WebhookKind,
    check_kind,
    decode_body,
    dedupe_key,
    detect_kind,
    parse_object,
    parse_webhook,
)
from .errors import DecodeError

__all__ = [
    "SIGNATURE_HEADER",
    "ChatbotSessionEndEvent",
    "CustomApiCallee",
    "CustomApiPushEvent",
    "GenericEvent",
    "ListCompletionEvent",
    "ListCompletionRow",
    "StatusChangeAction",
    "StatusChangeEvent",
    "WebhookEvent",
    "WebhookHandler",
    "WebhookKind",
    "parse_webhook",
    "webhook_app",
    "webhook_handler",
]

logger = logging.getLogger(__name__)

_DEFAULT_WEBHOOK_PATH: Final = "/airudder/webhook"
_DEFAULT_MAX_BODY_SIZE: Final = 1_048_576  # bytes
_DEFAULT_DEDUPE_SIZE: Final = 10_000  # bodies remembered
# AIRUDDER's retries span about 5 minutes (once a minute, 5 tries); remember a body twice as long.
_DEFAULT_DEDUPE_TTL: Final = 600.0  # seconds
_DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0  # seconds

_CHUNK = 65_536

_Callback = Callable[[WebhookEvent], Awaitable[None]]
_SignatureCheck = Callable[[Mapping[str, str], bytes], bool | Awaitable[bool]]


class _Dedupe:
    """Remember at most *size* keys, each for *ttl* seconds; oldest first out."""

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, key: bytes, now: float) -> bool:
        """Tell whether *key* was recorded less than ttl ago; record it when it was not."""
        if self._size == 0:
            return False
        # Insertion order is expiry order: the TTL is fixed and *now* only grows.
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        if key in self._expiry:
            return True
        self._expiry[key] = now + self._ttl
        if len(self._expiry) > self._size:
            self._expiry.popitem(last=False)
        return False


async def _read_at_most(request: web.Request, limit: int) -> bytes | None:
    """Read the body, or return None as soon as it grows past *limit* bytes."""
    buf = bytearray()
    while chunk := await request.content.read(_CHUNK):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


def _answer(status: int, message: str) -> web.Response:
    # AIRUDDER documents no expected answer body; we mirror its own envelope (a guess, harmless).
    if status == 200:
        return web.json_response({"code": 200, "status": "OK"})
    return web.json_response({"code": status, "status": "ERROR", "message": message}, status=status)


class WebhookHandler:
    """
    An aiohttp handler for AIRUDDER webhooks; build it with `webhook_handler()`.

    Route POSTs to `handle` and add `lifespan` to the app's `cleanup_ctx`: it owns the task group your
    callbacks run in. `webhook_app()` does both for you.
    """

    def __init__(
        self,
        callback: _Callback,
        *,
        kind: str | None = None,
        verify_signature: _SignatureCheck | None = None,
        max_body_size: int = _DEFAULT_MAX_BODY_SIZE,
        dedupe_size: int = _DEFAULT_DEDUPE_SIZE,
        dedupe_ttl: float = _DEFAULT_DEDUPE_TTL,
        shutdown_timeout: float = _DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        check_kind(kind)
        if max_body_size < 1:
            raise ValueError(f"max_body_size must be at least 1 byte, got {max_body_size}")
        if dedupe_size < 0:
            raise ValueError(f"dedupe_size must be 0 (off) or more, got {dedupe_size}")
        if not dedupe_ttl > 0:
            raise ValueError(f"dedupe_ttl must be a positive number of seconds, got {dedupe_ttl}")
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be 0 or more seconds, got {shutdown_timeout}")
        self._callback = callback
        self._kind = kind
        self._verify = verify_signature
        self._max_body_size = max_body_size
        self._shutdown_timeout = shutdown_timeout
        self._dedupe = _Dedupe(dedupe_size, dedupe_ttl)
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._has_run = False

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """
        Run the callbacks' task group while *app* runs; at shutdown wait for pending callbacks.

        Callbacks still running *shutdown_timeout* seconds after shutdown begins are cancelled.
        Register it once: `app.cleanup_ctx.append(handler.lifespan)`.
        """
        if self._stop is not None:
            raise RuntimeError("this WebhookHandler is already running; create one handler per app")
        stop = self._stop = anyio.Event()
        started = anyio.Event()
        # STYLE §5 bans create_task, but aiohttp may enter and leave a cleanup context from different
        # tasks (pytest-asyncio fixtures do), and a task group must never stay open across a yield.
        # So one owner task holds the task group, and this context starts it and awaits it: nothing is
        # left running, and cancelling the cleanup cancels the owner with it.
        owner = asyncio.get_running_loop().create_task(self._own(started, stop))
        try:
            await started.wait()
            yield
        finally:
            stop.set()
            await owner
            self._stop = None

    async def _own(self, started: anyio.Event, stop: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._has_run = True
                started.set()
                await stop.wait()
                self._tg = None  # from now on new deliveries get a 503, so AIRUDDER retries them later
                tg.cancel_scope.deadline = anyio.current_time() + self._shutdown_timeout
        finally:
            self._tg = None
            started.set()

    async def _deliver(self, event: WebhookEvent) -> None:
        try:
            await self._callback(event)
        except anyio.get_cancelled_exc_class():
            logger.warning("webhook callback for a %s event cancelled at shutdown", event.kind)
            raise
        except Exception:
            logger.exception("webhook callback raised on a %s event (already answered 200)", event.kind)

    def _task_group(self) -> TaskGroup | None:
        # A method, not the attribute, so that the check after an await is not narrowed away.
        return self._tg

    def _reject(self, request: web.Request, status: int, message: str) -> web.Response:
        logger.warning("webhook from %s refused with %d: %s", request.remote, status, message)
        response = _answer(status, message)
        if status == 413:
            response.force_close()  # the unread rest of the body makes the connection unusable
        return response

    async def handle(self, request: web.Request) -> web.Response:
        """
        Answer one webhook request, and schedule your callback when the body is new.
        """
        if self._task_group() is None:
            if not self._has_run:
                logger.error("webhook handler not started: add handler.lifespan to app.cleanup_ctx")
            return self._reject(request, 503, "receiver is not running")
        if request.content_type != "application/json":
            return self._reject(request, 415, f"expected application/json, got {request.content_type}")
        declared = request.content_length
        if declared is not None and declared > self._max_body_size:
            return self._reject(request, 413, f"body of {declared} bytes exceeds {self._max_body_size}")
        try:
            body = await _read_at_most(request, self._max_body_size)
        except (OSError, HttpProcessingError) as exc:
            return self._reject(request, 400, f"body could not be read: {exc!r}")
        if body is None:
            return self._reject(request, 413, f"body exceeds {self._max_body_size} bytes")
        if self._verify is not None:
            try:
                verdict = self._verify(request.headers, body)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.exception("verify_signature raised; answering 500 so AIRUDDER retries")
                return _answer(500, "signature check failed")
            if verdict is not True:
                return self._reject(request, 401, "signature check refused the request")
        try:
            data = decode_body(body)
        except DecodeError as exc:
            return self._reject(request, 400, exc.message)
        event = self._parse(request, data)
        key = dedupe_key(event.kind, data, body)
        tg = self._task_group()
        if tg is None:  # shutdown began while the body was read
            return self._reject(request, 503, "receiver is shutting down")
        # No await from here on: checking, recording and scheduling happen as one step, so a retry
        # racing the original is either the duplicate or the delivery, never both.
        if self._dedupe.seen(key, anyio.current_time()):
            logger.info("duplicate %s webhook from %s not delivered again", event.kind, request.remote)
            return _answer(200, "duplicate")
        tg.start_soon(self._deliver, event)
        return _answer(200, "accepted")

    def _parse(self, request: web.Request, data: dict[str, object]) -> WebhookEvent:
        try:
            return parse_object(data, kind=self._kind, headers=request.headers)
        except DecodeError as exc:
            kind = self._kind or detect_kind(data)
            logger.warning(
                "webhook from %s did not fit the %s model, delivered as GenericEvent: %s",
                request.remote,
                kind,
                exc.message,
            )
            return GenericEvent(kind=kind, decode_error=exc.message, extra=data, raw=data)


def webhook_handler(
    callback: _Callback,
    *,
    kind: str | None = None,
    verify_signature: _SignatureCheck | None = None,
    max_body_size: int = _DEFAULT_MAX_BODY_SIZE,
    dedupe_size: int = _DEFAULT_DEDUPE_SIZE,
    dedupe_ttl: float = _DEFAULT_DEDUPE_TTL,
    shutdown_timeout: float = _DEFAULT_SHUTDOWN_TIMEOUT,
) -> WebhookHandler:
    """
    Build a webhook handler for a route of your own app; `webhook_app()` is the shortcut.

    **No signature is checked by default.** Pass *verify_signature*, a function of the request headers
    and the raw body bytes returning True (or an awaitable of it), to check `X-AIRudder-Sign`
    yourself; anything but True answers 401.

    *callback* is awaited once per new event, after the answer. *kind* (a `WebhookKind` value) skips
    the guess from the body's keys: give each notification its own URL and pass it. Bodies above
    *max_body_size* bytes are refused. The last *dedupe_size* bodies (0 turns it off) are remembered
    for *dedupe_ttl* seconds (`math.inf`: until evicted). At shutdown pending callbacks get
    *shutdown_timeout* seconds before they are cancelled.

    Example:
        hooks = webhook_handler(on_event)
        app.router.add_post("/airudder", hooks.handle)
        app.cleanup_ctx.append(hooks.lifespan)
    """
    return WebhookHandler(
        callback,
        kind=kind,
        verify_signature=verify_signature,
        max_body_size=max_body_size,
        dedupe_size=dedupe_size,
        dedupe_ttl=dedupe_ttl,
        shutdown_timeout=shutdown_timeout,
    )


def webhook_app(
    callback: _Callback,
    *,
    path: str = _DEFAULT_WEBHOOK_PATH,
    kind: str | None = None,
    verify_signature: _SignatureCheck | None = None,
    max_body_size: int = _DEFAULT_MAX_BODY_SIZE,
    dedupe_size: int = _DEFAULT_DEDUPE_SIZE,
    dedupe_ttl: float = _DEFAULT_DEDUPE_TTL,
    shutdown_timeout: float = _DEFAULT_SHUTDOWN_TIMEOUT,
) -> web.Application:
    """
    Build an aiohttp app that receives webhooks on POST *path*; mount it with `add_subapp()` or run it.

    **No signature is checked by default**: see `webhook_handler()` for *verify_signature* and the
    other arguments.

    Example:
        app.add_subapp("/hooks", webhook_app(on_event))  # POST /hooks/airudder/webhook
    """
    handler = webhook_handler(
        callback,
        kind=kind,
        verify_signature=verify_signature,
        max_body_size=max_body_size,
        dedupe_size=dedupe_size,
        dedupe_ttl=dedupe_ttl,
        shutdown_timeout=shutdown_timeout,
    )
    app = web.Application()
    app.router.add_post(path, handler.handle)
    app.cleanup_ctx.append(handler.lifespan)
    return app

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
| 400 | the body is not JSON, is not a JSON object, breaks *max_depth* or *max_items*, or could not be read |
| 401 | *verify_signature* did not return True |
| 408 | the body did not arrive within *body_timeout* seconds of its headers |
| 413 | the body is larger than *max_body_size* |
| 415 | the content type is not `application/json` (a `charset` parameter is fine) |
| 500 | *verify_signature* raised (logged) |
| 503 | busy: *max_pending* callbacks pending, or *max_large_bodies* large bodies in progress |
| 503 | the receiver is not running: not started, or shutting down |
| 503 | a shared *dedupe* store (Redis) could not be reached |

A JSON object that does not fit the model of its kind is not refused (AIRUDDER's retries could not
fix it): it is delivered as a `GenericEvent` whose *decode_error* says why, with a WARNING log line.

Every bound is a field of `WebhookLimits` (pass `limits=`), so one body costs bounded time and memory
and a flood gets 503s instead of piling up: see its docstring for the defaults. Every refusal is a
WARNING log line, and no error text (log, answer, *decode_error*) exceeds 1 KiB.

**Give your server a header timeout and small read buffers.** The handler only runs once the request
headers are complete, so it cannot time out a client that sends them slowly, and aiohttp buffers up to
twice `read_bufsize` of each body before the handler reads it (512 KiB with aiohttp 3.14's default).
Run the app with `web.run_app(app, keepalive_timeout=15, read_bufsize=16_384)`, or pass the same to
`web.AppRunner`. aiohttp closes a connection whose headers are not complete within `keepalive_timeout`
in versions with aio-libs/aiohttp#13681 (3.14.5 has it; the default is 3630 seconds in `web.AppRunner`
and 75 in `web.run_app`); with older ones, put a proxy with a header timeout (nginx
`client_header_timeout`) in front.
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
from anyio import CancelScope
from anyio.abc import TaskGroup

from ._webhook_models import (
    DEFAULT_WEBHOOK_LIMITS,
    LARGE_BODY_SIZE,
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
    WebhookLimits,
    bounded,
    check_kind,
    decode_body,
    dedupe_key,
    detect_kind,
    parse_object,
    parse_webhook,
)
from .coordination import DedupeStore
from .errors import CoordinationError, DecodeError

# The public home of the names defined in `_webhook_models.py`: this list deliberately repeats theirs.
__all__ = [
    "DEFAULT_WEBHOOK_LIMITS",
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
    "WebhookLimits",
    "parse_webhook",
    "webhook_app",
    "webhook_handler",
]

logger = logging.getLogger(__name__)

_DEFAULT_WEBHOOK_PATH: Final = "/airudder/webhook"
_CHUNK = 65_536
_FORGET_TIMEOUT = 5.0  # seconds for a best-effort forget() of a key recorded for an undelivered webhook

_Callback = Callable[[WebhookEvent], Awaitable[None]]
_Received = tuple[WebhookEvent, dict[str, object], bytes]  # the event, its decoded body, its bytes
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
        """Tell whether *key* was recorded less than ttl ago."""
        # Insertion order is expiry order: the TTL is fixed and *now* only grows.
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        return key in self._expiry

    def add(self, key: bytes, now: float) -> None:
        """Record *key* until ttl from *now*, forgetting the oldest key when full."""
        if self._size == 0:
            return
        self._expiry[key] = now + self._ttl
        if len(self._expiry) > self._size:
            self._expiry.popitem(last=False)


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
        limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS,
        dedupe: DedupeStore | None = None,
    ) -> None:
        check_kind(kind)
        if not isinstance(limits, WebhookLimits):
            raise TypeError(f"limits must be a WebhookLimits, not {type(limits).__name__}")
        self._callback = callback
        self._kind = kind
        self._verify = verify_signature
        self._limits = limits
        self._dedupe = _Dedupe(limits.dedupe_size, limits.dedupe_ttl)
        self._shared = dedupe if limits.dedupe_size else None  # dedupe_size=0 turns de-duplication off
        self._tg: TaskGroup | None = None
        self._scope: CancelScope | None = None
        self._stop: anyio.Event | None = None
        self._has_run = False
        self._pending = 0  # callbacks scheduled and not finished
        self._large = 0  # large bodies between their first byte read and the end of their callback

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """
        Run the callbacks' task group while *app* runs; at shutdown wait for pending callbacks.

        Callbacks still running `limits.shutdown_timeout` seconds after shutdown begins are cancelled.
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
                self._tg, self._scope = tg, tg.cancel_scope
                self._has_run = True
                started.set()
                await stop.wait()
                self._tg = None  # from now on new deliveries get a 503, so AIRUDDER retries them later
                tg.cancel_scope.deadline = anyio.current_time() + self._limits.shutdown_timeout
        finally:
            self._tg = None
            started.set()

    def _cancelled_by_us(self) -> bool:
        # The shutdown deadline cancels the task group's scope, which cancels each callback's task. A
        # CancelledError raised by the callback's own code (it awaited a task it cancelled) does neither.
        task = asyncio.current_task()
        scope_cancelled = self._scope is not None and self._scope.cancel_called
        return scope_cancelled or (task is not None and task.cancelling() > 0)

    async def _deliver(self, event: WebhookEvent, large: bool) -> None:
        try:
            await self._callback(event)
        except anyio.get_cancelled_exc_class():
            if self._cancelled_by_us():
                logger.warning("webhook callback for a %s event cancelled at shutdown", event.kind)
                raise
            # Not re-raised: in a task group it would cancel every other callback and stop the receiver.
            logger.exception(
                "webhook callback raised CancelledError on a %s event (already answered 200); "
                "treated as a callback failure, the receiver keeps serving",
                event.kind,
            )
        except Exception:
            logger.exception("webhook callback raised on a %s event (already answered 200)", event.kind)
        finally:
            self._pending -= 1
            if large:
                self._large -= 1

    def _task_group(self) -> TaskGroup | None:
        # A method, not the attribute, so that the check after an await is not narrowed away.
        return self._tg

    def _reject(self, request: web.Request, status: int, message: str) -> web.Response:
        message = bounded(message)
        logger.warning("webhook from %s refused with %d: %s", request.remote, status, message)
        response = _answer(status, message)
        if not request.content.is_eof():
            response.force_close()  # the unread rest of the body makes the connection unusable
        return response

    def _busy(self, request: web.Request) -> web.Response | None:
        limits = self._limits
        if self._pending >= limits.max_pending:
            return self._reject(
                request, 503, f"{self._pending} callbacks pending, at max_pending={limits.max_pending}"
            )
        return None

    async def handle(self, request: web.Request) -> web.Response:
        """
        Answer one webhook request, and schedule your callback when the body is new.
        """
        limits = self._limits
        if self._task_group() is None:
            if not self._has_run:
                logger.error("webhook handler not started: add handler.lifespan to app.cleanup_ctx")
            return self._reject(request, 503, "receiver is not running")
        if request.content_type != "application/json":
            return self._reject(request, 415, f"expected application/json, got {request.content_type}")
        declared = request.content_length
        if declared is not None and declared > limits.max_body_size:
            return self._reject(request, 413, f"body of {declared} bytes exceeds {limits.max_body_size}")
        if busy := self._busy(request):  # refused before reading, so a flood costs little
            return busy
        large = declared is None or declared > LARGE_BODY_SIZE
        if large:
            if self._large >= limits.max_large_bodies:
                return self._reject(
                    request,
                    503,
                    f"{self._large} large bodies in progress, at max_large_bodies={limits.max_large_bodies}",
                )
            self._large += 1
        scheduled = False
        try:
            received = await self._receive(request)
            if isinstance(received, web.Response):
                return received
            event, data, body = received
            # No await from here on (a shared store checks and records in one atomic step instead): a
            # retry racing the original is either the duplicate or the delivery, never both.
            tg = self._task_group()
            if tg is None:  # shutdown began while the body was read
                return self._reject(request, 503, "receiver is shutting down")
            key, now = dedupe_key(event.kind, data, body), anyio.current_time()
            if self._shared is not None:
                refusal = await self._schedule_shared(request, self._shared, key, event, large)
                scheduled = refusal is None
                return refusal or _answer(200, "accepted")
            if self._dedupe.seen(key, now):
                logger.info("duplicate %s webhook from %s not delivered again", event.kind, request.remote)
                return _answer(200, "duplicate")
            if busy := self._busy(request):  # the callbacks filled up while this body was read
                return busy
            self._dedupe.add(key, now)
            self._pending += 1
            tg.start_soon(self._deliver, event, large)
            scheduled = True
            return _answer(200, "accepted")
        finally:
            if large and not scheduled:
                self._large -= 1

    async def _schedule_shared(
        self, request: web.Request, store: DedupeStore, key: bytes, event: WebhookEvent, large: bool
    ) -> web.Response | None:
        """Record *key* in the shared store and schedule the callback (None), or return the answer."""
        if busy := self._busy(request):
            return busy
        self._pending += 1  # held across the store's round trip, so max_pending still bounds callbacks
        # Until the callback is scheduled, a key this request may have recorded (a store whose reply
        # was lost or late, a cancelled handler, a shutdown) is forgotten, so AIRUDDER's retry of a
        # delivery answered with an error (or never answered) is delivered, not called a duplicate.
        ours, scheduled = True, False
        try:
            try:
                is_new = await store.first_time(key, self._limits.dedupe_ttl)
            except CoordinationError as exc:
                return self._reject(request, 503, f"de-duplication store unavailable: {exc}")
            if not is_new:
                ours = False  # another delivery's record: kept
                logger.info("duplicate %s webhook from %s not delivered again", event.kind, request.remote)
                return _answer(200, "duplicate")
            tg = self._task_group()
            if tg is None:  # shutdown began during the round trip: let AIRUDDER's retry be delivered later
                return self._reject(request, 503, "receiver is shutting down")
            tg.start_soon(self._deliver, event, large)
            scheduled = True
            return None
        finally:
            if not scheduled:
                self._pending -= 1
                if ours:
                    await _forget(store, key)

    async def _receive(self, request: web.Request) -> web.Response | _Received:
        """Read, check and parse the body: the event with its decoded body and bytes, or a refusal."""
        limits = self._limits
        body: bytes | None = None
        with anyio.move_on_after(limits.body_timeout) as deadline:
            try:
                body = await _read_at_most(request, limits.max_body_size)
            except (OSError, HttpProcessingError) as exc:
                return self._reject(request, 400, f"body could not be read: {exc!r}")
        if deadline.cancelled_caught:
            return self._reject(request, 408, f"body not received within {limits.body_timeout} seconds")
        if body is None:
            return self._reject(request, 413, f"body exceeds {limits.max_body_size} bytes")
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
            data = decode_body(body, limits)
        except DecodeError as exc:
            return self._reject(request, 400, exc.message)
        return self._parse(request, data), data, body

    def _parse(self, request: web.Request, data: dict[str, object]) -> WebhookEvent:
        try:
            return parse_object(data, kind=self._kind, headers=request.headers, limits=self._limits)
        except DecodeError as exc:
            kind = self._kind or detect_kind(data)
            logger.warning(
                "webhook from %s did not fit the %s model, delivered as GenericEvent: %s",
                request.remote,
                kind,
                exc.message,
            )
            return GenericEvent(kind=kind, decode_error=exc.message, extra=data, raw=data)


async def _forget(store: DedupeStore, key: bytes) -> None:
    """Forget *key* in *store*: best effort, shielded from cancellation, within _FORGET_TIMEOUT seconds."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(_FORGET_TIMEOUT):
        try:
            await store.forget(key)
        except Exception:  # the record expires with its ttl
            logger.warning("could not forget a webhook's de-duplication key; it expires with dedupe_ttl")


def webhook_handler(
    callback: _Callback,
    *,
    kind: str | None = None,
    verify_signature: _SignatureCheck | None = None,
    limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS,
    dedupe: DedupeStore | None = None,
) -> WebhookHandler:
    """
    Build a webhook handler for a route of your own app; `webhook_app()` is the shortcut.

    **No signature is checked by default.** Pass *verify_signature*, a function of the request headers
    and the raw body bytes returning True (or an awaitable of it), to check `X-AIRudder-Sign`
    yourself; anything but True answers 401.

    *callback* is awaited once per new event, after the answer. *kind* (a `WebhookKind` value) skips
    the guess from the body's keys: give each notification its own URL and pass it. *limits* holds every
    bound: body size and read time, JSON shape, pending callbacks, de-duplication, shutdown. *dedupe*
    (a `coordination.DedupeStore`, e.g. `RedisCoordination.dedupe_store()`) shares the record of
    deliveries between replicas, for `limits.dedupe_ttl` seconds; when it is unreachable the answer
    is 503, so AIRUDDER retries.

    Example:
        hooks = webhook_handler(on_event, limits=attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_pending=500))
        app.router.add_post("/airudder", hooks.handle)
        app.cleanup_ctx.append(hooks.lifespan)
    """
    return WebhookHandler(
        callback, kind=kind, verify_signature=verify_signature, limits=limits, dedupe=dedupe
    )


def webhook_app(
    callback: _Callback,
    *,
    path: str = _DEFAULT_WEBHOOK_PATH,
    kind: str | None = None,
    verify_signature: _SignatureCheck | None = None,
    limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS,
    dedupe: DedupeStore | None = None,
) -> web.Application:
    """
    Build an aiohttp app that receives webhooks on POST *path*; mount it with `add_subapp()` or run it.

    **No signature is checked by default**: see `webhook_handler()` for *verify_signature* and the
    other arguments. Also give your server a header timeout (see this module's docstring).

    Example:
        app.add_subapp("/hooks", webhook_app(on_event))  # POST /hooks/airudder/webhook
    """
    handler = webhook_handler(
        callback, kind=kind, verify_signature=verify_signature, limits=limits, dedupe=dedupe
    )
    app = web.Application()
    app.router.add_post(path, handler.handle)
    app.cleanup_ctx.append(handler.lifespan)
    return app

"""
Webhook bodies as frozen models, and the pure rules that read them: kind detection and parsing.

Field names are the vendor's (airudder-api.md section 5). Every model keeps what it does not model:
*extra* holds the unknown keys of that object, and each event's *raw* holds the whole decoded body.
`WebhookLimits` bounds the work one body can cause. The socket side lives in `webhooks.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeAlias, TypeVar

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception

from ._json import openings
from .errors import DecodeError

__all__ = [
    "DEFAULT_WEBHOOK_LIMITS",
    "ERROR_TEXT_LIMIT",
    "LARGE_BODY_SIZE",
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
    "WebhookKind",
    "WebhookLimits",
    "bounded",
    "check_kind",
    "decode_body",
    "dedupe_key",
    "detect_kind",
    "parse_object",
    "parse_webhook",
]

T = TypeVar("T")

SIGNATURE_HEADER: Final = "X-AIRudder-Sign"
_BODY = "body"  # the root of every field path in a DecodeError: "body.rows[0].nodetask_id"

DEFAULT_MAX_BODY_SIZE: Final = 1_048_576  # bytes
DEFAULT_MAX_DEPTH: Final = 64  # nested arrays and objects; the documented bodies nest 3 deep
# The highest max_depth allowed: far below the interpreter's recursion limit (1000), which the stdlib
# json module counts against on Python 3.11, so no accepted depth can end in a RecursionError.
MAX_DEPTH_CEILING: Final = 256
DEFAULT_MAX_ITEMS: Final = 10_000  # JSON values in one body, nested ones included
DEFAULT_MAX_LIST_LENGTH: Final = 1_000  # entries of `rows` or `actions`
DEFAULT_MAX_PENDING: Final = 100  # callbacks scheduled and not finished
DEFAULT_MAX_LARGE_BODIES: Final = 4  # bodies over LARGE_BODY_SIZE in progress at once
DEFAULT_BODY_TIMEOUT: Final = 10.0  # seconds
DEFAULT_DEDUPE_SIZE: Final = 10_000  # bodies remembered
# AIRUDDER's retries span about 5 minutes (once a minute, 5 tries); remember a body twice as long.
DEFAULT_DEDUPE_TTL: Final = 600.0  # seconds
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0  # seconds
LARGE_BODY_SIZE: Final = 65_536  # bytes; a body above it (or of unknown length) takes a large-body slot
ERROR_TEXT_LIMIT: Final = 1_024  # bytes of UTF-8 in a DecodeError message, a decode_error or a log line
# Reading an integer costs time quadratic in its digits (Python allows 4300): 240 such integers fit in
# 1 MiB and take 70 ms. Ids and timestamps have fewer than 30 digits.
MAX_INT_DIGITS: Final = 100


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attr.name} must be an integer >= {minimum}, got {value!r}")

    return check


def _seconds(*, allow_zero: bool) -> Callable[[object, attrs.Attribute[Any], float], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or not (value >= 0 if allow_zero else value > 0):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{attr.name} must be a number of seconds {bound}, got {value!r}")

    return check


def _depth(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    _at_least(1)(_inst, attr, value)
    if value > MAX_DEPTH_CEILING:
        raise ValueError(f"{attr.name} must be at most {MAX_DEPTH_CEILING}, got {value!r}")


@attrs.frozen(kw_only=True)
class WebhookLimits:
    """
    Every bound of the webhook receiver: how much work one request, or a flood of them, can cause.

    Per body: at most *max_body_size* bytes (413), read within *body_timeout* seconds of its headers
    (408), nested at most *max_depth* deep and holding at most *max_items* JSON values (400); a `rows` or
    `actions` list longer than *max_list_length* does not fit its model (delivered as `GenericEvent`).
    At once: at most *max_pending* callbacks scheduled and not finished, and at most *max_large_bodies*
    bodies over 64 KiB (or of unknown length) from the first byte read to their callback's end; beyond
    either, the answer is 503 so AIRUDDER retries later. Duplicates: the last *dedupe_size* bodies
    (0 turns it off), each for *dedupe_ttl* seconds (`math.inf`: until evicted). At shutdown, pending
    callbacks get *shutdown_timeout* seconds before they are cancelled. Tweak with
    `attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_pending=500)`.
    """

    max_body_size: int = attrs.field(default=DEFAULT_MAX_BODY_SIZE, validator=_at_least(1))
    body_timeout: float = attrs.field(default=DEFAULT_BODY_TIMEOUT, validator=_seconds(allow_zero=False))
    max_depth: int = attrs.field(default=DEFAULT_MAX_DEPTH, validator=_depth)
    max_items: int = attrs.field(default=DEFAULT_MAX_ITEMS, validator=_at_least(1))
    max_list_length: int = attrs.field(default=DEFAULT_MAX_LIST_LENGTH, validator=_at_least(0))
    max_pending: int = attrs.field(default=DEFAULT_MAX_PENDING, validator=_at_least(1))
    max_large_bodies: int = attrs.field(default=DEFAULT_MAX_LARGE_BODIES, validator=_at_least(0))
    dedupe_size: int = attrs.field(default=DEFAULT_DEDUPE_SIZE, validator=_at_least(0))
    dedupe_ttl: float = attrs.field(default=DEFAULT_DEDUPE_TTL, validator=_seconds(allow_zero=False))
    shutdown_timeout: float = attrs.field(
        default=DEFAULT_SHUTDOWN_TIMEOUT, validator=_seconds(allow_zero=True)
    )


DEFAULT_WEBHOOK_LIMITS: Final = WebhookLimits()


def bounded(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """Cut *text* to at most *limit* bytes of UTF-8, saying how much was cut."""
    encoded = text.encode("utf-8", "backslashreplace")
    if len(encoded) <= limit:
        return text
    suffix = f"... ({len(encoded)} bytes, cut)"
    return encoded[: limit - len(suffix)].decode("utf-8", "ignore") + suffix


class WebhookKind:
    """
    The kinds of webhook `parse_webhook()` knows: pass one as *kind*, or compare with `event.kind`.

    The first four have a typed model; the others (bodies undocumented) and `GENERIC` (a body whose
    kind could not be recognised) arrive as `GenericEvent`.
    """

    LIST_COMPLETION = "list_completion"
    STATUS_CHANGE = "status_change"
    CUSTOM_API_PUSH = "custom_api_push"
    CHATBOT_SESSION_END = "chatbot_session_end"
    CALL_COMPLETION = "call_completion"
    CALL_COMPLETION_INFO_CHECK = "call_completion_info_check"
    WABA_MESSAGE_STATUS = "waba_message_status"
    PREDICTIVE_TASK_STATUS = "predictive_task_status"
    PREDICTIVE_CONTACTS_STATUS = "predictive_contacts_status"
    PREDICTIVE_AGENTS_STATUS = "predictive_agents_status"
    GENERIC = "generic"

    TYPED: frozenset[str] = frozenset({LIST_COMPLETION, STATUS_CHANGE, CUSTOM_API_PUSH, CHATBOT_SESSION_END})
    KNOWN: frozenset[str] = TYPED | {
        CALL_COMPLETION,
        CALL_COMPLETION_INFO_CHECK,
        WABA_MESSAGE_STATUS,
        PREDICTIVE_TASK_STATUS,
        PREDICTIVE_CONTACTS_STATUS,
        PREDICTIVE_AGENTS_STATUS,
        GENERIC,
    }


class _ReadOnlyDict(Mapping[str, object]):
    """A read-only mapping over a private dict; unlike MappingProxyType it pickles."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, object]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ReadOnlyDict, (self._data,))


_EMPTY: Mapping[str, object] = _ReadOnlyDict({})


def _frozen_map(value: Mapping[str, object]) -> Mapping[str, object]:
    return value if isinstance(value, _ReadOnlyDict) else _ReadOnlyDict(dict(value))


def _extra() -> Any:
    # extra and raw are compared but not hashed (their values may be lists) and raw is left out of
    # repr (it repeats every field).
    return attrs.field(default=_EMPTY, converter=_frozen_map, hash=False)


def _raw() -> Any:
    return attrs.field(default=_EMPTY, converter=_frozen_map, hash=False, repr=False)


@attrs.frozen(kw_only=True)
class ListCompletionRow:
    """
    One node task of a finished list (an entry of `rows`); *task_id* is optional in the docs.
    """

    nodetask_id: str
    nodetask_name: str
    node_type: str
    task_id: str | None = None
    extra: Mapping[str, object] = _extra()


@attrs.frozen(kw_only=True)
class ListCompletionEvent:
    """
    Notification for Workflow List Completion: every node of one list (one callee) has run.
    """

    kind: str = attrs.field(default=WebhookKind.LIST_COMPLETION, init=False)
    workflow_id: str
    workflow_name: str
    case_id: str
    callee_number: str
    rows: tuple[ListCompletionRow, ...]
    extra: Mapping[str, object] = _extra()
    raw: Mapping[str, object] = _raw()


@attrs.frozen(kw_only=True)
class StatusChangeAction:
    """
    One node task in a status change (an entry of `actions`); *task_id* and *task_status* are optional.
    """

    nodetask_id: str
    nodetask_name: str
    node_type: str
    task_id: str | None = None
    task_status: str | None = None
    extra: Mapping[str, object] = _extra()


@attrs.frozen(kw_only=True)
class StatusChangeEvent:
    """
    Notification of Workflow Status Change; *status* is a plain string (values undocumented).
    """

    kind: str = attrs.field(default=WebhookKind.STATUS_CHANGE, init=False)
    workflow_id: str
    workflow_name: str
    status: str
    actions: tuple[StatusChangeAction, ...]
    extra: Mapping[str, object] = _extra()
    raw: Mapping[str, object] = _raw()


@attrs.frozen(kw_only=True)
class CustomApiCallee:
    """
    The `callee` object of a Custom API Node Data Push; the list's other columns are in *extra*.
    """

    case_id: str
    callee_name: str
    callee_gender: str
    callee_number: str
    platform_name: str
    extra_a: str
    extra: Mapping[str, object] = _extra()


@attrs.frozen(kw_only=True)
class CustomApiPushEvent:
    """
    Custom API Node Data Push: a workflow reached a custom API node for one callee.
    """

    kind: str = attrs.field(default=WebhookKind.CUSTOM_API_PUSH, init=False)
    workflow_id: str
    workflow_name: str
    node_id: str
    node_name: str
    callee: CustomApiCallee
    extra: Mapping[str, object] = _extra()
    raw: Mapping[str, object] = _raw()


@attrs.frozen(kw_only=True)
class ChatbotSessionEndEvent:
    """
    Chatbot Session End Notification; *callee* is a string (presumably the callee's number: a guess).

    *signature* is the `X-AIRudder-Sign` header when the headers were given. It is NOT checked here:
    the algorithm is unpublished, so pass your own *verify_signature* to the receiver.
    """

    kind: str = attrs.field(default=WebhookKind.CHATBOT_SESSION_END, init=False)
    workflow_id: str
    workflow_name: str
    nodetask_id: str
    nodetask_name: str
    waba_task_id: str
    wfdetail_uuid: str
    channel: str
    channel_id: str
    callee: str
    timestamp: int
    call_id: str
    signature: str | None = None
    extra: Mapping[str, object] = _extra()
    raw: Mapping[str, object] = _raw()


@attrs.frozen(kw_only=True)
class GenericEvent:
    """
    A webhook without a typed model: an undocumented or unrecognised kind, or a body that did not fit.

    *kind* is the `WebhookKind` it was given or recognised as, *extra* and *raw* both hold the whole
    body, and *decode_error* says why a body of a typed kind fell back here (only the receiver does
    that; `parse_webhook()` raises `DecodeError` instead).
    """

    kind: str = WebhookKind.GENERIC
    decode_error: str | None = None
    extra: Mapping[str, object] = _extra()
    raw: Mapping[str, object] = _raw()


WebhookEvent: TypeAlias = (
    ListCompletionEvent | StatusChangeEvent | CustomApiPushEvent | ChatbotSessionEndEvent | GenericEvent
)

_TypedEvent: TypeAlias = ListCompletionEvent | StatusChangeEvent | CustomApiPushEvent | ChatbotSessionEndEvent

_MODELS: dict[str, type[_TypedEvent]] = {
    WebhookKind.LIST_COMPLETION: ListCompletionEvent,
    WebhookKind.STATUS_CHANGE: StatusChangeEvent,
    WebhookKind.CUSTOM_API_PUSH: CustomApiPushEvent,
    WebhookKind.CHATBOT_SESSION_END: ChatbotSessionEndEvent,
}


# Tolerance (our decision, not the vendor's): a field documented as a string also accepts a JSON
# integer, turned into its decimal text, because ids often travel as numbers in the wild; `timestamp`
# (an integer) also accepts a string of digits. Booleans, floats, null (for required fields), lists and
# objects are errors: guessing their text would invent data.
_DIGITS = re.compile(r"-?[0-9]{1,30}")


def _loose_str(value: object, _type: object = str) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        try:
            return str(value)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            raise TypeError("integer too long for a string field") from None
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _loose_opt_str(value: object, _type: object = str) -> str | None:
    return None if value is None else _loose_str(value)


def _loose_int(value: object, _type: object = int) -> int:
    if type(value) is int:
        return value
    if type(value) is str and _DIGITS.fullmatch(value):
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _tuple_of(cls: type[T]) -> Callable[[object, object], tuple[T, ...]]:
    def structure(value: object, _type: object) -> tuple[T, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        hook = _converter.get_structure_hook(cls)
        items: list[T] = []
        # Stop at the first bad entry (cattrs would try them all and keep every error): a hostile list
        # must cost one error, not one per entry.
        for index, item in enumerate(value):
            try:
                items.append(hook(item, cls))
            except Exception as exc:
                note = IterableValidationNote(f"Structuring {cls.__name__} @ index {index}", index, cls)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                raise IterableValidationError(
                    f"While structuring a list of {cls.__name__}", [exc], cls
                ) from None
        return tuple(items)

    return structure


_SPECIAL = frozenset({"kind", "extra", "raw", "signature", "decode_error"})


# The webhook models' own converter: registering their hooks must not touch the converter that reads
# API answers (`_convert.converter()`).
_converter = make_converter(forbid_extra_keys=False)
# The list fields of each model, whose length is checked against max_list_length before structuring.
_LIST_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _register(cls: type[Any]) -> None:
    """Register a hook that structures *cls* and keeps unknown keys in *extra*."""
    attrs.resolve_types(cls)
    fields = attrs.fields(cls)
    known = frozenset(f.name for f in fields if f.name not in _SPECIAL)
    overrides: dict[str, Any] = {}
    for field in fields:
        if field.name in _SPECIAL:
            if field.init:
                overrides[field.name] = override(omit=True)
        elif field.type is str:
            overrides[field.name] = override(struct_hook=_loose_str)
        elif field.type == str | None:
            overrides[field.name] = override(struct_hook=_loose_opt_str)
        elif field.type is int:
            overrides[field.name] = override(struct_hook=_loose_int)
        elif getattr(field.type, "__origin__", None) is tuple:
            overrides[field.name] = override(struct_hook=_tuple_of(field.type.__args__[0]))
            _LIST_FIELDS[cls] = (*_LIST_FIELDS.get(cls, ()), field.name)
    # Detailed validation reports every bad field of one object: a bounded list (the model's fields).
    fn = make_dict_structure_fn(cls, _converter, _cattrs_detailed_validation=True, **overrides)

    def structure(value: object, _type: object) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        obj = fn(value, cls)
        extra = {k: v for k, v in value.items() if k not in known}
        return attrs.evolve(obj, extra=_ReadOnlyDict(extra)) if extra else obj

    _converter.register_structure_hook(cls, structure)


for _cls in (ListCompletionRow, StatusChangeAction, CustomApiCallee, *_MODELS.values()):
    _register(_cls)


_ALL_BYTES = bytes(range(256))
_NOT_BRACKETS = _ALL_BYTES.translate(None, b"[]{}")
# An opening bracket counts 2 and a closing one 0, so the running sum minus the count of brackets seen
# is the nesting depth: computed by itertools in C, not by a Python loop over the body.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} characters is longer than {MAX_INT_DIGITS} digits")
    return int(digits)


def _nesting(brackets: bytes) -> int:
    """Return the deepest nesting of a string made of brackets only."""
    steps = brackets.translate(_STEPS)
    return max(map(operator.sub, itertools.accumulate(steps), range(1, len(steps) + 1)), default=0)


def _check_shape(text: bytes, limits: WebhookLimits) -> None:
    """
    Raise `DecodeError` when JSON *text* nests deeper than max_depth or holds more than max_items values.

    Runs before decoding, in time linear in the body, with C loops only (count, replace, split,
    translate), and never recurses: the stdlib json module would recurse once per level (and raises
    RecursionError at an interpreter-dependent depth), and decoding a million tiny values costs seconds.
    Values are counted as the containers plus the commas between values: at least the real count of
    array entries and object members, and exact for bodies without empty containers.
    """
    opens = openings(text)
    commas = text.count(b",")
    # Counted with any bracket or comma inside strings, these are upper bounds: small bodies stop here.
    if opens <= limits.max_depth and opens + commas <= limits.max_items:
        return
    # Drop escaped backslashes and then escaped quotes; what remains between quotes is string content.
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in text else text
    # Every string is a key or a value, and every key has a value: more strings than twice the allowed
    # values is over the limit, and the split below stays small.
    too_many = f"webhook body holds more than max_items={limits.max_items} JSON values"
    if unescaped.count(b'"') // 2 > 2 * limits.max_items:
        raise DecodeError(too_many, field_path=_BODY)
    outside = b"".join(unescaped.split(b'"')[::2])
    opens = openings(outside)
    if opens + outside.count(b",") > limits.max_items:
        raise DecodeError(too_many, field_path=_BODY)
    if opens > limits.max_depth and _nesting(outside.translate(None, _NOT_BRACKETS)) > limits.max_depth:
        raise DecodeError(f"webhook body nests deeper than max_depth={limits.max_depth}", field_path=_BODY)


def decode_body(
    body: bytes | str | Mapping[str, object], limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS
) -> dict[str, object]:
    """
    Decode a webhook body into a fresh dict, or raise `DecodeError` when it is not a JSON object.

    JSON text is checked against *limits* (max_depth, max_items) before it is decoded; a mapping is
    taken as it is (you decoded it).
    """
    if isinstance(body, Mapping):
        return dict(body)
    if isinstance(body, str):
        raw = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, bytes):
        raw = body
    else:
        raise TypeError(f"body must be bytes, str or a mapping, not {type(body).__name__}")
    _check_shape(raw, limits)
    try:
        # UTF-8 only (RFC 8259 section 8.1; a BOM is ignored), so the shape check above, which reads
        # ASCII bytes, sees the structure json.loads sees. The stdlib, not orjson: webhooks are few, and
        # orjson turns integers beyond 64 bits into floats, which would change an id silently.
        data = json.loads(body if isinstance(body, str) else body.decode("utf-8-sig"), parse_int=_parse_int)
    except ValueError as exc:  # also UnicodeDecodeError, and integers beyond sys.get_int_max_str_digits()
        raise DecodeError(bounded(f"webhook body is not JSON: {exc}"), field_path=_BODY) from None
    if not isinstance(data, dict):
        raise DecodeError(f"webhook body is a JSON {type(data).__name__}, not an object", field_path=_BODY)
    return data


def detect_kind(data: Mapping[str, object]) -> str:
    """
    Recognise a body's kind from its keys; `WebhookKind.GENERIC` when nothing matches.

    The markers are our guesses from the documented fields (the vendor sends no type field): `rows`,
    then `actions`, then `node_id` with a `callee` object, then `wfdetail_uuid` (or `waba_task_id`
    with `channel_id`). Give a URL per notification and pass *kind* to avoid guessing.
    """
    if "rows" in data:
        return WebhookKind.LIST_COMPLETION
    if "actions" in data:
        return WebhookKind.STATUS_CHANGE
    if "node_id" in data and isinstance(data.get("callee"), Mapping):
        return WebhookKind.CUSTOM_API_PUSH
    # waba_task_id alone is not enough: WABA Message Status bodies (undocumented) may carry it too.
    if "wfdetail_uuid" in data or ("waba_task_id" in data and "channel_id" in data):
        return WebhookKind.CHATBOT_SESSION_END
    return WebhookKind.GENERIC


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _format(exc: BaseException, type_: type | None) -> str:
    # Our hooks' TypeErrors say what was expected and what came (a type name, never a value).
    if isinstance(exc, TypeError) and exc.args:
        return str(exc)
    return format_exception(exc, type_)


def check_kind(kind: str | None) -> None:
    """Raise `ValueError` unless *kind* is None or a `WebhookKind` value."""
    if kind is not None and kind not in WebhookKind.KNOWN:
        raise ValueError(f"unknown webhook kind {kind!r}; use a WebhookKind constant")


def parse_object(
    data: Mapping[str, object],
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS,
) -> WebhookEvent:
    """
    Turn a decoded body into an event of *kind* (detected when None), or raise `DecodeError`.

    A `rows` or `actions` list longer than *limits*.max_list_length does not fit; the first bad field
    ends structuring, and the message is cut to `ERROR_TEXT_LIMIT` bytes.
    """
    raw = _ReadOnlyDict(dict(data))
    kind = detect_kind(raw) if kind is None else kind
    model = _MODELS.get(kind)
    if model is None:
        return GenericEvent(kind=kind, extra=raw, raw=raw)
    for name in _LIST_FIELDS.get(model, ()):
        value = raw.get(name)
        if isinstance(value, list) and len(value) > limits.max_list_length:
            raise DecodeError(
                f"webhook body did not fit {model.__name__}: {len(value)} entries, more than "
                f"max_list_length={limits.max_list_length} @ {_BODY}.{name}",
                field_path=f"{_BODY}.{name}",
            )
    try:
        event = _converter.structure(raw, model)
    except cattrs.BaseValidationError as exc:
        details = cattrs.transform_error(exc, path=_BODY, format_exception=_format)
        field_path = details[0].rpartition(" @ ")[2] if details else _BODY
        message = bounded(f"webhook body did not fit {model.__name__}: {'; '.join(details)}")
        raise DecodeError(message, field_path=bounded(field_path)) from None
    if isinstance(event, ChatbotSessionEndEvent):
        return attrs.evolve(event, raw=raw, signature=_header(headers, SIGNATURE_HEADER))
    return attrs.evolve(event, raw=raw)


def parse_webhook(
    body: bytes | str | Mapping[str, object],
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    limits: WebhookLimits = DEFAULT_WEBHOOK_LIMITS,
) -> WebhookEvent:
    """
    Parse one webhook body (JSON text, or an already decoded object) into a typed event.

    *kind* is a `WebhookKind` value; without it the kind is recognised from the body's keys. Pass the
    request *headers* to fill `ChatbotSessionEndEvent.signature` (which is not verified here). JSON text
    is held to *limits* (max_depth, max_items, max_list_length) as the receiver holds it.

    Raises:
        DecodeError: the body is not a JSON object, breaks a limit, or does not fit the model of its
            kind; *field_path* names the field, e.g. `body.rows[0].nodetask_id`. Its message is at
            most 1 KiB.
        ValueError: *kind* is not a `WebhookKind` value.
    """
    check_kind(kind)
    return parse_object(decode_body(body, limits), kind=kind, headers=headers, limits=limits)


def dedupe_key(kind: str, data: Mapping[str, object], body: bytes) -> bytes:
    """
    Digest a delivery by kind and canonical JSON (sorted keys), so a re-serialised retry still matches.

    *data* comes from `decode_body()`, so its size and depth are bounded; data the encoder cannot
    handle (nested too deep for the interpreter, say) is digested as the raw *body* instead.
    """
    try:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    except (RecursionError, ValueError, TypeError):
        canonical = body
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    digest.update(b"\0")
    digest.update(canonical)
    return digest.digest()

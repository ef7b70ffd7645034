"""
Webhook bodies as frozen models, and the pure rules that read them: kind detection and parsing.

Field names are the vendor's (airudder-api.md section 5). Every model keeps what it does not model:
*extra* holds the unknown keys of that object, and each event's *raw* holds the whole decoded body.
The socket side lives in `webhooks.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeAlias, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override
from cattrs.v import format_exception

from ._convert import converter
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
    "WebhookKind",
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
    tuple_type: Any = tuple[cls, ...]  # type: ignore[valid-type]  # cls is only known at run time

    def structure(value: object, _type: object) -> tuple[T, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        result: tuple[T, ...] = converter.structure(value, tuple_type)
        return result

    return structure


_SPECIAL = frozenset({"kind", "extra", "raw", "signature", "decode_error"})


def _register(cls: type[Any]) -> None:
    """Register on the shared converter a hook that structures *cls* and keeps unknown keys in *extra*."""
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
    fn = make_dict_structure_fn(cls, converter, _cattrs_detailed_validation=True, **overrides)

    def structure(value: object, _type: object) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        obj = fn(value, cls)
        extra = {k: v for k, v in value.items() if k not in known}
        return attrs.evolve(obj, extra=_ReadOnlyDict(extra)) if extra else obj

    converter.register_structure_hook(cls, structure)


for _cls in (ListCompletionRow, StatusChangeAction, CustomApiCallee, *_MODELS.values()):
    _register(_cls)


def decode_body(body: bytes | str | Mapping[str, object]) -> dict[str, object]:
    """
    Decode a webhook body into a fresh dict, or raise `DecodeError` when it is not a JSON object.
    """
    if isinstance(body, Mapping):
        return dict(body)
    if not isinstance(body, bytes | str):
        raise TypeError(f"body must be bytes, str or a mapping, not {type(body).__name__}")
    try:
        # The stdlib, not orjson: webhooks are few, and orjson turns integers beyond 64 bits into
        # floats, which would change an id silently.
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"webhook body is not JSON: {exc}", field_path=_BODY) from None
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
    data: Mapping[str, object], *, kind: str | None = None, headers: Mapping[str, str] | None = None
) -> WebhookEvent:
    """
    Turn a decoded body into an event of *kind* (detected when None), or raise `DecodeError`.
    """
    raw = _ReadOnlyDict(dict(data))
    kind = detect_kind(raw) if kind is None else kind
    model = _MODELS.get(kind)
    if model is None:
        return GenericEvent(kind=kind, extra=raw, raw=raw)
    try:
        event = converter.structure(raw, model)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            details = cattrs.transform_error(exc, path=_BODY, format_exception=_format)
            field_path = details[0].rpartition(" @ ")[2] if details else _BODY
            detail = "; ".join(details)
        else:  # pragma: no cover - the hooks above wrap everything in a validation error
            detail, field_path = f"{exc} @ {_BODY}", _BODY
        raise DecodeError(
            f"webhook body did not fit {model.__name__}: {detail}", field_path=field_path
        ) from None
    if isinstance(event, ChatbotSessionEndEvent):
        return attrs.evolve(event, raw=raw, signature=_header(headers, SIGNATURE_HEADER))
    return attrs.evolve(event, raw=raw)


def parse_webhook(
    body: bytes | str | Mapping[str, object],
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebhookEvent:
    """
    Parse one webhook body (JSON text, or an already decoded object) into a typed event.

    *kind* is a `WebhookKind` value; without it the kind is recognised from the body's keys. Pass the
    request *headers* to fill `ChatbotSessionEndEvent.signature` (which is not verified here).

    Raises:
        DecodeError: the body is not a JSON object, or does not fit the model of its kind;
            *field_path* names the field, e.g. `body.rows[0].nodetask_id`.
        ValueError: *kind* is not a `WebhookKind` value.
    """
    check_kind(kind)
    return parse_object(decode_body(body), kind=kind, headers=headers)


def dedupe_key(kind: str, data: Mapping[str, object], body: bytes) -> bytes:
    """
    Digest a delivery by kind and canonical JSON (sorted keys), so a re-serialised retry still matches.
    """
    try:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    except RecursionError:  # pragma: no cover - defensive: json.dumps nests about as deep as json.loads
        canonical = body
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    digest.update(b"\0")
    digest.update(canonical)
    return digest.digest()

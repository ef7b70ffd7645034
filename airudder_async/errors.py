"""
Every error this library raises on purpose.

```
AirudderError
├── TransportError              no usable answer: connect, DNS, dropped connection
│   └── RequestTimeoutError     an attempt or a call deadline ran out (also a TimeoutError)
├── APIError                    the API answered and refused: non-2xx, or an envelope whose code is not 200
│   ├── AuthenticationError     401/403, or APPKey/APPSecret refused
│   ├── NotFoundError           404
│   ├── InvalidRequestError     another 4xx (or an envelope code in 400..499)
│   ├── RateLimitedError        429 (retry_after in seconds when the server said)
│   └── ServerError             5xx (or an envelope code >= 500)
├── DecodeError                 the answer was not JSON, its data did not fit the model, or a webhook
│   │                           body did not fit its event
│   └── ResponseTooLargeError   the answer outgrew `Limits.max_response_size` (after decompression)
├── CoordinationError           the shared store (Redis) failed or answered out of shape
└── SyncError                   a mirror database (`airudder_async.sync`) cannot be opened or written
    ├── DatabaseLockedError     another writer holds it (another sync, or a long write transaction)
    └── SchemaVersionError      it was made by a newer airudder-async: nothing is written
```

Errors raised by a workflow walk also carry `cursor`, a `Cursor` that resumes the walk exactly where it
stopped. Programmer mistakes (bad arguments) raise `ValueError`/`TypeError`/`RuntimeError` instead,
before anything is sent. No error ever contains the APPSecret or the token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Cursor

__all__ = [
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
]


def _restore(cls: type[AirudderError], args: tuple[object, ...], state: dict[str, Any]) -> AirudderError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class AirudderError(Exception):
    """
    The root of every error raised by airudder_async.

    *method* and *path* name the call that failed when there was one; *cursor* is set on errors that
    end a workflow walk.
    """

    message: str
    method: str | None
    path: str | None
    cursor: Cursor | None

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.cursor = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))

    def _where(self) -> str:
        if self.method and self.path:
            return f"{self.method} {self.path}: "
        return ""

    def __str__(self) -> str:
        return f"{self._where()}{self.message}"


class TransportError(AirudderError):
    """
    No usable answer arrived: the connection failed, DNS failed, or the answer was cut off.
    """


class RequestTimeoutError(TransportError, TimeoutError):
    """
    An attempt, or the whole call's deadline, ran out of time.
    """


class APIError(AirudderError):
    """
    The API refused the call: a non-2xx status, or an envelope whose `code` is not 200.

    *status* is the HTTP status, *code* and *envelope_status* the body's `code` and `status` when the
    body had them, *body* the decoded body with secrets redacted (text when it was not JSON), and
    *retry_after* the wait a `Retry-After` header asked for, in seconds, when there was one.
    """

    status: int
    code: int | None
    envelope_status: str | None
    body: object
    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        envelope_status: str | None = None,
        body: object = None,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.status = status
        self.code = code
        self.envelope_status = envelope_status
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.envelope_status is not None:
            parts.append(f"status {self.envelope_status!r}")
        return f"{self._where()}{', '.join(parts)}: {self.message}"


class AuthenticationError(APIError):
    """
    The credentials or the token were refused (401/403).
    """


class NotFoundError(APIError):
    """
    The path or the object does not exist (404).
    """


class InvalidRequestError(APIError):
    """
    The API rejected the request as malformed (a 4xx other than 401, 403, 404 and 429).
    """


class RateLimitedError(APIError):
    """
    The API asked the client to slow down (429) and retries did not help.

    *retry_after* is the wait the server asked for, in seconds, when it said.
    """

    def __str__(self) -> str:
        base = super().__str__()
        if self.retry_after is not None:
            return f"{base} (retry after {self.retry_after:g} s)"
        return base


class ServerError(APIError):
    """
    The API failed on its side (5xx) and retries did not help.
    """


class DecodeError(AirudderError):
    """
    The answer could not be read: it was not JSON, not an envelope, or its data did not fit the model.

    *field_path* names the offending field when one is known, for example `data.lists[3].create_time`.
    """

    field_path: str | None

    def __init__(
        self,
        message: str,
        *,
        field_path: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.field_path = field_path


class ResponseTooLargeError(DecodeError):
    """
    The answer grew past *limit* bytes (`Limits.max_response_size`, counted after decompression).

    It is not retried: the same request would bring the same answer. Raise the limit if it is genuine.
    """

    limit: int

    def __init__(
        self, message: str, *, limit: int, method: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.limit = limit


class CoordinationError(AirudderError):
    """
    The store that coordinates clients of one account (Redis) failed: it could not be reached in time
    (raised only with `on_unavailable="fail"`; `"local"` falls back instead), or it answered with an
    error or a value out of shape or bounds (raised in both modes: a corrupt shared state is not
    papered over). The attempt that got it was not sent (after a 429: not retried). *operation* names
    what was being shared (`"rate budget"`, `"token"`, `"webhook dedupe"`).
    """

    operation: str

    def __init__(
        self, message: str, *, operation: str, method: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.operation = operation


class SyncError(AirudderError):
    """
    A mirror database cannot be opened, read or written (a bad path, refused credentials, a missing extra).

    The message names the database with any password replaced by `***`.
    """


class DatabaseLockedError(SyncError):
    """
    Another writer holds the mirror database: another sync of it, or a long write transaction.
    """


class SchemaVersionError(SyncError):
    """
    The mirror database has a schema version this airudder-async does not know; nothing was written.

    *found* is the database's version, *supported* the newest this library writes.
    """

    found: int
    supported: int

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported

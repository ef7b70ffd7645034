"""
APPKey/APPSecret -> token (POST /service/cloud/auth): the auth request, the cache, one shared refresh.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from ._protocol import Response
from .errors import AirudderError, AuthenticationError, DecodeError

if TYPE_CHECKING:
    from .coordination import TokenStore

__all__ = [
    "AUTH_PATH",
    "TOKEN_LIFETIME",
    "TOKEN_REFRESH_MARGIN",
    "TokenCache",
    "auth_body",
    "is_fresh",
    "token_fetcher",
    "token_from",
]

AUTH_PATH = "/service/cloud/auth"
TOKEN_LIFETIME = 24 * 3600.0  # documented: a token is valid for 24 hours
TOKEN_REFRESH_MARGIN = 15 * 60.0  # renew this long before the 24 h end


def auth_body(app_key: str, app_secret: str) -> dict[str, str]:
    """The JSON body of the auth request (field names as documented)."""
    return {"APPKey": app_key, "APPSecret": app_secret}


def token_from(data: object) -> str:
    """
    Return the token of an auth answer's `data`, or raise `DecodeError` when it has none.
    """
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise DecodeError("auth answer has no token", field_path="data.token", method="POST", path=AUTH_PATH)
    return token


PostJSON = Callable[[str, object], Awaitable[Response]]  # (path, json body) -> the successful answer


def token_fetcher(post: PostJSON, *, app_key: str, app_secret: str) -> Callable[[], Awaitable[str]]:
    """
    Return the *fetch* callable a `TokenCache` needs: one auth request through *post*, then the token.

    A refused pair becomes an `AuthenticationError` that says so (the body is kept, already redacted).
    """
    body = auth_body(app_key, app_secret)

    async def fetch() -> str:
        refused: AuthenticationError | None = None
        try:
            response = await post(AUTH_PATH, body)
        except AuthenticationError as exc:
            refused = AuthenticationError(
                "the APPKey/APPSecret pair was refused; check the credentials",
                status=exc.status,
                code=exc.code,
                envelope_status=exc.envelope_status,
                body=exc.body,
                method="POST",
                path=AUTH_PATH,
            )
        if refused is not None:
            raise refused  # outside the except block: no chained context
        return token_from(response.data)

    return fetch


def is_fresh(obtained_at: float, now: float, *, lifetime: float, margin: float) -> bool:
    """
    Tell whether a token obtained at *obtained_at* may still be used at *now*.
    """
    return now - obtained_at < lifetime - margin


class TokenCache:
    """
    Holds the current token; one refresh at a time, shared by everyone waiting for it.

    *fetch* performs the auth call and returns the token. A failed fetch is reported (as a copy, so each
    caller may annotate its own) to every caller that was already waiting when it ended: a wave of
    concurrent callers with bad credentials costs one auth request, not one each.

    With a *store* (`coordination.TokenStore`), a missing or refused token is looked up there first, and
    fetched through it, so every client sharing the store makes one auth request between them.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        lifetime: float = TOKEN_LIFETIME,
        margin: float = TOKEN_REFRESH_MARGIN,
        store: TokenStore | None = None,
    ) -> None:
        self._store = store
        self._refused: str | None = None  # refused here, not yet invalidated in the store
        self._fetch = fetch
        self._clock = clock
        self._lifetime = lifetime
        self._margin = margin
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._obtained_at = 0.0
        self._completed = 0  # fetches that ended, successfully or not
        self._failure: AirudderError | None = None
        self._successes = 0
        self.fetches = 0
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"<TokenCache has_token={self._token is not None}>"

    @property
    def token(self) -> str | None:
        """The last token obtained, fresh or not (for scrubbing it from errors); None before the first."""
        return self._token

    def _current(self) -> str | None:
        if self._token is not None and is_fresh(
            self._obtained_at, self._clock(), lifetime=self._lifetime, margin=self._margin
        ):
            return self._token
        return None

    async def get(self) -> str:
        """
        Return a fresh token, fetching one when there is none or it is about to expire.
        """
        token = self._current()
        if token is not None:
            return token
        completed = self._completed
        async with self._lock:
            token = self._current()
            if token is not None:
                return token
            failure = self._failure
            if self._completed != completed and failure is not None:
                # A fetch ended in failure while we waited: share it rather than ask again.
                raise copy.copy(failure) from failure
            self._failure = None
            if self._store is not None:
                return await self._from_store(self._store)
            self.fetches += 1
            try:
                token = await self._fetch()
            except AirudderError as exc:
                self._failure = exc
                self._completed += 1
                raise
            self._completed += 1
            if self._successes:
                self.refreshes += 1
            self._successes += 1
            self._token, self._obtained_at = token, self._clock()
            return token

    async def _from_store(self, store: TokenStore) -> str:
        """The shared token, fetched through *store* when it has none (under the local lock)."""
        try:
            if self._refused is not None:
                await store.invalidate(self._refused)
                self._refused = None
            shared = await store.get()
            if shared is None:
                shared = await store.obtain(self._counted_fetch, lifetime=self._lifetime - self._margin)
        except AirudderError as exc:
            self._failure = exc
            self._completed += 1
            raise
        self._completed += 1
        token, valid_for = shared
        # Fresh here for as long as it is in the store: is_fresh() counts from the time obtained.
        self._token, self._obtained_at = token, self._clock() - (self._lifetime - self._margin - valid_for)
        return token

    async def _counted_fetch(self) -> str:
        self.fetches += 1
        token = await self._fetch()
        if self._successes:
            self.refreshes += 1
        self._successes += 1
        return token

    def invalidate(self, refused: str) -> None:
        """
        Forget *refused* after the API rejected it; a newer token obtained meanwhile is kept.
        """
        if self._token == refused:
            self._token = None
            if self._store is not None:
                self._refused = refused

"""
APPKey/APPSecret -> token (POST /service/cloud/auth), cached and shared by every concurrent caller.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from .errors import AirudderError

__all__ = ["AUTH_PATH", "TOKEN_LIFETIME", "TOKEN_REFRESH_MARGIN", "TokenCache", "is_fresh"]

AUTH_PATH = "/service/cloud/auth"
TOKEN_LIFETIME = 24 * 3600.0  # documented: a token is valid for 24 hours
TOKEN_REFRESH_MARGIN = 15 * 60.0  # renew this long before the 24 h end


def is_fresh(obtained_at: float, now: float, *, lifetime: float, margin: float) -> bool:
    """
    Tell whether a token obtained at *obtained_at* may still be used at *now*.
    """
    return now - obtained_at < lifetime - margin


class TokenCache:
    """
    Holds the current token; one refresh at a time, shared by everyone waiting for it.

    *fetch* performs the auth call and returns the token. A failed fetch is reported to every caller that
    was waiting for it, so bad credentials cost one auth request, not one per waiting caller.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        lifetime: float = TOKEN_LIFETIME,
        margin: float = TOKEN_REFRESH_MARGIN,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lifetime = lifetime
        self._margin = margin
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._obtained_at = 0.0
        self._generation = 0  # bumped by every fetch attempt
        self._failure: AirudderError | None = None
        self._successes = 0
        self.fetches = 0
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"<TokenCache has_token={self._token is not None}>"

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
        generation = self._generation
        async with self._lock:
            token = self._current()
            if token is not None:
                return token
            if self._generation != generation and self._failure is not None:
                raise self._failure  # the fetch we waited for failed: don't ask again
            self._generation += 1
            self.fetches += 1
            try:
                token = await self._fetch()
            except AirudderError as exc:
                self._failure = exc
                raise
            self._failure = None
            if self._successes:
                self.refreshes += 1
            self._successes += 1
            self._token, self._obtained_at = token, self._clock()
            return token

    def invalidate(self, refused: str) -> None:
        """
        Forget *refused* after the API rejected it; a newer token obtained meanwhile is kept.
        """
        if self._token == refused:
            self._token = None

    @property
    def has_token(self) -> bool:
        """Tell whether a token is cached (fresh or not)."""
        return self._token is not None

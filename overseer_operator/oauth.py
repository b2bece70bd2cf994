"""OAuth2 client-credentials tokens for the Manager, obtained the way the legacy auth client does.

The token request is a POST with a JSON body (not the form body of RFC 6749) and JSON
Accept/Content-Type headers; only a 200 counts as success; ``expires_in`` is measured from the
moment the request started; a token is shared per (login_url, client_id, secret) and reused
while more than 30 s of its life remain. Unlike the legacy client, a failed login raises instead
of yielding an empty token, so no request ever goes out with an empty bearer.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass

import httpx

REUSE_MARGIN = 30.0  # seconds of life a cached token must still have to be reused

Clock = Callable[[], float]
_Key = tuple[str, str, str]  # (login_url, client_id, digest of the secret)


class TokenError(Exception):
    """No token could be obtained."""


class OAuthError(TokenError):
    """The token endpoint answered without a token: credentials refused, or a server error."""

    def __init__(self, login_url: str, status: int, reason: str) -> None:
        super().__init__(f"token request to {login_url} failed: HTTP {status} ({reason})")
        self.status = status


class OAuthTransportError(TokenError):
    """The token endpoint could not be reached, or did not answer in time."""


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # on the token source's clock


class TokenCache:
    """Tokens shared by every :class:`TokenSource` given the same cache.

    One cache per operator lets several exchanges that use the same Manager credentials share
    one token, as the legacy per-(url, client_id) store did.
    """

    def __init__(self) -> None:
        self._tokens: dict[_Key, _Token] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}

    def get(self, key: _Key) -> _Token | None:
        return self._tokens.get(key)

    def put(self, key: _Key, token: _Token) -> None:
        self._tokens[key] = token

    def discard(self, key: _Key, value: str) -> None:
        """Forget the token, unless another caller has already replaced it."""
        cached = self._tokens.get(key)
        if cached is not None and cached.value == value:
            del self._tokens[key]

    def lock(self, key: _Key) -> asyncio.Lock:
        """One token request at a time per key, so concurrent callers share its result."""
        return self._locks.setdefault(key, asyncio.Lock())


class TokenSource:
    """Hands out a valid access token for one client, requesting a new one when needed."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        login_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        clock: Clock = time.monotonic,
        cache: TokenCache | None = None,
    ) -> None:
        self._http = http
        self._login_url = login_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = timeout
        self._clock = clock
        self._cache = cache if cache is not None else TokenCache()
        # The legacy cache key, plus a digest of the secret: a wrong secret must never ride on
        # a token that another exchange obtained with the right one.
        digest = hashlib.sha256(client_secret.encode()).hexdigest()[:16]
        self._key = (login_url, client_id, digest)

    async def token(self) -> str:
        """A non-empty access token; raises :class:`TokenError` when none can be had."""
        cached = self._reusable()
        if cached is not None:
            return cached
        async with self._cache.lock(self._key):
            cached = self._reusable()  # another caller may have fetched one meanwhile
            if cached is not None:
                return cached
            token = await self._request_token()
            self._cache.put(self._key, token)
            return token.value  # used once even if it has less than REUSE_MARGIN left

    def invalidate(self, token: str) -> None:
        """Stop reusing ``token`` (the Manager refused it); the next call fetches a new one."""
        self._cache.discard(self._key, token)

    def _reusable(self) -> str | None:
        cached = self._cache.get(self._key)
        if cached is not None and cached.expires_at - self._clock() > REUSE_MARGIN:
            return cached.value
        return None

    async def _request_token(self) -> _Token:
        started = self._clock()
        try:
            response = await self._http.post(
                self._login_url,
                json={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                },
                headers={"Accept": "application/json", "Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise OAuthTransportError(
                f"token request to {self._login_url} timed out after {self._timeout} s"
            ) from exc
        except httpx.TransportError as exc:
            raise OAuthTransportError(
                f"token request to {self._login_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code != 200:
            raise OAuthError(self._login_url, response.status_code, response.reason_phrase)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        access_token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise OAuthError(self._login_url, 200, "the response carries no access_token")
        return _Token(access_token, started + _seconds(payload.get("expires_in")))


def _seconds(value: object) -> float:
    """``expires_in`` as seconds; anything unusable means the token is not reused."""
    if isinstance(value, bool):
        return 0.0
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0


class ManagerAuth(httpx.Auth):
    """Adds the Manager's ``Authorization: Bearer access_token=<t>`` header.

    On a 401 it drops the refused token and retries once with a fresh one; the caller sees a
    second 401 as it is.
    """

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("ManagerAuth needs an httpx.AsyncClient")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._tokens.token()
        request.headers["Authorization"] = f"Bearer access_token={token}"
        response = yield request
        if response.status_code == 401:
            self._tokens.invalidate(token)
            request.headers["Authorization"] = f"Bearer access_token={await self._tokens.token()}"
            yield request

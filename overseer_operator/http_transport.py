"""The transport under the Manager client: httpx's API on aiohttp's connection pool.

httpx stays the client (timeouts, the auth flow, ``httpx.Response``, ``MockTransport`` in tests);
the bytes go through aiohttp (kopf's HTTP client, so already here), whose parser is compiled and
whose pool hands a request a connection without polling every idle one first, as httpcore's
does. ``python -m benchmarks.manager_writes`` measures what that saves on each write.

The adapter is ours, not the ``httpx-aiohttp`` package's: that one re-parses the URL httpx
built (aiohttp then decodes ``%3A`` and its kin on the wire) and reports a refused connection as
a timeout. Here the URL goes out as httpx encoded it, and each failure becomes the httpx error
for what happened.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import aiohttp
import httpx
from yarl import URL

MAX_CONNECTIONS = 100  # httpx's default max_connections and keep-alive expiry, per client
KEEPALIVE_EXPIRY = 5.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one ``aiohttp.ClientSession``, TLS verified with ``verify``.

    Bodies are read whole (the Manager's answers are JSON documents); proxies from the
    environment stay httpx's own mounts, as with its default transport."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        with _as_httpx_errors():
            async with self._open().request(
                request.method,
                URL(str(request.url), encoded=True),  # as httpx encoded it, byte for byte
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),  # aiohttp's includes waiting for the pool
                ),
            ) as answer:
                content = await answer.read()
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            content=content,  # still encoded: httpx decodes it, as it asked for it
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        # Made at the first request: a session belongs to the event loop that runs it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._verify, limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_EXPIRY
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies, if any
            )
        return self._session


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as error:
        raise _httpx_error(error) from error


def _httpx_error(error: aiohttp.ClientError) -> httpx.TransportError:
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(error, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, unresolvable, TLS refused
        return httpx.ConnectError(message)
    if isinstance(error, aiohttp.ClientOSError | aiohttp.ClientPayloadError):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)  # hung up before answering, or not HTTP at all

"""The operator's client for the OpenAperture Manager REST API (the routes the Overseer uses).

Every call carries the legacy headers (JSON Accept/Content-Type, ``Bearer access_token=<t>``)
and is retried with exponential backoff and full jitter on 5xx, 429 and transport errors; a 401
gets one retry with a fresh token. Failures surface as a small hierarchy that callers catch by
meaning: :class:`ManagerUnauthorized`, :class:`ManagerUnavailable`, :class:`ManagerRejected`.
No message ever contains the client secret or a token.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from overseer_operator import __version__, defaults
from overseer_operator.backoff import Backoff, Sleep
from overseer_operator.http_transport import AiohttpTransport
from overseer_operator.oauth import (
    Clock,
    ManagerAuth,
    OAuthError,
    OAuthTransportError,
    TokenCache,
    TokenSource,
)

logger = logging.getLogger(__name__)


class ManagerError(Exception):
    """A Manager call failed."""


class ManagerUnauthorized(ManagerError):
    """The OAuth server refused the client credentials, or the Manager refused a fresh token."""


class ManagerUnavailable(ManagerError):
    """The Manager (or its OAuth server) was unreachable or failing, through every retry."""


class ManagerRejected(ManagerError):
    """The Manager refused the request with a 4xx other than 401 (e.g. 404, 400)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"{method} {path}: HTTP {status}{detail}")
        self.status = status
        self.message = message


class UnsafePathSegment(ManagerRejected):
    """A value that cannot stand as one URL path segment ("", "." or ".."); nothing was sent.

    A ``ManagerRejected``, since, as with a 4xx, retrying cannot help (status 0: never sent)."""

    def __init__(self, value: str) -> None:
        ManagerError.__init__(self, f"{value!r} cannot be a Manager URL path segment; not sent")
        self.status = 0
        self.message = str(self)


@dataclass(frozen=True)
class ManagerSettings:
    url: str
    login_url: str
    client_id: str
    client_secret: str = field(repr=False)
    ca_bundle: str | None = None  # path to a PEM CA bundle; None: the system's trust store
    ca_data: str | None = field(default=None, repr=False)  # PEM text, e.g. from a Secret
    timeout: float = defaults.MANAGER_TIMEOUT  # seconds, per attempt
    max_attempts: int = 4

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.ca_bundle is not None and "-----BEGIN" in self.ca_bundle:
            raise ValueError("ca_bundle is a file path; pass PEM text as ca_data")


@dataclass(frozen=True)
class ModuleRecord:
    hostname: str
    type: str
    status: str
    workload: Any
    updated_at: datetime | None  # UTC; None when missing or unparseable


@dataclass(frozen=True)
class ExchangeRecord:
    id: str
    name: str
    routing_key: str
    root_exchange_name: str


@dataclass(frozen=True)
class BrokerRecord:
    id: str
    name: str
    failover_broker_id: str | None


@dataclass(frozen=True)
class BrokerConnection:
    username: str
    password: str = field(repr=False)
    host: str
    port: int | None
    virtual_host: str | None

    def url(self) -> str:
        """``amqp://user:pass@host:port/vhost``, escaped; it holds the password, never log it."""
        credentials = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        vhost = f"/{quote(self.virtual_host, safe='')}" if self.virtual_host is not None else ""
        return f"amqp://{credentials}@{host}{port}{vhost}"


def parse_manager_timestamp(value: object) -> datetime | None:
    """Parse the Manager's RFC 1123 timestamps (``Tue, 23 Jun 2015 19:39:11 UTC``) into UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    return _parse_rfc1123(value)


# A listing's rows share their seconds (a fleet refreshed every 5 minutes writes hundreds of rows
# a second), and email.utils takes 12 us a row: a restart read 100,000 of them.
@functools.lru_cache(maxsize=1024)
def _parse_rfc1123(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: the Manager writes UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def verifying_context(ca_bundle: str | None, ca_data: str | None) -> ssl.SSLContext:
    """The TLS context for a CA bundle (a file, PEM text, or neither: the system's), shared.

    Each context loads its trust store (about 0.9 MiB with the system's): one per exchange's
    client was most of an idle exchange's memory. A bundle file changed on disk gets a new one.
    """
    changed = os.stat(ca_bundle).st_mtime_ns if ca_bundle else None
    return _shared_context(ca_bundle, ca_data, changed)


@functools.lru_cache(maxsize=32)
def _shared_context(
    ca_bundle: str | None, ca_data: str | None, changed: int | None
) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle, cadata=ca_data)


class ManagerClient:
    """Async client for one Manager; owns one ``httpx.AsyncClient`` (use ``async with``)."""

    def __init__(
        self,
        settings: ManagerSettings,
        *,
        token_cache: TokenCache | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,  # None: aiohttp; tests: MockTransport
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        verify = verifying_context(settings.ca_bundle, settings.ca_data)
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"overseer-operator/{__version__}",
            },
            timeout=httpx.Timeout(settings.timeout),
            verify=verify,
            transport=transport or AiohttpTransport(verify),
        )
        self._auth = ManagerAuth(
            TokenSource(
                self._http,
                settings.login_url,
                settings.client_id,
                settings.client_secret,
                timeout=settings.timeout,
                clock=clock,
                cache=token_cache,
            )
        )

    @property
    def settings(self) -> ManagerSettings:
        return self._settings

    async def __aenter__(self) -> ManagerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- exchange modules ------------------------------------------------------------------

    async def list_modules(self, exchange_id: str) -> list[ModuleRecord]:
        path = f"{_exchange_path(exchange_id)}/modules"
        rows = _json(await self._request("GET", path), "GET", path)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ManagerError(f"GET {path}: expected a list of modules")
        return [
            ModuleRecord(
                hostname=str(row.get("hostname", "")),
                type=str(row.get("type", "")),
                status=str(row.get("status", "")),
                workload=row.get("workload"),
                updated_at=parse_manager_timestamp(row.get("updated_at")),
            )
            for row in rows
        ]

    async def upsert_module(
        self,
        exchange_id: str,
        hostname: str,
        module_type: str,
        status: str,
        workload: list[Any],
    ) -> None:
        """Replace every row of ``hostname`` with a fresh one (the Manager deletes, inserts)."""
        await self._request(
            "POST",
            f"{_exchange_path(exchange_id)}/modules",
            json={
                "hostname": hostname,
                "type": module_type,
                "status": status,
                "workload": workload,
            },
        )

    async def delete_module(self, exchange_id: str, hostname: str) -> bool:
        """True if rows were deleted, False if there were none (already gone is success)."""
        path = f"{_exchange_path(exchange_id)}/modules/{_segment(hostname)}"
        response = await self._request("DELETE", path, also_ok=(404,))
        return response.status_code != 404

    # --- exchanges and brokers -------------------------------------------------------------

    async def get_exchange(self, exchange_id: str) -> ExchangeRecord:
        path = _exchange_path(exchange_id)
        record = _json_object(await self._request("GET", path), "GET", path)
        return ExchangeRecord(
            id=_id(record.get("id")) or exchange_id,
            name=str(record.get("name") or ""),
            routing_key=str(record.get("routing_key") or ""),
            root_exchange_name=str(record.get("root_exchange_name") or ""),
        )

    async def get_broker(self, broker_id: str) -> BrokerRecord:
        path = f"/messaging/brokers/{_segment(broker_id)}"
        record = _json_object(await self._request("GET", path), "GET", path)
        return BrokerRecord(
            id=_id(record.get("id")) or broker_id,
            name=str(record.get("name") or ""),
            failover_broker_id=_id(record.get("failover_broker_id")),
        )

    async def list_broker_connections(self, broker_id: str) -> list[BrokerConnection]:
        path = f"/messaging/brokers/{_segment(broker_id)}/connections"
        rows = _json(await self._request("GET", path), "GET", path)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ManagerError(f"GET {path}: expected a list of connections")
        return [
            BrokerConnection(
                username=str(row.get("username") or ""),
                password=str(row.get("password") or ""),
                host=str(row.get("host") or ""),
                port=int(row["port"]) if str(row.get("port")).isdigit() else None,
                virtual_host=_optional_str(row.get("virtual_host")),
            )
            for row in rows
        ]

    # --- transport -------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        also_ok: Collection[int] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx (or ``also_ok``) response, else raise ManagerError."""
        attempts = self._settings.max_attempts
        backoff = self._new_backoff()
        for attempt in range(1, attempts + 1):
            try:
                response = await self._http.request(method, path, json=json, auth=self._auth)
            except OAuthError as exc:
                if 400 <= exc.status < 500 and exc.status != 429:
                    raise ManagerUnauthorized(
                        f"{method} {path}: the OAuth server refused the client credentials"
                        f" (HTTP {exc.status})"
                    ) from exc
                failure = str(exc)
            except OAuthTransportError as exc:
                failure = str(exc)
            except httpx.TimeoutException:
                failure = f"no answer within {self._settings.timeout} s"
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300 or status in also_ok:
                    return response
                if status == 401:
                    raise ManagerUnauthorized(
                        f"{method} {path}: HTTP 401 even with a freshly issued token"
                    )
                if not _retryable(status):
                    raise ManagerRejected(method, path, status, _error_message(response))
                failure = f"HTTP {status}"
            if attempt == attempts:
                break
            delay = backoff.next_delay()
            logger.warning(
                "Manager %s %s failed (%s); attempt %d of %d in %.2f s",
                method,
                path,
                failure,
                attempt + 1,
                attempts,
                delay,
            )
            await self._sleep(delay)
        raise ManagerUnavailable(f"{method} {path} failed after {attempts} attempts: {failure}")

    def _new_backoff(self) -> Backoff:
        return Backoff(self._backoff_base, self._backoff_max, jitter=self._jitter)


def _exchange_path(exchange_id: str) -> str:
    return f"/messaging/exchanges/{_segment(exchange_id)}"


def _segment(value: str) -> str:
    """``value`` as exactly one path segment: the one way every id and hostname enters a path.

    Everything but RFC 3986's unreserved characters is percent-encoded, so "/", "?", "#", "%"
    and "\\" cannot act; "", "." and "..", which httpx, proxies and servers resolve to another
    route (DELETE .../modules/.. would delete the exchange), are refused."""
    if value in ("", ".", ".."):
        raise UnsafePathSegment(value)
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # a lone surrogate: not text any server could match
        raise UnsafePathSegment(value) from None


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _id(value: object) -> str | None:
    """The Manager's integer ids as strings, the way the operator's spec carries them."""
    return None if value is None or value == "" else str(value)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _json(response: httpx.Response, method: str, path: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ManagerError(f"{method} {path}: the response is not JSON") from exc


def _json_object(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    payload = _json(response, method, path)
    if not isinstance(payload, dict):
        raise ManagerError(f"{method} {path}: expected a JSON object")
    return payload


def _error_message(response: httpx.Response) -> str:
    """The Manager's ``{"errors": [{"message": ...}, {field: msg}]}`` as one line, else the text."""
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:200]
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return response.text.strip()[:200]
    parts: list[str] = []
    for error in errors:
        if isinstance(error, dict):
            parts.extend(
                str(text) if key == "message" else f"{key}: {text}" for key, text in error.items()
            )
        else:
            parts.append(str(error))
    return "; ".join(parts)[:500]

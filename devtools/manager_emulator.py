"""An OpenAperture Manager emulator: a real HTTP server for tests and the local demo.

It serves the part of the Manager's REST API that the Overseer uses, with the Manager's own
semantics (see ``openaperture-protocol.md`` sections 2 to 4), plus its OAuth2 token endpoint:

- ``POST /oauth/token``: JSON body ``{"grant_type": "client_credentials", "client_id",
  "client_secret"}`` → 200 ``{"access_token", "token_type", "expires_in"}``; 401 for unknown
  credentials; 400 for a body that is not a JSON object (form-encoded bodies are refused).
- ``GET /status`` needs no token. Every other route needs ``Authorization: Bearer <t>`` or
  ``Bearer access_token=<t>`` with a valid, unexpired token, else 401 ``Unauthorized``.
- ``GET /messaging/exchanges/:id`` (with the computed ``routing_key`` and ``root_exchange_name``).
- ``GET|POST /messaging/exchanges/:id/modules`` and
  ``GET|DELETE /messaging/exchanges/:id/modules/:hostname``.
  POST deletes every row with that hostname in the exchange, then inserts a new one (so
  ``updated_at`` is reset) and answers 201 with a ``Location`` header and an empty body.
- ``GET /messaging/brokers/:id`` and ``GET /messaging/brokers/:id/connections``.

In-process tests drive it through :class:`ManagerEmulator`. Out of process (the operator's e2e
tests, the README demo) it runs as::

    python -m devtools.manager_emulator --port 8090 \\
        --client-id overseer --client-secret S \\
        --exchange 2:aws:aws --exchange 1:aws%3Aus-east-1:us-east-1:2 \\
        --broker 1:rabbit --broker-connection 1:amqp://user:pass@127.0.0.1:5672/%2F

Fields of ``--exchange ID:NAME:FRAGMENT[:PARENT]`` and ``--broker ID:NAME[:FAILOVER]`` are split
on ":"; write a ":" inside a field as ``%3A``. It prints its base URL on stdout once it listens
(useful with ``--port 0``) and logs one line per request on stderr. These unauthenticated
control endpoints (never recorded, never faulted) drive it:

- ``GET /_emulator/requests`` (recorded requests as JSON), ``DELETE /_emulator/requests``.
- ``GET /_emulator/modules/:exchange_id``: the rows as the Manager's GET returns them.
- ``POST /_emulator/modules/:exchange_id`` ``{hostname, type, status, workload?, updated_at?}``
  appends a row; ``updated_at`` is RFC 3339 (e.g. ``2015-06-23T19:39:11Z``).
- ``POST /_emulator/faults`` ``{"kind": "fail", "count", "status"?, "method"?, "path_prefix"?}``
  or ``{"kind": "delay", "count", "seconds", "method"?, "path_prefix"?}``;
  ``DELETE /_emulator/faults`` clears every fault and the unavailability.
- ``PUT /_emulator/unavailable`` ``{"unavailable": true|false}``: every call 503 while true.
- ``POST /_emulator/revoke-tokens``; ``PUT /_emulator/clients/:client_id`` ``{"secret"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

logger = logging.getLogger(__name__)

_REQUIRED_MODULE_FIELDS = ("hostname", "type", "status", "workload")
_OPTIONAL_MODULE_FIELDS = (
    "source_repo",
    "source_repo_git_ref",
    "deployment_repo",
    "deployment_repo_git_ref",
)
_INVALID_MODULE = "One or more fields for MessagingExchangeModule were invalid"
_BEARER = re.compile(r"^bearer\s+(?:access_token=)?(\S+)\s*$", re.IGNORECASE)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc1123(moment: datetime) -> str:
    """Format like the Manager's FormatHelper: ``Tue, 23 Jun 2015 19:39:11 UTC``."""
    utc = moment.astimezone(UTC)
    return (
        f"{_DAYS[utc.weekday()]}, {utc.day:02d} {_MONTHS[utc.month - 1]} {utc.year} "
        f"{utc:%H:%M:%S} UTC"
    )


@dataclass
class RecordedRequest:
    """One request the emulator received (control endpoints excluded)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the decoded JSON body, or None when empty or not JSON
    raw_body: bytes
    time: float  # time.monotonic() on arrival
    status: int | None = None  # set once the response is sent
    client: str | None = None  # the OAuth client whose token the request carried, if valid

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "text": self.raw_body.decode("utf-8", "replace"),
            "time": self.time,
            "status": self.status,
            "client": self.client,
        }


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None: answer normally (after the delay)
    delay: float
    method: str | None
    path_prefix: str | None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path_prefix is None or path.startswith(self.path_prefix))
        )


@dataclass
class _Exchange:
    id: str
    name: str
    routing_key_fragment: str
    parent_id: str | None
    failover_exchange_id: str | None
    inserted_at: datetime


@dataclass
class _Broker:
    id: str
    name: str
    failover_broker_id: str | None
    inserted_at: datetime


@dataclass
class _BrokerConnection:
    id: int
    broker_id: str
    username: str
    password: str
    host: str
    port: int | None
    virtual_host: str
    inserted_at: datetime


@dataclass
class _Module:
    id: int
    exchange_id: str
    hostname: str
    type: str
    status: str
    workload: str  # JSON text, as the Manager stores it
    inserted_at: datetime
    updated_at: datetime
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(status: int, payload: Any, headers: Mapping[str, str] = ()) -> _Response:
    return _Response(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json; charset=utf-8", **dict(headers)},
    )


def _error_response(status: int, message: str) -> _Response:
    return _json_response(status, {"errors": [{"message": message}]})


def _json_id(value: str | None) -> int | str | None:
    """The Manager's ids are database integers; keep non-numeric test ids as strings."""
    return int(value) if value is not None and value.isdigit() else value


def _decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8")) if raw else None


def _json_object(content_type: str, raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (wrong type, bad JSON)."""
    if "json" not in content_type.lower():
        return None
    try:
        payload = _decode_json(raw)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


class ManagerEmulator:
    """The Manager's REST API and OAuth2 token endpoint on a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clients: Mapping[str, str] | None = None,
        token_lifetime: int = 3600,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.token_lifetime = token_lifetime
        self._host = host
        self._port = port
        self._clock = clock  # judges token expiry only; request times are always real
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._clients: dict[str, str] = dict(clients or {})
        self._tokens: dict[str, float] = {}  # token -> expiry on self._clock
        self._token_clients: dict[str, str] = {}  # token -> the client it was issued to
        self._exchanges: dict[str, _Exchange] = {}
        self._brokers: dict[str, _Broker] = {}
        self._connections: list[_BrokerConnection] = []
        # Each exchange's rows by id, in insertion order, and the ids of each (exchange,
        # hostname): a write costs O(1) and a listing O(the exchange's rows), however many rows
        # the other exchanges have, as with the Manager's indexed table (100,000-worker
        # benchmarks; a scan of every row held the lock 25 ms a listing).
        self._modules: dict[str, dict[int, _Module]] = {}
        self._row_ids: dict[tuple[str, str], list[int]] = {}
        self._ids = iter(range(1, sys.maxsize))
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._unavailable = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Response]]] = [
            ("GET", re.compile(r"/messaging/exchanges/([^/]+)"), self._get_exchange),
            ("GET", re.compile(r"/messaging/exchanges/([^/]+)/modules"), self._list_modules),
            ("POST", re.compile(r"/messaging/exchanges/([^/]+)/modules"), self._create_module),
            ("GET", re.compile(r"/messaging/exchanges/([^/]+)/modules/([^/]+)"), self._get_module),
            (
                "DELETE",
                re.compile(r"/messaging/exchanges/([^/]+)/modules/([^/]+)"),
                self._delete_module,
            ),
            ("GET", re.compile(r"/messaging/brokers/([^/]+)"), self._get_broker),
            ("GET", re.compile(r"/messaging/brokers/([^/]+)/connections"), self._get_connections),
        ]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> ManagerEmulator:
        """Listen and serve on a background thread; a restart reuses the port first bound."""
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        server = _Server((self._host, self._port), _Handler, self)
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(0.05,),  # poll interval: how long stop() waits for the loop to notice
            name=f"manager-emulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection (pending delays end at once)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> ManagerEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def login_url(self) -> str:
        return f"{self.url}/oauth/token"

    # --- clients and tokens ----------------------------------------------------------------

    def set_client_secret(self, client_id: str, secret: str) -> None:
        """Accept (or, with a new secret, start refusing) a client's credentials."""
        with self._lock:
            self._clients[client_id] = secret

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._tokens.clear()

    # --- data ------------------------------------------------------------------------------

    def add_exchange(
        self,
        id: str,
        name: str,
        routing_key_fragment: str,
        parent_id: str | None = None,
        failover_exchange_id: str | None = None,
    ) -> None:
        with self._lock:
            self._exchanges[id] = _Exchange(
                id, name, routing_key_fragment, parent_id, failover_exchange_id, _now()
            )

    def add_broker(self, id: str, name: str, failover_broker_id: str | None = None) -> None:
        with self._lock:
            self._brokers[id] = _Broker(id, name, failover_broker_id, _now())

    def add_broker_connection(
        self,
        broker_id: str,
        username: str,
        password: str,
        host: str,
        port: int | None,
        virtual_host: str,
    ) -> None:
        with self._lock:
            self._connections.append(
                _BrokerConnection(
                    next(self._ids),
                    broker_id,
                    username,
                    password,
                    host,
                    port,
                    virtual_host,
                    _now(),
                )
            )

    def remove_broker_connections(self, broker_id: str) -> None:
        """Forget a broker's connection rows (then add the new one: a rotated record)."""
        with self._lock:
            self._connections = [c for c in self._connections if c.broker_id != broker_id]

    def put_module(
        self,
        exchange_id: str,
        hostname: str,
        type: str,
        status: str,
        workload: Any = None,
        updated_at: datetime | None = None,
    ) -> None:
        """Append a row as a database insert would: no delete, so duplicates are possible.

        ``workload`` defaults to ``[]``; ``updated_at`` (default now) lets restart tests seed
        rows that are already stale.
        """
        moment = updated_at or _now()
        with self._lock:
            self._insert(
                _Module(
                    next(self._ids),
                    exchange_id,
                    hostname,
                    type,
                    status,
                    json.dumps([] if workload is None else workload),
                    moment,
                    moment,
                )
            )

    def _insert(self, row: _Module) -> None:
        self._modules.setdefault(row.exchange_id, {})[row.id] = row
        self._row_ids.setdefault((row.exchange_id, row.hostname), []).append(row.id)

    def _remove(self, exchange_id: str, hostname: str) -> int:
        """Delete every row of the hostname in the exchange; how many there were."""
        ids = self._row_ids.pop((exchange_id, hostname), [])
        for row_id in ids:
            del self._modules[exchange_id][row_id]
        return len(ids)

    def modules(self, exchange_id: str) -> list[dict[str, Any]]:
        """The exchange's rows exactly as ``GET .../modules`` would return them."""
        with self._lock:
            rows = list(self._modules.get(exchange_id, {}).values())
        return [_module_json(row) for row in rows]  # rows are never changed, only replaced

    def module_count(self, exchange_ids: set[str]) -> int:
        """How many hostnames have a row in these exchanges (cheap enough to poll)."""
        with self._lock:
            return sum(1 for exchange_id, _ in self._row_ids if exchange_id in exchange_ids)

    # --- recorded requests -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_to(
        self, method: str | None = None, path_prefix: str | None = None
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def token_requests(self) -> list[RecordedRequest]:
        return self.requests_to("POST", "/oauth/token")

    def module_writes(self, exchange_id: str) -> list[RecordedRequest]:
        """POSTs and DELETEs of the exchange's modules, oldest first."""
        prefix = f"/messaging/exchanges/{exchange_id}/modules"
        return [
            r
            for r in self.requests_to(path_prefix=prefix)
            if r.method in ("POST", "DELETE") and (r.path == prefix or r.path[len(prefix)] == "/")
        ]

    # --- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` instead of handling them."""
        with self._lock:
            self._faults.append(_Fault(n, status, 0.0, method, path_prefix))

    def delay_next(
        self,
        n: int,
        seconds: float,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Hold the next ``n`` matching requests for ``seconds``, then handle them normally."""
        with self._lock:
            self._faults.append(_Fault(n, None, seconds, method, path_prefix))

    def set_unavailable(self, unavailable: bool) -> None:
        """While set, every call (token endpoint included) gets 503."""
        with self._lock:
            self._unavailable = unavailable

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._unavailable = False

    # --- request handling ------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Response:
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        if path.startswith("/_emulator/"):
            return self._control(method, path, headers, raw)
        try:
            body = _decode_json(raw)
        except ValueError:
            body = None
        record = RecordedRequest(method, path, split.query, headers, body, raw, time.monotonic())
        bearer = _BEARER.match(headers.get("authorization", ""))
        with self._lock:
            # Which client wrote (several operator replicas, each its own client, in tests).
            record.client = self._token_clients.get(bearer.group(1)) if bearer else None
            self._requests.append(record)
        response = self._faulted_or_handled(method, path, headers, raw)
        record.status = response.status
        return response

    def _faulted_or_handled(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> _Response:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
            unavailable = self._unavailable
        if unavailable:
            return _error_response(503, "Service Unavailable")
        if fault is not None and fault.delay:
            self._stopping.wait(fault.delay)
        if fault is not None and fault.status is not None:
            return _error_response(fault.status, f"injected fault: HTTP {fault.status}")
        return self._route(method, path, headers, raw)

    def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Response:
        if (method, path) == ("POST", "/oauth/token"):
            return self._issue_token(headers.get("content-type", ""), raw)
        if (method, path) == ("GET", "/status"):
            return _json_response(200, {"status": "ok"})
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                if not self._authorized(headers.get("authorization", "")):
                    return _Response(401, b"Unauthorized", {"Content-Type": "text/plain"})
                args = [unquote(group) for group in match.groups()]
                return handler(*args, content_type=headers.get("content-type", ""), raw=raw)
        return _error_response(404, f"no route for {method} {path}")

    def _issue_token(self, content_type: str, raw: bytes) -> _Response:
        payload = _json_object(content_type, raw)
        if payload is None:
            return _json_response(400, {"error": "invalid_request"})
        if payload.get("grant_type") != "client_credentials":
            return _json_response(400, {"error": "unsupported_grant_type"})
        client_id, secret = payload.get("client_id"), payload.get("client_secret")
        with self._lock:
            known = isinstance(client_id, str) and self._clients.get(client_id)
            if not known or secret != known:
                return _json_response(401, {"error": "invalid_client"})
            token = secrets.token_urlsafe(24)
            self._tokens[token] = self._clock() + self.token_lifetime
            self._token_clients[token] = client_id
        return _json_response(
            200, {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}
        )

    def _authorized(self, authorization: str) -> bool:
        match = _BEARER.match(authorization)
        if match is None:
            return False
        with self._lock:
            expiry = self._tokens.get(match.group(1))
            return expiry is not None and expiry > self._clock()

    # --- Manager routes (called with the path parameters, already unquoted) -----------------

    def _get_exchange(self, exchange_id: str, **_: Any) -> _Response:
        with self._lock:
            exchange = self._exchanges.get(exchange_id)
            if exchange is None:
                return _error_response(404, "MessagingExchange was not found")
            chain = self._exchange_chain(exchange)
        return _json_response(
            200,
            {
                "id": _json_id(exchange.id),
                "name": exchange.name,
                "failover_exchange_id": _json_id(exchange.failover_exchange_id),
                "parent_exchange_id": _json_id(exchange.parent_id),
                "routing_key_fragment": exchange.routing_key_fragment,
                "routing_key": ".".join(e.routing_key_fragment for e in reversed(chain)),
                "root_exchange_name": chain[-1].name,
                "inserted_at": rfc1123(exchange.inserted_at),
                "updated_at": rfc1123(exchange.inserted_at),
            },
        )

    def _exchange_chain(self, exchange: _Exchange) -> list[_Exchange]:
        """The exchange and its ancestors, leaf first; a missing parent ends the walk."""
        chain = [exchange]
        while chain[-1].parent_id in self._exchanges:
            parent = self._exchanges[chain[-1].parent_id]  # type: ignore[index]
            if parent in chain:  # a cycle would loop forever in the real Manager
                break
            chain.append(parent)
        return chain

    def _list_modules(self, exchange_id: str, **_: Any) -> _Response:
        with self._lock:
            if exchange_id not in self._exchanges:
                return _Response(404)
            rows = list(self._modules.get(exchange_id, {}).values())
        return _json_response(200, [_module_json(row) for row in rows])

    def _get_module(self, exchange_id: str, hostname: str, **_: Any) -> _Response:
        with self._lock:
            ids = self._row_ids.get((exchange_id, hostname))
            row = self._modules[exchange_id][ids[0]] if ids else None
            if exchange_id not in self._exchanges or row is None:
                return _Response(404)
            return _json_response(200, _module_json(row))

    def _create_module(self, exchange_id: str, *, content_type: str, raw: bytes) -> _Response:
        payload = _json_object(content_type, raw)
        if payload is None:
            return _error_response(400, "An invalid request was made for MessagingExchangeModule")
        invalid = [
            {name: "can't be blank" if payload.get(name) in (None, "") else "is invalid"}
            for name in _REQUIRED_MODULE_FIELDS
            if payload.get(name) in (None, "")
            or (name != "workload" and not isinstance(payload[name], str))
        ]
        with self._lock:
            if exchange_id not in self._exchanges:
                return _Response(404)
            if invalid:
                return _json_response(
                    400,
                    {
                        "errors": [
                            {"message": _INVALID_MODULE},
                            *invalid,
                        ]
                    },
                )
            hostname = payload["hostname"]
            self._remove(exchange_id, hostname)
            moment = _now()
            self._insert(
                _Module(
                    next(self._ids),
                    exchange_id,
                    hostname,
                    payload["type"],
                    payload["status"],
                    json.dumps(payload["workload"]),
                    moment,
                    moment,
                    {name: payload[name] for name in _OPTIONAL_MODULE_FIELDS if name in payload},
                )
            )
        location = f"/messaging/exchanges/{quote(exchange_id, safe='')}/modules/" + quote(
            hostname, safe=""
        )
        return _Response(201, b"", {"Location": location})

    def _delete_module(self, exchange_id: str, hostname: str, **_: Any) -> _Response:
        with self._lock:
            if exchange_id not in self._exchanges or not self._remove(exchange_id, hostname):
                return _Response(404)
        return _Response(204)

    def _get_broker(self, broker_id: str, **_: Any) -> _Response:
        with self._lock:
            broker = self._brokers.get(broker_id)
        if broker is None:
            return _error_response(404, "MessagingBroker was not found")
        return _json_response(
            200,
            {
                "id": _json_id(broker.id),
                "name": broker.name,
                "failover_broker_id": _json_id(broker.failover_broker_id),
                "inserted_at": rfc1123(broker.inserted_at),
                "updated_at": rfc1123(broker.inserted_at),
            },
        )

    def _get_connections(self, broker_id: str, **_: Any) -> _Response:
        with self._lock:
            if broker_id not in self._brokers:
                return _error_response(404, "MessagingBroker was not found")
            rows = [c for c in self._connections if c.broker_id == broker_id]
        return _json_response(
            200,
            [
                {
                    "id": c.id,
                    "messaging_broker_id": _json_id(c.broker_id),
                    "username": c.username,
                    "password": c.password,  # stored encrypted, returned decrypted
                    "host": c.host,
                    "port": c.port,
                    "virtual_host": c.virtual_host,
                    "inserted_at": rfc1123(c.inserted_at),
                    "updated_at": rfc1123(c.inserted_at),
                }
                for c in rows
            ],
        )

    # --- control endpoints -----------------------------------------------------------------

    def _control(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Response:
        parts = [unquote(p) for p in path.split("/")[2:]]
        payload = _json_object(headers.get("content-type", "application/json"), raw) or {}
        try:
            match method, parts:
                case "GET", ["requests"]:
                    return _json_response(200, [r.to_json() for r in self.requests])
                case "DELETE", ["requests"]:
                    self.clear_requests()
                case "GET", ["modules", exchange_id]:
                    with self._lock:
                        known = exchange_id in self._exchanges
                    if not known:
                        return _error_response(404, f"no exchange {exchange_id}")
                    return _json_response(200, self.modules(exchange_id))
                case "POST", ["modules", exchange_id]:
                    updated_at = payload.get("updated_at")
                    self.put_module(
                        exchange_id,
                        payload["hostname"],
                        payload["type"],
                        payload["status"],
                        payload.get("workload", []),
                        datetime.fromisoformat(updated_at) if updated_at else None,
                    )
                    return _Response(201)
                case "POST", ["faults"]:
                    self._add_fault(payload)
                case "DELETE", ["faults"]:
                    self.clear_faults()
                case "PUT", ["unavailable"]:
                    self.set_unavailable(bool(payload["unavailable"]))
                case "POST", ["revoke-tokens"]:
                    self.revoke_tokens()
                case "PUT", ["clients", client_id]:
                    self.set_client_secret(client_id, str(payload["secret"]))
                case _:
                    return _error_response(404, f"no control endpoint {method} {path}")
        except (KeyError, TypeError, ValueError) as exc:
            return _error_response(400, f"bad control request: {exc!r}")
        return _Response(204)

    def _add_fault(self, payload: dict[str, Any]) -> None:
        scope = {"method": payload.get("method"), "path_prefix": payload.get("path_prefix")}
        if payload["kind"] == "fail":
            self.fail_next(int(payload["count"]), int(payload.get("status", 503)), **scope)
        elif payload["kind"] == "delay":
            self.delay_next(int(payload["count"]), float(payload["seconds"]), **scope)
        else:
            raise ValueError(f"unknown fault kind {payload['kind']!r}")


def _now() -> datetime:
    return datetime.now(UTC)


def _module_json(module: _Module) -> dict[str, Any]:
    return {
        "id": module.id,
        "messaging_exchange_id": _json_id(module.exchange_id),
        "hostname": module.hostname,
        "type": module.type,
        "status": module.status,
        "workload": json.loads(module.workload),
        **{name: module.optional.get(name) for name in _OPTIONAL_MODULE_FIELDS},
        "inserted_at": rfc1123(module.inserted_at),
        "updated_at": rfc1123(module.updated_at),
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        emulator: ManagerEmulator,
    ) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(connection)

    def drop_connections(self) -> None:
        """Keep-alive connections would otherwise keep being served after stop()."""
        with self._open_lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, a stopped test) are normal here, not errors.
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        emulator = self.server.emulator
        response = emulator._handle(self.command, self.path, headers, raw)
        if emulator._stopping.is_set():
            self.close_connection = True
            return
        # Path only: queries and headers may carry credentials.
        logger.info("%s %s -> %d", self.command, urlsplit(self.path).path, response.status)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ``_serve`` logs one line per request without the query string."""


# --- command line --------------------------------------------------------------------------


def _fields(spec: str, minimum: int, maximum: int) -> list[str]:
    parts = [unquote(part) for part in spec.split(":")]
    if not minimum <= len(parts) <= maximum:
        raise argparse.ArgumentTypeError(f"{spec!r} needs {minimum} to {maximum} ':'-fields")
    return parts


def _exchange_spec(spec: str) -> list[str]:
    return _fields(spec, 3, 4)


def _broker_spec(spec: str) -> list[str]:
    return _fields(spec, 2, 3)


def _broker_connection_spec(spec: str) -> tuple[str, str, str, str, int | None, str]:
    """``BROKER_ID:amqp://user:pass@host:port/vhost`` → add_broker_connection arguments."""
    broker_id, _, url = spec.partition(":")
    parts = urlsplit(url)
    if not broker_id or parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise argparse.ArgumentTypeError("expected BROKER_ID:amqp://user:pass@host:port/vhost")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return (
        broker_id,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        parts.hostname,
        parts.port,
        vhost,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.manager_emulator",
        description="Serve an emulated OpenAperture Manager (see the module docstring).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--client-id", default="overseer")
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--token-lifetime", type=int, default=3600, help="seconds")
    parser.add_argument(
        "--exchange",
        type=_exchange_spec,
        action="append",
        default=[],
        metavar="ID:NAME:FRAGMENT[:PARENT]",
    )
    parser.add_argument(
        "--broker", type=_broker_spec, action="append", default=[], metavar="ID:NAME[:FAILOVER]"
    )
    parser.add_argument(
        "--broker-connection",
        type=_broker_connection_spec,
        action="append",
        default=[],
        metavar="BROKER_ID:amqp://user:pass@host:port/vhost",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    emulator = ManagerEmulator(
        host=args.host,
        port=args.port,
        clients={args.client_id: args.client_secret},
        token_lifetime=args.token_lifetime,
    )
    for exchange in args.exchange:
        emulator.add_exchange(*exchange)
    for broker in args.broker:
        emulator.add_broker(*broker)
    for connection in args.broker_connection:
        emulator.add_broker_connection(*connection)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with emulator:
        print(emulator.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

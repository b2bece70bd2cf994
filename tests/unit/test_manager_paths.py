"""No hostname, exchange id or broker id steers a Manager call to another route.

Property-based: whatever text a heartbeat or a spec carries, the request httpx actually sends
(captured by a MockTransport as raw bytes, and as the emulator receives it on a real socket)
stays on its route with the value as exactly one path segment, also after the dot segments a
server or proxy would remove (RFC 3986 5.2.4) and after one round of percent-decoding; or the
client refuses it before sending anything."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerRejected,
    ManagerSettings,
    UnsafePathSegment,
)
from tests.fixtures.manager import EXCHANGE_ID

BASE = "https://manager.test/api"
LOGIN = "https://manager.test/oauth/token"

# Text of every kind, plus the values that mean something to a URL parser.
SEGMENTS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Po"]), max_size=8),
    st.text(alphabet="./%2eEfF\\?#;:@ ", max_size=12),
    st.sampled_from(["..", ".", "", "%2e%2e", "%2E.", "..%2f", "a/../..", "/", "?x", "#x"]),
)
SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%")


class Recorder:
    """The Manager at the transport: issues tokens and records every other request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.raw_path == b"/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        self.requests.append(request)
        if request.method == "GET":
            # /api/messaging/{exchanges,brokers}/<id>/{modules,connections}: by the route's
            # shape, as an id may itself be "modules" (one segment fewer: a record).
            segments = request.url.raw_path.split(b"/")
            listing = len(segments) == 6 and segments[-1] in (b"modules", b"connections")
            return httpx.Response(200, json=[] if listing else {})
        return httpx.Response(204)


def unusable(value: str) -> bool:
    """A dot segment, or no text at all (a lone surrogate encodes to nothing a server reads)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return value in (".", "..", "")


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, on a raw path."""
    output: list[bytes] = []
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            if output:
                output.pop()
        elif segment != b".":
            output.append(segment)
    return b"/" + b"/".join(output)


def one_segment(raw_path: bytes, prefix: bytes, suffix: bytes, value: str) -> None:
    """``raw_path`` is ``prefix + <one segment holding value> + suffix``, however it is read."""
    assert raw_path.startswith(prefix) and raw_path.endswith(suffix), raw_path
    segment = raw_path[len(prefix) : len(raw_path) - len(suffix)]
    assert segment, raw_path
    assert set(segment) <= SAFE, segment  # percent-encoded, nothing a parser acts on
    assert segment not in (b".", b".."), segment
    assert remove_dot_segments(raw_path) == raw_path  # normalising changes nothing
    decoded = unquote_to_bytes(segment)
    assert decoded.decode() == value  # the Manager's router decodes exactly our value
    assert decoded not in (b".", b".."), decoded
    decoded_path = prefix + decoded.replace(b"/", b"%2F") + suffix
    assert remove_dot_segments(decoded_path) == decoded_path


async def check(
    value: str,
    call: Callable[[ManagerClient], Awaitable[Any]],
    prefix: bytes,
    suffix: bytes = b"",
) -> None:
    recorder = Recorder()
    settings_ = ManagerSettings(BASE, LOGIN, "client", "secret", max_attempts=1)
    async with ManagerClient(settings_, transport=httpx.MockTransport(recorder)) as client:
        try:
            await call(client)
        except UnsafePathSegment as error:
            assert isinstance(error, ManagerRejected)  # the writer drops it, never retries
            assert recorder.requests == []
            assert unusable(value), value  # refused only when it cannot be one segment
            return
    [request] = recorder.requests
    one_segment(request.url.raw_path, b"/api" + prefix, suffix, value)


HYPOTHESIS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(hostname=SEGMENTS)
@example(hostname="..")
@example(hostname=".")
@example(hostname="a/../../..")
def test_delete_module_stays_on_one_module(hostname: str) -> None:
    run(
        check(
            hostname,
            lambda client: client.delete_module("901", hostname),
            b"/messaging/exchanges/901/modules/",
        )
    )


@HYPOTHESIS
@given(exchange_id=SEGMENTS, hostname=SEGMENTS)
@example(exchange_id="..", hostname="h")
@example(exchange_id="modules", hostname="modules")
def test_exchange_ids_stay_one_segment(exchange_id: str, hostname: str) -> None:
    prefix = b"/messaging/exchanges/"
    run(check(exchange_id, lambda client: client.get_exchange(exchange_id), prefix))
    run(check(exchange_id, lambda client: client.list_modules(exchange_id), prefix, b"/modules"))
    run(
        check(
            exchange_id,
            lambda client: client.upsert_module(exchange_id, "h", "builder", "active", []),
            prefix,
            b"/modules",
        )
    )
    if not unusable(hostname):  # refused on its own, above
        run(
            check(
                exchange_id,
                lambda client: client.delete_module(exchange_id, hostname),
                prefix,
                b"/modules/" + _quoted(hostname),
            )
        )


@HYPOTHESIS
@given(broker_id=SEGMENTS)
@example(broker_id="..")
@example(broker_id="modules")
@example(broker_id="connections")
def test_broker_ids_stay_one_segment(broker_id: str) -> None:
    prefix = b"/messaging/brokers/"
    run(check(broker_id, lambda client: client.get_broker(broker_id), prefix))
    run(
        check(
            broker_id,
            lambda client: client.list_broker_connections(broker_id),
            prefix,
            b"/connections",
        )
    )


@HYPOTHESIS
@given(hostname=SEGMENTS, broker_id=SEGMENTS)
@example(hostname="%2e%2e", broker_id="%2E.")
@example(hostname="a%2Fb", broker_id="..%2f")
def test_the_path_on_the_wire_is_the_one_httpx_built(
    hostname: str,
    broker_id: str,
    manager_emulator: ManagerEmulator,
    manager_settings: ManagerSettings,
) -> None:
    """The default transport (aiohttp) parses the URL httpx built once more before sending it:
    the Manager, on a real socket, still receives each value as the one segment above."""
    assume(not unusable(hostname) and not unusable(broker_id))
    manager_emulator.clear_requests()

    async def calls() -> None:
        async with ManagerClient(manager_settings) as client:
            await client.delete_module(EXCHANGE_ID, hostname)
            with contextlib.suppress(ManagerRejected):  # no such broker: 404
                await client.get_broker(broker_id)

    run(calls())
    deleted, looked_up = manager_emulator.requests_to(path_prefix="/messaging/")
    modules = f"/messaging/exchanges/{EXCHANGE_ID}/modules/".encode()
    one_segment(deleted.path.encode(), modules, b"", hostname)
    one_segment(looked_up.path.encode(), b"/messaging/brokers/", b"", broker_id)


@pytest.mark.parametrize("value", ["..", ".", ""])
async def test_dot_segments_are_refused_before_anything_is_sent(value: str) -> None:
    recorder = Recorder()
    settings_ = ManagerSettings(BASE, LOGIN, "client", "secret")
    async with ManagerClient(settings_, transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(UnsafePathSegment, match="path segment"):
            await client.delete_module("901", value)
        with pytest.raises(UnsafePathSegment):
            await client.get_exchange(value)
        with pytest.raises(UnsafePathSegment):
            await client.list_broker_connections(value)
    assert recorder.requests == []


def _quoted(value: str) -> bytes:
    return quote(value, safe="").encode()


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)

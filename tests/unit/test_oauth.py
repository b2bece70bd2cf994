"""The OAuth2 token source and auth flow against the Manager emulator's real token endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.oauth import (
    ManagerAuth,
    OAuthError,
    OAuthTransportError,
    TokenCache,
    TokenSource,
)
from tests.fakes import FakeClock
from tests.fixtures.manager import CLIENT_ID, CLIENT_SECRET


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _source(
    emulator: ManagerEmulator,
    http: httpx.AsyncClient,
    clock: FakeClock,
    *,
    client_id: str = CLIENT_ID,
    secret: str = CLIENT_SECRET,
    cache: TokenCache | None = None,
    timeout: float = 2.0,
) -> TokenSource:
    return TokenSource(
        http, emulator.login_url, client_id, secret, timeout=timeout, clock=clock, cache=cache
    )


async def test_token_request_is_a_json_client_credentials_post(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    token = await _source(manager_emulator, http, clock).token()
    assert token
    [request] = manager_emulator.token_requests()
    assert request.status == 200
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.body == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


async def test_token_is_reused_until_30_seconds_before_expiry(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    source = _source(manager_emulator, http, clock)  # the emulator grants 3600 s
    first = await source.token()
    assert [await source.token() for _ in range(3)] == [first] * 3
    clock.now = 3569.0  # 31 s left
    assert await source.token() == first
    assert len(manager_emulator.token_requests()) == 1
    clock.now = 3571.0  # 29 s left
    second = await source.token()
    assert second != first
    assert len(manager_emulator.token_requests()) == 2


async def test_expiry_is_measured_from_when_the_request_started(
    manager_emulator: ManagerEmulator, clock: FakeClock
) -> None:
    async def slow_network(request: httpx.Request) -> None:
        clock.now += 100.0  # the token request "takes" 100 s

    async with httpx.AsyncClient(event_hooks={"request": [slow_network]}) as http:
        source = _source(manager_emulator, http, clock)
        await source.token()  # started at 0, so it expires at 3600, not 3700
        clock.now = 3571.0
        await source.token()
    assert len(manager_emulator.token_requests()) == 2


async def test_a_token_with_under_30_seconds_of_life_is_used_once(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    with ManagerEmulator(clients={CLIENT_ID: CLIENT_SECRET}, token_lifetime=20) as emulator:
        source = _source(emulator, http, clock)
        first, second = await source.token(), await source.token()
        assert first and second and first != second
        assert len(emulator.token_requests()) == 2


async def test_concurrent_callers_share_one_token_request(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    manager_emulator.delay_next(1, 0.2, path_prefix="/oauth/token")
    source = _source(manager_emulator, http, clock)
    tokens = await asyncio.gather(*(source.token() for _ in range(5)))
    assert len(set(tokens)) == 1
    assert len(manager_emulator.token_requests()) == 1


async def test_cache_is_keyed_by_login_url_and_client_id(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    manager_emulator.set_client_secret("other-client", "other-secret")
    cache = TokenCache()
    shared = await _source(manager_emulator, http, clock, cache=cache).token()
    assert await _source(manager_emulator, http, clock, cache=cache).token() == shared
    other = _source(
        manager_emulator, http, clock, client_id="other-client", secret="other-secret", cache=cache
    )
    assert await other.token() != shared
    assert len(manager_emulator.token_requests()) == 2


async def test_invalidate_forgets_only_the_refused_token(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    source = _source(manager_emulator, http, clock)
    first = await source.token()
    source.invalidate(first)
    second = await source.token()
    assert second != first
    source.invalidate(first)  # a late caller reporting the old token must not drop the new one
    assert await source.token() == second
    assert len(manager_emulator.token_requests()) == 2


async def test_refused_credentials_raise_oauth_error_without_the_secret(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    source = _source(manager_emulator, http, clock, secret="wrong-secret-9f")
    with pytest.raises(OAuthError) as caught:
        await source.token()
    assert caught.value.status == 401
    assert "401" in str(caught.value)
    assert "wrong-secret-9f" not in str(caught.value)
    assert "wrong-secret-9f" not in repr(caught.value)


async def test_server_errors_and_tokenless_answers_are_oauth_errors(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    source = _source(manager_emulator, http, clock)
    manager_emulator.fail_next(1, status=503, path_prefix="/oauth/token")
    with pytest.raises(OAuthError) as unavailable:
        await source.token()
    assert unavailable.value.status == 503
    manager_emulator.fail_next(1, status=200, path_prefix="/oauth/token")  # 200, no access_token
    with pytest.raises(OAuthError, match="no access_token") as tokenless:
        await source.token()
    assert tokenless.value.status == 200


async def test_unreachable_token_endpoint_is_a_transport_error(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    emulator = ManagerEmulator(clients={CLIENT_ID: CLIENT_SECRET})
    with emulator:
        pass  # bound a free port, then released it: nothing listens there now
    with pytest.raises(OAuthTransportError):
        await _source(emulator, http, clock).token()


async def test_slow_token_endpoint_times_out_as_a_transport_error(
    manager_emulator: ManagerEmulator, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    manager_emulator.delay_next(1, 1.0, path_prefix="/oauth/token")
    with pytest.raises(OAuthTransportError, match="timed out"):
        await _source(manager_emulator, http, clock, timeout=0.2).token()


async def test_auth_flow_sends_legacy_header_and_retries_once_with_a_fresh_token(
    manager_emulator: ManagerEmulator, clock: FakeClock
) -> None:
    async with httpx.AsyncClient(base_url=manager_emulator.url) as http:
        auth = ManagerAuth(_source(manager_emulator, http, clock))
        assert (await http.get("/messaging/exchanges/1", auth=auth)).status_code == 200
        manager_emulator.revoke_tokens()
        assert (await http.get("/messaging/exchanges/1", auth=auth)).status_code == 200
    calls = manager_emulator.requests_to("GET", "/messaging/")
    assert [c.status for c in calls] == [200, 401, 200]
    headers = [c.headers["authorization"] for c in calls]
    assert all(h.startswith("Bearer access_token=") and len(h) > 20 for h in headers)
    assert headers[0] == headers[1] != headers[2]
    assert len(manager_emulator.token_requests()) == 2


async def test_a_shared_cache_never_lends_a_token_to_a_wrong_secret(
    http: httpx.AsyncClient, manager_emulator: ManagerEmulator, clock: FakeClock
) -> None:
    cache = TokenCache()
    right = TokenSource(
        http, manager_emulator.login_url, CLIENT_ID, CLIENT_SECRET, clock=clock, cache=cache
    )
    wrong = TokenSource(
        http, manager_emulator.login_url, CLIENT_ID, "not-the-secret", clock=clock, cache=cache
    )
    assert await right.token()
    with pytest.raises(OAuthError):
        await wrong.token()

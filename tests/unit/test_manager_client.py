"""The operator's Manager client against the Manager emulator: calls, headers, the token
cache, retries with backoff, error mapping, secrecy and TLS."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator import __version__
from overseer_operator.manager_client import (
    BrokerConnection,
    BrokerRecord,
    ExchangeRecord,
    ManagerClient,
    ManagerRejected,
    ManagerSettings,
    ManagerUnauthorized,
    ManagerUnavailable,
    parse_manager_timestamp,
    verifying_context,
)
from tests.fakes import FakeClock, Sleeps
from tests.fixtures.manager import CLIENT_ID, CLIENT_SECRET, EXCHANGE_ID

MODULES = f"/messaging/exchanges/{EXCHANGE_ID}/modules"


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_client(
    sleeps: Sleeps, clock: FakeClock
) -> AsyncIterator[Callable[[ManagerSettings], ManagerClient]]:
    """Builds clients with recorded sleeps, a fake clock and jitter pinned to its maximum."""
    clients: list[ManagerClient] = []

    def make(settings: ManagerSettings) -> ManagerClient:
        clients.append(ManagerClient(settings, sleep=sleeps, clock=clock, jitter=lambda: 1.0))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(
    make_client: Callable[[ManagerSettings], ManagerClient], manager_settings: ManagerSettings
) -> ManagerClient:
    return make_client(manager_settings)


def _issued_tokens(emulator: ManagerEmulator) -> set[str]:
    return {
        r.headers["authorization"].removeprefix("Bearer access_token=")
        for r in emulator.requests
        if "authorization" in r.headers
    }


# --- the calls --------------------------------------------------------------------------------


async def test_upsert_list_and_delete_modules(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    workload = [{"description": "building workflow 123"}]
    await client.upsert_module(EXCHANGE_ID, "007aaefbbcc9", "builder", "active", workload)

    [module] = await client.list_modules(EXCHANGE_ID)
    assert (module.hostname, module.type, module.status) == ("007aaefbbcc9", "builder", "active")
    assert module.workload == workload
    assert module.updated_at is not None
    assert abs(datetime.now(UTC) - module.updated_at) < timedelta(seconds=10)

    assert await client.delete_module(EXCHANGE_ID, "007aaefbbcc9") is True
    assert await client.delete_module(EXCHANGE_ID, "007aaefbbcc9") is False  # already gone
    assert await client.list_modules(EXCHANGE_ID) == []
    assert [(r.method, r.status) for r in manager_emulator.module_writes(EXCHANGE_ID)] == [
        ("POST", 201),
        ("DELETE", 204),
        ("DELETE", 404),
    ]


async def test_hostnames_are_escaped_in_paths(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    manager_emulator.put_module(EXCHANGE_ID, "odd/host name", "builder", "inactive")
    assert await client.delete_module(EXCHANGE_ID, "odd/host name") is True
    assert manager_emulator.modules(EXCHANGE_ID) == []
    assert manager_emulator.module_writes(EXCHANGE_ID)[0].path == f"{MODULES}/odd%2Fhost%20name"


async def test_list_modules_parses_rfc1123_updated_at_in_utc(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    stale = datetime(2015, 6, 23, 19, 39, 11, tzinfo=UTC)
    manager_emulator.put_module(EXCHANGE_ID, "old", "deployer", "inactive", updated_at=stale)
    [module] = await client.list_modules(EXCHANGE_ID)
    assert module.updated_at == stale
    assert module.updated_at.tzinfo is UTC
    assert module.workload == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Tue, 23 Jun 2015 19:39:11 UTC", datetime(2015, 6, 23, 19, 39, 11, tzinfo=UTC)),
        ("Tue, 23 Jun 2015 19:39:11 GMT", datetime(2015, 6, 23, 19, 39, 11, tzinfo=UTC)),
        ("Tue, 23 Jun 2015 21:39:11 +0200", datetime(2015, 6, 23, 19, 39, 11, tzinfo=UTC)),
        ("", None),
        (None, None),
        ("yesterday", None),
        ("2015-06-23T19:39:11Z", None),
        (1435088351, None),
    ],
)
def test_parse_manager_timestamp(text: object, expected: datetime | None) -> None:
    assert parse_manager_timestamp(text) == expected


async def test_get_exchange_and_broker(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    assert await client.get_exchange(EXCHANGE_ID) == ExchangeRecord(
        id="1", name="aws:us-east-1", routing_key="aws.us-east-1", root_exchange_name="aws"
    )
    manager_emulator.add_broker("7", "backup")
    manager_emulator.add_broker("8", "primary", failover_broker_id="7")
    assert await client.get_broker("1") == BrokerRecord(
        id="1", name="rabbitmq", failover_broker_id=None
    )
    assert await client.get_broker("8") == BrokerRecord(
        id="8", name="primary", failover_broker_id="7"
    )


async def test_broker_connections_build_escaped_amqp_urls(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    manager_emulator.add_broker("9", "tricky")
    manager_emulator.add_broker_connection("9", "ops@corp", "p:w/d%@", "10.1.2.3", 5671, "/")
    manager_emulator.add_broker_connection("9", "u", "p", "::1", None, "prod/eu")
    first, second = await client.list_broker_connections("9")
    assert first == BrokerConnection("ops@corp", "p:w/d%@", "10.1.2.3", 5671, "/")
    assert first.url() == "amqp://ops%40corp:p%3Aw%2Fd%25%40@10.1.2.3:5671/%2F"
    assert second.url() == "amqp://u:p@[::1]/prod%2Feu"
    assert "p:w/d%@" not in repr(first)


async def test_rejected_requests_carry_status_and_the_managers_message(
    client: ManagerClient, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    with pytest.raises(ManagerRejected) as caught:
        await client.get_exchange("404")
    assert caught.value.status == 404
    assert caught.value.message == "MessagingExchange was not found"
    assert str(caught.value) == (
        "GET /messaging/exchanges/404: HTTP 404: MessagingExchange was not found"
    )
    assert len(manager_emulator.requests_to("GET", "/messaging/")) == 1  # not retried
    assert sleeps == []
    with pytest.raises(ManagerRejected) as missing_exchange:
        await client.list_modules("404")
    assert str(missing_exchange.value) == "GET /messaging/exchanges/404/modules: HTTP 404"


async def test_requests_carry_the_legacy_headers(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    await client.upsert_module(EXCHANGE_ID, "h", "builder", "active", [])
    [request] = manager_emulator.requests_to("POST", MODULES)
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"overseer-operator/{__version__}"
    assert request.headers["authorization"].startswith("Bearer access_token=")
    assert _issued_tokens(manager_emulator) != {""}
    assert request.body == {"hostname": "h", "type": "builder", "status": "active", "workload": []}


# --- tokens -----------------------------------------------------------------------------------


async def test_one_token_request_serves_many_calls(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    for _ in range(5):
        await client.list_modules(EXCHANGE_ID)
    assert len(manager_emulator.token_requests()) == 1


async def test_token_is_renewed_30_seconds_before_expiry(
    client: ManagerClient, manager_emulator: ManagerEmulator, clock: FakeClock
) -> None:
    await client.list_modules(EXCHANGE_ID)
    clock.now = 3569.0
    await client.list_modules(EXCHANGE_ID)
    assert len(manager_emulator.token_requests()) == 1
    clock.now = 3571.0
    await client.list_modules(EXCHANGE_ID)
    assert len(manager_emulator.token_requests()) == 2


async def test_a_refused_token_is_replaced_and_the_call_retried_once(
    client: ManagerClient, manager_emulator: ManagerEmulator
) -> None:
    await client.list_modules(EXCHANGE_ID)
    manager_emulator.revoke_tokens()
    await client.upsert_module(EXCHANGE_ID, "h", "builder", "active", [])
    assert [r.status for r in manager_emulator.requests_to("POST", MODULES)] == [401, 201]
    assert len(manager_emulator.token_requests()) == 2
    assert len(manager_emulator.modules(EXCHANGE_ID)) == 1


async def test_a_second_401_is_unauthorized(
    client: ManagerClient, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    manager_emulator.fail_next(2, status=401, path_prefix="/messaging/")
    with pytest.raises(ManagerUnauthorized, match=f"GET {MODULES}: HTTP 401"):
        await client.list_modules(EXCHANGE_ID)
    assert len(manager_emulator.requests_to("GET", "/messaging/")) == 2
    assert len(manager_emulator.token_requests()) == 2
    assert sleeps == []


async def test_refused_credentials_never_send_an_empty_token(
    make_client: Callable[[ManagerSettings], ManagerClient],
    manager_settings: ManagerSettings,
    manager_emulator: ManagerEmulator,
) -> None:
    client = make_client(dataclasses.replace(manager_settings, client_secret="not-the-secret"))
    with pytest.raises(ManagerUnauthorized, match=r"refused the client credentials \(HTTP 401\)"):
        await client.upsert_module(EXCHANGE_ID, "h", "builder", "active", [])
    assert [(r.method, r.path) for r in manager_emulator.requests] == [("POST", "/oauth/token")]
    assert manager_emulator.modules(EXCHANGE_ID) == []


# --- retries ----------------------------------------------------------------------------------


async def test_5xx_and_429_are_retried_with_exponential_backoff(
    client: ManagerClient, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    manager_emulator.fail_next(1, status=503, path_prefix=MODULES)
    manager_emulator.fail_next(1, status=429, path_prefix=MODULES)
    manager_emulator.fail_next(1, status=500, path_prefix=MODULES)
    await client.upsert_module(EXCHANGE_ID, "h", "builder", "active", [])
    assert [r.status for r in manager_emulator.requests_to("POST", MODULES)] == [503, 429, 500, 201]
    assert sleeps == [0.5, 1.0, 2.0]  # jitter pinned to 1: the ceilings themselves


async def test_backoff_is_jittered_under_a_cap(
    manager_settings: ManagerSettings, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    manager_emulator.fail_next(5, status=502, path_prefix=MODULES)
    settings = dataclasses.replace(manager_settings, max_attempts=6)
    async with ManagerClient(
        settings, sleep=sleeps, jitter=lambda: 0.25, backoff_base=1.0, backoff_max=4.0
    ) as client:
        await client.list_modules(EXCHANGE_ID)
    # ceilings 1, 2, 4, 4, 4; each delay drawn from [ceiling/2, ceiling] (0.625 of it here)
    assert sleeps == [0.625, 1.25, 2.5, 2.5, 2.5]


async def test_unavailable_after_max_attempts(
    client: ManagerClient, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    manager_emulator.fail_next(10, status=503, path_prefix=MODULES)
    with pytest.raises(
        ManagerUnavailable, match=f"POST {MODULES} failed after 4 attempts: HTTP 503"
    ):
        await client.upsert_module(EXCHANGE_ID, "h", "builder", "active", [])
    assert len(manager_emulator.requests_to("POST", MODULES)) == 4
    assert len(sleeps) == 3


async def test_an_unavailable_token_endpoint_is_retried_then_unavailable(
    client: ManagerClient, manager_emulator: ManagerEmulator, sleeps: Sleeps
) -> None:
    manager_emulator.set_unavailable(True)
    with pytest.raises(ManagerUnavailable, match="HTTP 503"):
        await client.list_modules(EXCHANGE_ID)
    assert len(manager_emulator.token_requests()) == 4
    assert manager_emulator.requests_to(path_prefix="/messaging/") == []  # no empty bearer
    manager_emulator.set_unavailable(False)
    assert await client.list_modules(EXCHANGE_ID) == []


async def test_timeouts_are_retried(
    make_client: Callable[[ManagerSettings], ManagerClient],
    manager_settings: ManagerSettings,
    manager_emulator: ManagerEmulator,
    sleeps: Sleeps,
) -> None:
    client = make_client(dataclasses.replace(manager_settings, timeout=0.5))
    manager_emulator.delay_next(1, 1.5, path_prefix=MODULES)
    assert await client.list_modules(EXCHANGE_ID) == []
    assert len(manager_emulator.requests_to("GET", MODULES)) == 2
    assert len(sleeps) == 1


async def test_an_unreachable_manager_is_unavailable(
    make_client: Callable[[ManagerSettings], ManagerClient],
    manager_settings: ManagerSettings,
    manager_emulator: ManagerEmulator,
    sleeps: Sleeps,
) -> None:
    client = make_client(manager_settings)
    manager_emulator.stop()
    with pytest.raises(ManagerUnavailable, match="failed after 4 attempts"):
        await client.get_broker("1")
    assert len(sleeps) == 3


# --- secrecy and TLS --------------------------------------------------------------------------


async def test_no_error_or_log_line_reveals_the_secret_or_a_token(
    client: ManagerClient, manager_emulator: ManagerEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    await client.list_modules(EXCHANGE_ID)
    for status, count in ((401, 2), (503, 4), (400, 1)):
        manager_emulator.fail_next(count, status=status, path_prefix="/messaging/")
        with pytest.raises((ManagerUnauthorized, ManagerUnavailable, ManagerRejected)) as caught:
            await client.list_modules(EXCHANGE_ID)
        errors.append(caught.value)
    secrets = {CLIENT_SECRET, *_issued_tokens(manager_emulator)}
    assert len(secrets) >= 3  # the secret and at least two tokens (one refreshed)
    texts = [caplog.text, repr(client._settings)]
    for error in errors:
        while error is not None:
            texts += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    for secret in secrets:
        assert all(secret not in text for text in texts)


def test_settings_validate_and_hide_secrets() -> None:
    settings = ManagerSettings("http://m", "http://m/oauth/token", CLIENT_ID, CLIENT_SECRET)
    assert CLIENT_SECRET not in repr(settings)
    assert (settings.timeout, settings.max_attempts, settings.ca_bundle) == (10.0, 4, None)
    with pytest.raises(ValueError, match="max_attempts"):
        dataclasses.replace(settings, max_attempts=0)
    with pytest.raises(ValueError, match="ca_data"):
        dataclasses.replace(settings, ca_bundle="-----BEGIN CERTIFICATE-----\n...")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_is_verified_against_the_ca_bundle(
    tls_files: tuple[Path, Path], sleeps: Sleeps
) -> None:
    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with ManagerEmulator(clients={CLIENT_ID: CLIENT_SECRET}, ssl_context=server_context) as emu:
        emu.add_broker("1", "tls")
        assert emu.url.startswith("https://")
        settings = ManagerSettings(emu.url, emu.login_url, CLIENT_ID, CLIENT_SECRET, max_attempts=1)
        async with ManagerClient(dataclasses.replace(settings, ca_bundle=str(cert))) as client:
            assert (await client.get_broker("1")).name == "tls"
        pem = cert.read_text()
        async with ManagerClient(dataclasses.replace(settings, ca_data=pem)) as client:
            assert (await client.get_broker("1")).name == "tls"
        async with ManagerClient(settings, sleep=sleeps) as client:
            with pytest.raises(ManagerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get_broker("1")


def test_clients_with_the_same_ca_bundle_share_one_tls_context(
    tls_files: tuple[Path, Path],
) -> None:
    """A context holds its trust store (about 0.9 MiB with the system's): 100 exchanges'
    clients must not load it 100 times; a bundle file changed on disk is loaded again."""
    cert, _ = tls_files
    pem = cert.read_text()
    assert verifying_context(None, None) is verifying_context(None, None)
    assert verifying_context(None, pem) is verifying_context(None, pem)
    assert verifying_context(None, pem) is not verifying_context(None, None)
    first = verifying_context(str(cert), None)
    assert verifying_context(str(cert), None) is first
    os.utime(cert, ns=(1, 1))
    assert verifying_context(str(cert), None) is not first

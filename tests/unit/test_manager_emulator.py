"""The Manager emulator over real HTTP: OAuth, auth checks, the Manager's module semantics,
recording, fault injection, the control endpoints and the command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from devtools.manager_emulator import ManagerEmulator
from tests.fixtures.manager import CLIENT_ID, CLIENT_SECRET, EXCHANGE_ID

MODULES = f"/messaging/exchanges/{EXCHANGE_ID}/modules"


def _grant(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}


@pytest.fixture
def http(manager_emulator: ManagerEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manager_emulator.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def auth(http: httpx.Client) -> dict[str, str]:
    response = http.post("/oauth/token", json=_grant())
    assert response.status_code == 200
    return {"Authorization": f"Bearer access_token={response.json()['access_token']}"}


def _module(hostname: str = "007aaefbbcc9", status: str = "active") -> dict[str, object]:
    return {"hostname": hostname, "type": "builder", "status": status, "workload": []}


# --- OAuth and authentication -----------------------------------------------------------------


def test_token_endpoint_grants_known_client(http: httpx.Client) -> None:
    response = http.post("/oauth/token", json=_grant())
    assert response.status_code == 200
    body = response.json()
    assert body["access_token"]
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600


@pytest.mark.parametrize(
    "grant",
    [_grant(secret="wrong"), _grant(client_id="stranger"), {"grant_type": "client_credentials"}],
    ids=["wrong-secret", "unknown-client", "no-credentials"],
)
def test_token_endpoint_refuses_bad_credentials(http: httpx.Client, grant: dict) -> None:
    response = http.post("/oauth/token", json=grant)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}


def test_token_endpoint_refuses_form_body_and_other_grants(http: httpx.Client) -> None:
    assert http.post("/oauth/token", data=_grant()).status_code == 400
    password_grant = {**_grant(), "grant_type": "password"}
    assert http.post("/oauth/token", json=password_grant).status_code == 400


def test_status_needs_no_token(http: httpx.Client) -> None:
    assert http.get("/status").status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-issued", "Basic b3ZlcnNlZXI6eA==", "Bearer", "Bearer access_token="],
)
def test_routes_refuse_missing_or_unknown_tokens(
    http: httpx.Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = http.get(MODULES, headers=headers)
    assert response.status_code == 401
    assert response.text == "Unauthorized"


def test_both_bearer_forms_are_accepted_case_insensitively(http: httpx.Client) -> None:
    token = http.post("/oauth/token", json=_grant()).json()["access_token"]
    for authorization in (f"Bearer access_token={token}", f"bearer {token}", f"BEARER {token}"):
        assert http.get(MODULES, headers={"Authorization": authorization}).status_code == 200


def test_tokens_expire_after_their_lifetime() -> None:
    now = [1000.0]
    with (
        ManagerEmulator(
            clients={CLIENT_ID: CLIENT_SECRET}, token_lifetime=60, clock=lambda: now[0]
        ) as emulator,
        httpx.Client(base_url=emulator.url) as http,
    ):
        emulator.add_exchange("1", "x", "x")
        granted = http.post("/oauth/token", json=_grant()).json()
        assert granted["expires_in"] == 60
        headers = {"Authorization": f"Bearer {granted['access_token']}"}
        now[0] = 1059.9
        assert http.get("/messaging/exchanges/1", headers=headers).status_code == 200
        now[0] = 1060.0
        assert http.get("/messaging/exchanges/1", headers=headers).status_code == 401


def test_revoke_tokens_invalidates_every_issued_token(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    assert http.get(MODULES, headers=auth).status_code == 200
    manager_emulator.revoke_tokens()
    assert http.get(MODULES, headers=auth).status_code == 401


def test_changed_client_secret_refuses_the_old_one(
    manager_emulator: ManagerEmulator, http: httpx.Client
) -> None:
    manager_emulator.set_client_secret(CLIENT_ID, "rotated")
    assert http.post("/oauth/token", json=_grant()).status_code == 401
    assert http.post("/oauth/token", json=_grant(secret="rotated")).status_code == 200


# --- exchanges and brokers --------------------------------------------------------------------


def test_exchange_carries_routing_key_and_root_exchange_name(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.add_exchange("3", "aws:us-east-1:builders", "builders", parent_id="1")
    exchange = http.get("/messaging/exchanges/1", headers=auth).json()
    assert exchange["id"] == 1
    assert exchange["name"] == "aws:us-east-1"
    assert exchange["parent_exchange_id"] == 2
    assert exchange["routing_key_fragment"] == "us-east-1"
    assert exchange["routing_key"] == "aws.us-east-1"
    assert exchange["root_exchange_name"] == "aws"
    grandchild = http.get("/messaging/exchanges/3", headers=auth).json()
    assert grandchild["routing_key"] == "aws.us-east-1.builders"
    assert grandchild["root_exchange_name"] == "aws"
    missing = http.get("/messaging/exchanges/99", headers=auth)
    assert missing.status_code == 404
    assert missing.json() == {"errors": [{"message": "MessagingExchange was not found"}]}


def test_broker_and_its_decrypted_connections(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.add_broker("5", "backup")
    manager_emulator.add_broker("6", "primary", failover_broker_id="5")
    manager_emulator.add_broker_connection("6", "ops", "pa:ss", "rabbit.local", 5671, "prod")
    broker = http.get("/messaging/brokers/6", headers=auth).json()
    assert (broker["id"], broker["name"], broker["failover_broker_id"]) == (6, "primary", 5)
    [connection] = http.get("/messaging/brokers/6/connections", headers=auth).json()
    assert connection["messaging_broker_id"] == 6
    assert connection["username"] == "ops"
    assert connection["password"] == "pa:ss"
    assert (connection["host"], connection["port"], connection["virtual_host"]) == (
        "rabbit.local",
        5671,
        "prod",
    )
    assert http.get("/messaging/brokers/9", headers=auth).status_code == 404
    assert http.get("/messaging/brokers/9/connections", headers=auth).status_code == 404


# --- exchange modules -------------------------------------------------------------------------


def test_post_module_answers_201_with_location_and_stores_the_row(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    body = {**_module("host one"), "workload": [{"description": "building workflow 123"}]}
    response = http.post(MODULES, json=body, headers=auth)
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["Location"] == f"{MODULES}/host%20one"
    [row] = http.get(MODULES, headers=auth).json()
    assert row["hostname"] == "host one"
    assert row["messaging_exchange_id"] == 1
    assert (row["type"], row["status"]) == ("builder", "active")
    assert row["workload"] == [{"description": "building workflow 123"}]
    assert row["updated_at"].endswith(" UTC")
    assert row == manager_emulator.modules(EXCHANGE_ID)[0]


def test_post_module_resets_updated_at(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    stale = datetime(2015, 6, 23, 19, 39, 11, tzinfo=UTC)
    manager_emulator.put_module(EXCHANGE_ID, "worker-a", "builder", "active", updated_at=stale)
    [before] = manager_emulator.modules(EXCHANGE_ID)
    assert before["updated_at"] == "Tue, 23 Jun 2015 19:39:11 UTC"

    assert http.post(MODULES, json=_module("worker-a", "inactive"), headers=auth).status_code == 201

    [after] = manager_emulator.modules(EXCHANGE_ID)
    assert after["id"] != before["id"]
    assert after["status"] == "inactive"
    age = datetime.now(UTC) - parsedate_to_datetime(after["updated_at"])
    assert timedelta(seconds=-2) < age < timedelta(seconds=10)


def test_post_module_replaces_every_row_with_that_hostname(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    for status in ("active", "inactive", "active"):
        manager_emulator.put_module(EXCHANGE_ID, "dup", "builder", status)
    manager_emulator.put_module(EXCHANGE_ID, "other", "deployer", "active")
    manager_emulator.put_module("2", "dup", "builder", "active")  # another exchange: untouched

    http.post(MODULES, json=_module("dup", "inactive"), headers=auth)

    rows = manager_emulator.modules(EXCHANGE_ID)
    assert sorted((r["hostname"], r["status"]) for r in rows) == [
        ("dup", "inactive"),
        ("other", "active"),
    ]
    assert len(manager_emulator.modules("2")) == 1


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        ({"type": "builder", "status": "active", "workload": []}, {"hostname"}),
        ({"hostname": "h", "type": "builder", "status": "active"}, {"workload"}),
        (
            {"hostname": "", "type": "builder", "status": "active", "workload": None},
            {"hostname", "workload"},
        ),
        ({"hostname": "h", "type": 7, "status": "active", "workload": []}, {"type"}),
        ({}, {"hostname", "type", "status", "workload"}),
    ],
)
def test_post_module_400_lists_the_invalid_fields(
    manager_emulator: ManagerEmulator,
    http: httpx.Client,
    auth: dict[str, str],
    body: dict,
    bad_fields: set[str],
) -> None:
    response = http.post(MODULES, json=body, headers=auth)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0] == {"message": "One or more fields for MessagingExchangeModule were invalid"}
    assert {name for error in errors[1:] for name in error} == bad_fields
    assert manager_emulator.modules(EXCHANGE_ID) == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"a=b", "text/plain")],
)
def test_post_module_400_when_the_body_is_not_a_json_object(
    manager_emulator: ManagerEmulator,
    http: httpx.Client,
    auth: dict[str, str],
    content: bytes,
    content_type: str,
) -> None:
    response = http.post(MODULES, content=content, headers={**auth, "Content-Type": content_type})
    assert response.status_code == 400
    assert "errors" in response.json()
    assert manager_emulator.modules(EXCHANGE_ID) == []


def test_module_routes_404_for_a_missing_exchange(http: httpx.Client, auth: dict[str, str]) -> None:
    missing = "/messaging/exchanges/99/modules"
    assert http.post(missing, json=_module(), headers=auth).status_code == 404
    assert http.get(missing, headers=auth).status_code == 404
    assert http.get(f"{missing}/h", headers=auth).status_code == 404
    assert http.delete(f"{missing}/h", headers=auth).status_code == 404


def test_get_one_module_then_delete_every_row_of_it(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.put_module(EXCHANGE_ID, "gone", "builder", "inactive")
    manager_emulator.put_module(EXCHANGE_ID, "gone", "builder", "inactive")
    manager_emulator.put_module(EXCHANGE_ID, "kept", "builder", "active")
    assert http.get(f"{MODULES}/gone", headers=auth).json()["hostname"] == "gone"
    assert http.get(f"{MODULES}/never", headers=auth).status_code == 404

    assert http.delete(f"{MODULES}/gone", headers=auth).status_code == 204
    assert [r["hostname"] for r in manager_emulator.modules(EXCHANGE_ID)] == ["kept"]
    assert http.delete(f"{MODULES}/gone", headers=auth).status_code == 404


# --- recording and faults ---------------------------------------------------------------------


def test_requests_are_recorded_and_module_writes_filtered(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.clear_requests()
    http.post(MODULES, json=_module("a"), headers=auth)
    http.get(MODULES, headers=auth)
    http.delete(f"{MODULES}/a", headers=auth)
    http.post("/messaging/exchanges/2/modules", json=_module("b"), headers=auth)

    requests = manager_emulator.requests
    assert [(r.method, r.path, r.status) for r in requests] == [
        ("POST", MODULES, 201),
        ("GET", MODULES, 200),
        ("DELETE", f"{MODULES}/a", 204),
        ("POST", "/messaging/exchanges/2/modules", 201),
    ]
    assert requests[0].body == _module("a")
    assert requests[0].headers["authorization"] == auth["Authorization"]
    assert requests[0].time <= requests[1].time <= requests[2].time <= time.monotonic()
    assert [(r.method, r.path) for r in manager_emulator.module_writes(EXCHANGE_ID)] == [
        ("POST", MODULES),
        ("DELETE", f"{MODULES}/a"),
    ]
    manager_emulator.clear_requests()
    assert manager_emulator.requests == []


def test_fail_next_is_scoped_by_method_and_path(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.fail_next(2, status=503, method="POST", path_prefix="/messaging/")
    assert http.get(MODULES, headers=auth).status_code == 200
    assert http.post(MODULES, json=_module(), headers=auth).status_code == 503
    assert http.post(MODULES, json=_module(), headers=auth).status_code == 503
    assert http.post(MODULES, json=_module(), headers=auth).status_code == 201
    assert len(manager_emulator.modules(EXCHANGE_ID)) == 1


def test_delay_next_holds_the_answer_but_still_handles_the_request(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.delay_next(1, 1.0, path_prefix=MODULES)
    with pytest.raises(httpx.ReadTimeout):
        http.post(MODULES, json=_module("late"), headers=auth, timeout=0.2)
    deadline = time.monotonic() + 5
    while not manager_emulator.modules(EXCHANGE_ID) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["hostname"] for r in manager_emulator.modules(EXCHANGE_ID)] == ["late"]
    started = time.monotonic()
    assert http.get(MODULES, headers=auth).status_code == 200
    assert time.monotonic() - started < 0.5


def test_unavailable_answers_503_everywhere_until_reset(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    manager_emulator.set_unavailable(True)
    assert http.get(MODULES, headers=auth).status_code == 503
    assert http.post("/oauth/token", json=_grant()).status_code == 503
    assert http.get("/status").status_code == 503
    manager_emulator.set_unavailable(False)
    assert http.get(MODULES, headers=auth).status_code == 200


def test_stop_drops_keepalive_connections_and_start_reuses_the_port(
    manager_emulator: ManagerEmulator, http: httpx.Client
) -> None:
    url = manager_emulator.url
    assert http.get("/status").status_code == 200  # leaves a pooled keep-alive connection
    manager_emulator.stop()
    with pytest.raises(httpx.TransportError):
        http.get("/status")
    manager_emulator.start()
    assert manager_emulator.url == url
    assert http.get("/status").status_code == 200


def test_one_log_line_per_request_without_secret_or_token(
    http: httpx.Client, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devtools.manager_emulator")
    http.get(f"{MODULES}?access_token=x", headers=auth)
    http.post("/oauth/token", json=_grant())
    assert caplog.messages == [f"GET {MODULES} -> 200", "POST /oauth/token -> 200"]
    token = auth["Authorization"].rpartition("=")[2]
    assert CLIENT_SECRET not in caplog.text
    assert token not in caplog.text


# --- control endpoints and the command line ---------------------------------------------------


def test_control_endpoints_drive_the_emulator_out_of_process(
    manager_emulator: ManagerEmulator, http: httpx.Client, auth: dict[str, str]
) -> None:
    seeded = {"hostname": "old", "type": "builder", "status": "active", "workload": []}
    seed = http.post(
        f"/_emulator/modules/{EXCHANGE_ID}", json={**seeded, "updated_at": "2015-06-23T19:39:11Z"}
    )
    assert seed.status_code == 201
    [row] = http.get(f"/_emulator/modules/{EXCHANGE_ID}").json()
    assert (row["hostname"], row["updated_at"]) == ("old", "Tue, 23 Jun 2015 19:39:11 UTC")
    assert http.get("/_emulator/modules/99").status_code == 404

    fault = {"kind": "fail", "count": 1, "status": 500, "path_prefix": "/messaging"}
    assert http.post("/_emulator/faults", json=fault).status_code == 204
    assert http.get(MODULES, headers=auth).status_code == 500
    assert http.put("/_emulator/unavailable", json={"unavailable": True}).status_code == 204
    assert http.get(MODULES, headers=auth).status_code == 503
    assert http.delete("/_emulator/faults").status_code == 204
    assert http.get(MODULES, headers=auth).status_code == 200

    assert http.post("/_emulator/revoke-tokens").status_code == 204
    assert http.get(MODULES, headers=auth).status_code == 401
    assert http.put(f"/_emulator/clients/{CLIENT_ID}", json={"secret": "new"}).status_code == 204
    assert http.post("/oauth/token", json=_grant(secret="new")).status_code == 200
    assert http.post("/_emulator/faults", json={"kind": "explode"}).status_code == 400

    recorded = http.get("/_emulator/requests").json()
    assert all(not r["path"].startswith("/_emulator") for r in recorded)
    assert [r["status"] for r in recorded] == [200, 500, 503, 200, 401, 200]
    assert http.delete("/_emulator/requests").status_code == 204
    assert http.get("/_emulator/requests").json() == []


def test_command_line_serves_the_configured_manager() -> None:
    command = [
        sys.executable, "-m", "devtools.manager_emulator",
        "--port", "0", "--client-id", "cli", "--client-secret", "cli-secret-42",
        "--exchange", "2:aws:aws", "--exchange", "1:aws%3Aus-east-1:us-east-1:2",
        "--broker", "1:rabbit",
        "--broker-connection", "1:amqp://u%40x:p%2Fw@10.0.0.5:5673/vh%2F1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=5.0) as http:
            grant = _grant("cli", "cli-secret-42")
            token = http.post("/oauth/token", json=grant).json()["access_token"]
            headers = {"Authorization": f"Bearer access_token={token}"}
            exchange = http.get("/messaging/exchanges/1", headers=headers).json()
            [connection] = http.get("/messaging/brokers/1/connections", headers=headers).json()
        assert (exchange["name"], exchange["routing_key"]) == ("aws:us-east-1", "aws.us-east-1")
        assert exchange["root_exchange_name"] == "aws"
        assert (connection["username"], connection["password"]) == ("u@x", "p/w")
        assert (connection["host"], connection["port"]) == ("10.0.0.5", 5673)
        assert connection["virtual_host"] == "vh/1"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "GET /messaging/brokers/1/connections -> 200" in stderr
    assert "cli-secret-42" not in stderr
    assert token not in stderr


def test_recorded_request_serialises_to_json(
    manager_emulator: ManagerEmulator, http: httpx.Client
) -> None:
    http.post("/oauth/token", content=b"\xff not utf-8", headers={"Content-Type": "text/plain"})
    [record] = manager_emulator.requests
    encoded = json.loads(json.dumps(record.to_json()))
    assert encoded["body"] is None
    assert encoded["text"].endswith(" not utf-8")
    assert encoded["status"] == 400

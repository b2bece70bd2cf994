"""End to end: several operator processes share the exchanges by Leases (SHARDING=on).

Timings are scaled down (lease 8 s, renew deadline 6 s, retry 1 s, member eligible after 2 s);
docs/sharding.md has the production arithmetic. Each test prints its figures (``-s`` shows them):
handover times, false transitions, lost Manager writes, fenced writes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from overseer_operator.ownership import preferred
from tests.fixtures.operator import (
    Exchange,
    Workers,
    apply_exchange,
    eventually,
    get_exchange,
    manager_calls,
    manager_states,
    manager_writes,
    provision,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

LEASE_DURATION, RENEW_DEADLINE, RETRY, FAILURE_RETRY = 8.0, 6.0, 1.0, 0.5


def sharded(namespace: str, **extra: str) -> dict[str, str]:
    return {
        "SHARDING": "on",
        "POD_NAMESPACE": namespace,
        "LEASE_DURATION": f"{int(LEASE_DURATION)}s",
        "LEASE_RENEW_DEADLINE": f"{int(RENEW_DEADLINE)}s",
        "LEASE_RETRY_PERIOD": f"{int(RETRY)}s",
        "LEASE_FAILURE_RETRY": f"{int(FAILURE_RETRY * 1000)}ms",
        "LEASE_REQUEST_TIMEOUT": "2s",
        "MEMBER_LEASE_DURATION": "3s",
        "MEMBER_ELIGIBLE_AFTER": "2s",
        "HANDOVER_INTERVAL": "300ms",
        "CLOCK_SKEW_BOUND": "1s",
        "ORPHAN_LEASE_AFTER": "4s",
        **extra,
    }


@dataclass
class Estate:
    """Several exchanges, each with its workers, and who holds their Leases over time."""

    namespace: str
    exchanges: dict[str, Exchange]  # resource name -> exchange
    workers: dict[str, Workers]
    uids: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def hosts(self, name: str) -> list[str]:
        return [f"{name}-w{index}" for index in range(2)]


class Coordination:
    """The Leases as ``kubectl`` shows them (the test's view, independent of the operator)."""

    def __init__(self, kubectl) -> None:
        self._kubectl = kubectl

    def list_exchange_leases(self, namespace: str) -> list[dict]:
        listed = self._kubectl(
            "get", "leases", "-n", namespace,
            "-l", "overseer.openaperture.io/lease=exchange", "-o", "json",
        )  # fmt: skip
        return json.loads(listed.stdout)["items"]

    def delete_namespaced_lease(self, name: str, namespace: str) -> None:
        self._kubectl("delete", "lease", name, "-n", namespace)


@pytest.fixture
def coordination(kubectl) -> Coordination:
    return Coordination(kubectl)


def holders(coordination: Coordination, namespace: str) -> dict[str, str]:
    """Exchange (resource name) -> holder of its Lease ("" if released)."""
    result = {}
    for lease in coordination.list_exchange_leases(namespace):
        annotations = lease["metadata"].get("annotations") or {}
        exchange = annotations.get("overseer.openaperture.io/exchange", "")
        result[exchange.partition("/")[2]] = lease["spec"].get("holderIdentity") or ""
    return result


@pytest.fixture
def estate(
    request, kubectl, namespace, manager, amqp_url, rabbitmq_api, coordination
) -> Iterator[Estate]:
    count = getattr(request, "param", 4)
    exchanges, workers = {}, {}
    for index in range(count):
        name = f"mx-{index}"
        root = f"oa-{namespace}-{index}"
        exchange_id = str(910 + 2 * index)
        manager.add_exchange(str(909 + 2 * index), root, "aws")
        manager.add_exchange(exchange_id, f"{root}:r", "r", parent_id=str(909 + 2 * index))
        exchange = Exchange(exchange_id, "1", root, "aws.r", f"{namespace}:{index}.system_modules")
        provision(rabbitmq_api, exchange)
        exchanges[name] = exchange
    built = Estate(namespace, exchanges, workers)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            # The apiserver may be briefly unreachable: then there is no sample.
            with contextlib.suppress(Exception):
                built.samples.append((time.monotonic(), holders(coordination, namespace)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    yield built
    stop.set()
    sampler.join(5)
    for simulated in workers.values():
        simulated.close()
    for exchange in exchanges.values():
        rabbitmq_api.delete_queue(exchange.queue)
        rabbitmq_api.delete_exchange(exchange.root_exchange_name)


def start_estate(
    estate: Estate, kubectl, amqp_url: str, thresholds: dict[str, str], refresh: str = "1h"
) -> None:
    for name, exchange in estate.exchanges.items():
        apply_exchange(
            kubectl,
            estate.namespace,
            name,
            exchange,
            thresholds=thresholds,
            manager={"refreshInterval": refresh},
        )
        simulated = Workers(amqp_url, exchange)
        simulated.alive.update(dict.fromkeys(estate.hosts(name), "builder"))
        estate.workers[name] = simulated
        estate.uids[name] = get_exchange(kubectl, estate.namespace, name)["metadata"]["uid"]


def wait_for_owners(estate: Estate, coordination, members: list[str], timeout: float = 60.0):
    """Until every exchange is held by its HRW-preferred member (the distribution settled)."""
    wanted = {name: preferred(uid, members) for name, uid in estate.uids.items()}
    eventually(
        lambda: holders(coordination, estate.namespace) == wanted,
        timeout=timeout,
        what=f"owners {wanted}",
    )
    return wanted


def moves(estate: Estate, since: float, until: float) -> dict[str, int]:
    """Per exchange, how many times its holder changed to another replica in that window."""
    result = dict.fromkeys(estate.exchanges, 0)
    last: dict[str, str] = {}
    for moment, seen in estate.samples:
        if not since <= moment <= until:
            continue
        for name, holder in seen.items():
            if holder and last.get(name) and holder != last[name]:
                result[name] += 1
            if holder:
                last[name] = holder
    return result


def unowned_gaps(estate: Estate, since: float) -> list[float]:
    """How long each release stayed without a holder (sampled every 0.2 s)."""
    gaps, released_at = [], {}
    for moment, seen in estate.samples:
        if moment < since:
            continue
        for name, holder in seen.items():
            if not holder:
                released_at.setdefault(name, moment)
            elif name in released_at:
                gaps.append(moment - released_at.pop(name))
    return gaps


def false_transitions(estate: Estate, manager) -> list[tuple[str, str, str | None]]:
    """Manager writes other than "active" about workers that never stopped beating."""
    wrong = []
    for name, exchange in estate.exchanges.items():
        for host in estate.workers[name].alive:
            for method, status in manager_calls(manager, exchange.exchange_id, host):
                if (method, status) != ("POST", "active"):
                    wrong.append((host, method, status))
    return wrong


def all_workers_active(estate: Estate, manager) -> bool:
    for name, exchange in estate.exchanges.items():
        states = manager_states(manager, exchange.exchange_id)
        if any(states.get(host) != "active" for host in estate.workers[name].alive):
            return False
    return True


def fenced(*operators) -> float:
    return sum(op.metric("overseer_fenced_writes_total") for op in operators if op.alive())


def test_scale_1_2_3_moves_each_exchange_at_most_once_per_step(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    start_estate(estate, kubectl, amqp_url, {"inactiveAfter": "6s", "offlineAfter": "12s"})
    a = start_operator(namespace, identity="op-a", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a"])
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")
    resource = get_exchange(kubectl, namespace, "mx-0")
    assert resource["status"]["owner"] == "op-a"
    wide = kubectl("get", "mx", "-n", namespace, "-o", "wide").stdout
    assert "OWNER" in wide and "op-a" in wide

    step_1 = time.monotonic()
    b = start_operator(namespace, identity="op-b", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a", "op-b"])
    step_2 = time.monotonic()
    c = start_operator(namespace, identity="op-c", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a", "op-b", "op-c"])
    step_3 = time.monotonic()
    time.sleep(8)  # longer than inactiveAfter: any verdict the handovers caused would show

    first, second = moves(estate, step_1, step_2), moves(estate, step_2, step_3)
    gaps = unowned_gaps(estate, step_1)
    wrong = false_transitions(estate, manager)
    print(
        f"\nSCALE 1->2->3: moves per exchange {first} then {second}; "
        f"handover gaps max {max(gaps, default=0):.2f}s over {len(gaps)} handovers; "
        f"false transitions {len(wrong)}; fenced writes {fenced(a, b, c)}"
    )
    assert all(count <= 1 for count in first.values())
    assert all(count <= 1 for count in second.values())
    assert max(gaps, default=0) < 3.0
    assert wrong == []
    assert all_workers_active(estate, manager)  # no Manager write lost
    assert fenced(a, b, c) == 0
    for name in estate.exchanges:  # the status names the Lease's holder
        owner = get_exchange(kubectl, namespace, name)["status"]["owner"]
        assert owner == holders(coordination, namespace)[name]


def test_sigterm_then_sigkill_of_an_owner(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    # Manager rows refreshed every 2 s: a silent worker's row proves its silence to a successor.
    start_estate(
        estate, kubectl, amqp_url, {"inactiveAfter": "20s", "offlineAfter": "40s"}, refresh="2s"
    )
    operators = {
        identity: start_operator(namespace, identity=identity, **sharded(namespace))
        for identity in ("op-a", "op-b")
    }
    owners = wait_for_owners(estate, coordination, ["op-a", "op-b"])
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")

    # SIGTERM: the owner hands over gracefully; the other takes over within a couple of seconds.
    victim = max(("op-a", "op-b"), key=lambda op: list(owners.values()).count(op))
    survivor = "op-b" if victim == "op-a" else "op-a"
    terminated = time.monotonic()
    operators[victim].process.send_signal(signal.SIGTERM)
    wait_for_owners(estate, coordination, [survivor], timeout=30)
    graceful = time.monotonic() - terminated
    operators[victim].process.wait(30)

    # A replacement joins; the distribution settles again.
    operators["op-c"] = start_operator(namespace, identity="op-c", **sharded(namespace))
    owners = wait_for_owners(estate, coordination, [survivor, "op-c"])

    # SIGKILL: a worker of the victim's exchange went silent 3 s before the crash.
    crashed = owners["mx-0"]
    silent_name, silent_host = "mx-0", estate.hosts("mx-0")[0]
    del estate.workers[silent_name].alive[silent_host]
    silent_since = time.monotonic()  # the emulator stamps requests with time.monotonic()
    time.sleep(3)
    killed = time.monotonic()
    operators[crashed].process.send_signal(signal.SIGKILL)
    operators[crashed].process.wait(10)
    other = "op-c" if crashed == survivor else survivor
    eventually(
        lambda: holders(coordination, namespace)["mx-0"] == other,
        timeout=LEASE_DURATION + 20,
        what="takeover after SIGKILL",
    )
    takeover = time.monotonic() - killed
    exchange = estate.exchanges[silent_name]
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get(silent_host) == "inactive",
        timeout=40,
        what="the silent worker inactive",
    )
    (inactive_at,) = [
        at
        for at, method, status in manager_writes(manager, exchange.exchange_id, silent_host)
        if status == "inactive"
    ]
    late_by = inactive_at - (silent_since + 20.0)
    time.sleep(3)
    wrong = false_transitions(estate, manager)
    alive = [op for op in operators.values() if op.alive()]
    # The replica that handed over lives on elsewhere: its own rows were deleted by itself,
    # never written inactive, although more than inactiveAfter has passed since.
    retired = {
        name: calls
        for name, ex in estate.exchanges.items()
        if (calls := manager_calls(manager, ex.exchange_id, victim))
    }
    print(
        f"\nSIGTERM handover {graceful:.2f}s; SIGKILL takeover {takeover:.2f}s "
        f"(bound {LEASE_DURATION + FAILURE_RETRY + 5:.1f}s); silent worker inactive "
        f"{late_by:+.2f}s after its threshold; false transitions {len(wrong)}; "
        f"fenced writes {fenced(*alive)}; own rows of the replica that handed over {retired}"
    )
    assert graceful < 10.0
    assert takeover <= LEASE_DURATION + FAILURE_RETRY + 5.0
    # Inactive by its threshold plus what its proof of silence could not show (the Manager row
    # refreshed every 2 s, written up to 2 s after a heartbeat; the skew bound of 1 s), never
    # before it: not a new threshold from the takeover.
    assert -1.0 <= late_by <= 2.0 + 2.0 + 1.0 + 2.0
    assert wrong == []
    assert retired  # it owned exchanges, and registered itself on each
    for calls in retired.values():
        assert calls[-1] == ("DELETE", None)
        assert ("POST", "inactive") not in calls
    assert all(
        victim not in manager_states(manager, ex.exchange_id) for ex in estate.exchanges.values()
    )
    assert all_workers_active(estate, manager)
    assert fenced(*alive) == 0


@pytest.mark.parametrize("estate", [1], indirect=True)
def test_racing_replicas_a_deleted_lease_and_an_exchange_deleted_mid_handover(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    start_estate(estate, kubectl, amqp_url, {"inactiveAfter": "6s", "offlineAfter": "12s"})
    # Two replicas: exactly one holds the Lease, the one HRW prefers once both are eligible (the
    # race itself, two writes on one resourceVersion, is tests/integration/test_leases.py).
    env = sharded(namespace)
    a = start_operator(namespace, identity="op-a", **env)
    b = start_operator(namespace, identity="op-b", **env)
    holder = wait_for_owners(estate, coordination, ["op-a", "op-b"])["mx-0"]
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")
    eventually(
        lambda: get_exchange(kubectl, namespace, "mx-0")["status"]["owner"] == holder,
        what="the status names the holder",
    )
    conflicts = sum(
        op.metric("overseer_lease_calls_total", operation="acquire", outcome="conflict")
        for op in (a, b)
    )

    # A Lease deleted by hand: its holder recreates it and carries on; nobody else takes it.
    lease_name = f"overseer-mx-{estate.uids['mx-0']}"
    coordination.delete_namespaced_lease(lease_name, namespace)
    eventually(
        lambda: holders(coordination, namespace).get("mx-0") == holder,
        timeout=10,
        what="the Lease recreated by its holder",
    )
    time.sleep(3)
    assert holders(coordination, namespace)["mx-0"] == holder
    assert get_exchange(kubectl, namespace, "mx-0")["status"]["owner"] == holder

    # The exchange deleted while its owner hands it over (SIGTERM): cleaned up once, gone.
    owner, other = (a, b) if holder == "op-a" else (b, a)
    owner.process.send_signal(signal.SIGTERM)
    kubectl("delete", "mx", "mx-0", "-n", namespace, "--wait=false")
    eventually(
        lambda: kubectl("get", "mx", "mx-0", "-n", namespace, check=False).returncode != 0,
        timeout=40,
        what="the exchange gone",
    )
    eventually(
        lambda: "mx-0" not in holders(coordination, namespace),
        timeout=30,
        what="its Lease deleted or garbage-collected",
    )
    wrong = false_transitions(estate, manager)
    print(
        f"\nRACE: one holder ({holder}), {conflicts:.0f} acquisitions refused with 409; "
        f"deleted Lease recreated by its holder; exchange deleted mid-handover: gone, Lease "
        f"gone; false transitions {len(wrong)}; fenced writes {fenced(other)}"
    )
    assert wrong == []
    assert other.alive()
    assert fenced(other) == 0

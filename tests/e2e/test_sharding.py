"""End to end: several operator processes share the exchanges by Leases (SHARDING=on).

Timings are scaled down (lease 8 s, renew deadline 6 s, retry 1 s, member eligible after 2 s);
docs/sharding.md has the production arithmetic. Each test prints its figures (``-s`` shows them):
handover times, false transitions, lost Manager writes, fenced writes.

Apiserver outages go through ``tests/proxy.py``: the replicas reach the apiserver through a TCP
proxy the test cuts (connections refused, or black-holed), while the test itself (and its Lease
sampler) talks to the apiserver directly. Each replica has its own OAuth client, so the Manager
emulator tells whose write each one was.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.ownership import JITTER, preferred
from tests.fixtures.manager import CLIENT_SECRET
from tests.fixtures.operator import (
    FAILURE_RETRY,
    LEASE_DURATION,
    RENEW_DEADLINE,
    REQUEST_TIMEOUT,
    RETRY,
    Exchange,
    OperatorProcess,
    Workers,
    apply_exchange,
    eventually,
    get_exchange,
    manager_calls,
    manager_states,
    manager_writes,
    provision,
    sharded,
)
from tests.proxy import Mode, TcpProxy, kubeconfig_through, server_address

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.own_replicas,
    pytest.mark.usefixtures("crd_installed"),
]

# docs/sharding.md "Timings, by arithmetic", with the scaled values: 6 - 1.2 - 0.5 - 2 = 2.3 s.
OUTAGE_TOLERANCE = RENEW_DEADLINE - JITTER * RETRY - FAILURE_RETRY - REQUEST_TIMEOUT


@dataclass
class Estate:
    """Several exchanges, each with its workers, and who holds their Leases over time."""

    namespace: str
    exchanges: dict[str, Exchange]  # resource name -> exchange
    workers: dict[str, Workers]
    uids: dict[str, str] = field(default_factory=dict)
    # (when the read started, when it returned, holder per exchange): the state read is from
    # some moment between the two.
    samples: list[tuple[float, float, dict[str, str]]] = field(default_factory=list)

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
                started = time.monotonic()
                seen = holders(coordination, namespace)
                built.samples.append((started, time.monotonic(), seen))
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
    for moment, _, seen in estate.samples:
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
    for moment, _, seen in estate.samples:
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


def replica(
    start_operator: Callable[..., OperatorProcess],
    manager: ManagerEmulator,
    namespace: str,
    identity: str,
    kubeconfig: Path | None = None,
) -> OperatorProcess:
    """A sharded replica with its own OAuth client (so the Manager records whose write each one
    was), reaching the apiserver through ``kubeconfig`` if given (a proxy's)."""
    manager.set_client_secret(identity, CLIENT_SECRET)
    env = sharded(namespace, OAUTH_CLIENT_ID=identity)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return start_operator(namespace, replicas=1, identity=identity, **env)


@pytest.fixture
def apiserver_proxy(
    kubeconfig: Path, tmp_path: Path
) -> Iterator[Callable[[], tuple[TcpProxy, Path]]]:
    """Makes TCP proxies to the apiserver, each with a kubeconfig through it. Request it before
    ``start_operator``: the proxies then outlive the operators, which release on the way out."""
    proxies: list[TcpProxy] = []

    def make() -> tuple[TcpProxy, Path]:
        proxy = TcpProxy(*server_address(kubeconfig))
        proxies.append(proxy)
        path = tmp_path / f"through-{proxy.port}.kubeconfig"
        return proxy, kubeconfig_through(kubeconfig, proxy, path)

    yield make
    for proxy in proxies:
        proxy.close()


def writes_by(manager: ManagerEmulator, exchange: Exchange, client: str) -> list[float]:
    """When the Manager received each module write about ``exchange`` from ``client``."""
    return [w.time for w in manager.module_writes(exchange.exchange_id) if w.client == client]


def takeover(estate: Estate, name: str, old: str, since: float) -> tuple[float, float]:
    """(the last sample still naming ``old``, the first naming another) after ``since``: the
    other acquired the Lease between the two (a sample's moment is taken before its read)."""
    still = since
    for moment, _, seen in estate.samples:
        holder = seen.get(name, "")
        if moment < since or not holder:
            continue
        if holder != old:
            return still, moment
        still = moment
    raise AssertionError(f"{name} was never taken over from {old}")


def dump_tasks(operators: dict[str, OperatorProcess]) -> None:
    """A proof is about to fail: every replica writes its asyncio tasks, with the line each
    waits on, to its log (SIGUSR1), which the fixture prints at the end."""
    for op in operators.values():
        if op.alive():
            op.process.send_signal(signal.SIGUSR1)
    time.sleep(1.0)


def non_holder_writes(estate: Estate, manager: ManagerEmulator) -> list[tuple[str, str, float]]:
    """Manager writes by a replica that held the Lease neither at the last sample read wholly
    before the write nor at the first read wholly after it (exchange, replica, time). A read
    in flight when the write arrived may show the state before or after it, so it proves
    nothing either way (comparing the write with the read's start once blamed a holder's last
    write, sent before its release, on a read that returned after the release)."""
    wrong = []
    for name, exchange in estate.exchanges.items():
        timeline = [(started, ended, seen.get(name, "")) for started, ended, seen in estate.samples]
        for write in manager.module_writes(exchange.exchange_id):
            before = [holder for _, ended, holder in timeline if ended <= write.time][-1:]
            after = [holder for started, _, holder in timeline if started >= write.time][:1]
            if before and after and write.client not in before + after:
                wrong.append((name, str(write.client), write.time))
    return wrong


def unwritten_since(estate: Estate, manager: ManagerEmulator, since: float) -> list[str]:
    """Workers still beating whose Manager row nobody has written since ``since`` (lost writes:
    with a 2 s refreshInterval every row is written again within a few seconds)."""
    missing = []
    for name, exchange in estate.exchanges.items():
        for host in estate.workers[name].alive:
            if not any(
                at >= since for at, _, _ in manager_writes(manager, exchange.exchange_id, host)
            ):
                missing.append(host)
    return missing


def owned(operators: dict[str, OperatorProcess], namespace: str, name: str) -> float:
    """How many replicas believe they own the exchange (``overseer_exchange_owned``)."""
    labels = (f'namespace="{namespace}"', f'name="{name}"')  # "name" is metric()'s own argument
    return sum(
        float(line.rsplit(" ", 1)[1])
        for op in operators.values()
        if op.alive()
        for line in op.metrics().splitlines()
        if line.startswith("overseer_exchange_owned{") and all(label in line for label in labels)
    )


def lease_transitions(coordination: Coordination, namespace: str) -> dict[str, int]:
    return {
        lease["metadata"]["name"]: lease["spec"].get("leaseTransitions", 0)
        for lease in coordination.list_exchange_leases(namespace)
    }


def test_scale_1_2_3_moves_each_exchange_at_most_once_per_step(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    start_estate(estate, kubectl, amqp_url, {"inactiveAfter": "6s", "offlineAfter": "12s"})
    a = start_operator(namespace, replicas=1, identity="op-a", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a"])
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")
    resource = get_exchange(kubectl, namespace, "mx-0")
    assert resource["status"]["owner"] == "op-a"
    wide = kubectl("get", "mx", "-n", namespace, "-o", "wide").stdout
    assert "OWNER" in wide and "op-a" in wide

    step_1 = time.monotonic()
    b = start_operator(namespace, replicas=1, identity="op-b", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a", "op-b"])
    step_2 = time.monotonic()
    c = start_operator(namespace, replicas=1, identity="op-c", **sharded(namespace))
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


@pytest.mark.parametrize("estate", [1], indirect=True)
def test_a_rebalance_while_the_manager_is_down_judges_nobody_by_the_old_owners_row(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    """The old owner lives on, but the Manager was down while it handed the exchange over, so
    its own row stayed. That row is not a worker's: the new owner deletes it, never writes it
    inactive. (Found by the suite run with two replicas: the row went inactive, then offline.)"""
    start_estate(estate, kubectl, amqp_url, {"inactiveAfter": "3s", "offlineAfter": "6s"})
    exchange = estate.exchanges["mx-0"]
    a = start_operator(namespace, replicas=1, identity="op-a", **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a"])
    eventually(
        lambda: (
            all_workers_active(estate, manager)
            and manager_states(manager, exchange.exchange_id).get("op-a") == "active"
        ),
        timeout=60,
        what="the workers and op-a's own row active",
    )
    uid = estate.uids["mx-0"]
    newcomer = next(
        f"op-{i}" for i in range(2, 100) if preferred(uid, ["op-a", f"op-{i}"]) != "op-a"
    )

    manager.set_unavailable(True)
    b = start_operator(namespace, replicas=1, identity=newcomer, **sharded(namespace))
    wait_for_owners(estate, coordination, ["op-a", newcomer])
    assert "op-a" in manager_states(manager, exchange.exchange_id)  # its DELETE failed
    manager.set_unavailable(False)
    eventually(
        lambda: "op-a" not in manager_states(manager, exchange.exchange_id),
        timeout=30,
        what="op-a's own row removed by the new owner",
    )
    time.sleep(8)  # past offlineAfter
    calls = manager_calls(manager, exchange.exchange_id, "op-a")
    print(f"\nREBALANCE, MANAGER DOWN: op-a's row {calls}; fenced {fenced(a, b)}")
    assert ("POST", "inactive") not in calls, calls
    assert false_transitions(estate, manager) == []
    assert all_workers_active(estate, manager)
    assert a.alive() and fenced(a, b) == 0


def test_sigterm_then_sigkill_of_an_owner(
    kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    # Manager rows refreshed every 2 s: a silent worker's row proves its silence to a successor.
    start_estate(
        estate, kubectl, amqp_url, {"inactiveAfter": "20s", "offlineAfter": "40s"}, refresh="2s"
    )
    operators = {
        identity: start_operator(namespace, replicas=1, identity=identity, **sharded(namespace))
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
    operators["op-c"] = start_operator(namespace, replicas=1, identity="op-c", **sharded(namespace))
    owners = wait_for_owners(estate, coordination, [survivor, "op-c"])

    # SIGKILL: a worker of the victim's exchange went silent 3 s before the crash.
    crashed = owners["mx-0"]
    silent_name, silent_host = "mx-0", estate.hosts("mx-0")[0]
    del estate.workers[silent_name].alive[silent_host]
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
    # From its real last heartbeat (the emulator stamps requests with time.monotonic() too).
    late_by = inactive_at - (estate.workers[silent_name].last_beat[silent_host] + 20.0)
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
    # Inactive by its threshold plus the takeover gap and the successor's start (seed, connect,
    # backlog): without proof of a whole threshold the successor gives a full one. Never early.
    assert -1.0 <= late_by <= takeover + 4.0
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
    a = start_operator(namespace, replicas=1, identity="op-a", **env)
    b = start_operator(namespace, replicas=1, identity="op-b", **env)
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


def test_an_owner_cut_off_from_the_apiserver_stops_writing_before_another_acquires(
    apiserver_proxy, kubectl, namespace, manager, amqp_url, estate, start_operator, coordination
):
    """Each replica reaches the apiserver through its own proxy; the one owning more exchanges is
    black-holed (a partition: the broker and the Manager stay reachable), so its renewals hang.
    It must stop every write at its renew deadline (RD = 6 s after the start of its last
    renew), before the other may acquire (LD = 8 s after it last saw that renew): its last
    Manager write about each exchange comes before the last sample still naming it as holder.
    Let back in, it writes nothing as a non-holder and the distribution returns to HRW."""
    start_estate(
        estate, kubectl, amqp_url, {"inactiveAfter": "20s", "offlineAfter": "40s"}, refresh="2s"
    )
    routes = {identity: apiserver_proxy() for identity in ("op-a", "op-b")}
    operators = {
        identity: replica(start_operator, manager, namespace, identity, config)
        for identity, (_, config) in routes.items()
    }
    owners = wait_for_owners(estate, coordination, list(operators))
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")
    victim = max(operators, key=lambda op: list(owners.values()).count(op))
    other = next(op for op in operators if op != victim)
    cut_off = [name for name, holder in owners.items() if holder == victim]
    time.sleep(3)  # the victim refreshes its Manager rows every 2 s: it is writing at the cut

    cut = time.monotonic()
    routes[victim][0].set_mode(Mode.BLACKHOLE)
    eventually(
        lambda: all(holders(coordination, namespace)[name] == other for name in cut_off),
        timeout=LEASE_DURATION + 10,
        what=f"{other} acquiring {cut_off}",
    )
    time.sleep(2)  # a write of the victim after the takeover would show now
    handovers, margins, stops = [], [], []
    for name in cut_off:
        last_named, taken = takeover(estate, name, victim, cut)
        last_write = max(writes_by(manager, estate.exchanges[name], victim))
        handovers.append(taken - cut)
        margins.append(last_named - last_write)
        stops.append(last_write - cut)
    taken_at = time.monotonic()

    routes[victim][0].set_mode(Mode.PASS)
    wait_for_owners(estate, coordination, list(operators), timeout=30)
    time.sleep(4)
    wrong = false_transitions(estate, manager)
    intruders = non_holder_writes(estate, manager)
    unwritten = unwritten_since(estate, manager, taken_at)
    fenced_writes = fenced(*operators.values())
    print(
        f"\nCUT OFF {victim} ({len(cut_off)} exchanges): taken over {min(handovers):.1f}-"
        f"{max(handovers):.1f}s after the cut; its last Manager write {max(stops):.2f}s after "
        f"the cut, >= {min(margins):.2f}s before the other acquired; false transitions "
        f"{len(wrong)}; writes by a non-holder {len(intruders)}; Manager rows not rewritten "
        f"after the takeover {len(unwritten)}; fenced writes {fenced_writes}"
    )
    if wrong or intruders or unwritten:
        dump_tasks(operators)
    assert all(margin > 0 for margin in margins)  # stopped before anyone else could acquire
    assert max(stops) <= RENEW_DEADLINE + 1.0
    assert max(handovers) <= LEASE_DURATION + FAILURE_RETRY + 5.0
    assert wrong == []
    assert intruders == []
    assert unwritten == []
    assert all_workers_active(estate, manager)
    for name, holder in holders(coordination, namespace).items():
        assert get_exchange(kubectl, namespace, name)["status"]["ownerEpoch"].startswith(
            f"{holder}/"
        )


# docs/sharding.md "Timings, by arithmetic", scaled: tolerated 6 - 1.2 x 1 - 0.5 - 2 = 2.3 s,
# so 2 s costs no Lease; 12 s is 1.5 LD (the docs' 2 min is 1.2 LD of 100 s): every Lease lapses.
SHORT_OUTAGE, LONG_OUTAGE = 2.0, 1.5 * LEASE_DURATION


@pytest.mark.parametrize("mode", [Mode.REFUSE, Mode.BLACKHOLE], ids=lambda mode: mode.value)
def test_apiserver_down_within_the_tolerance_and_beyond_the_lease_duration(
    mode, apiserver_proxy, kubectl, namespace, manager, amqp_url, estate, start_operator,
    coordination,
):  # fmt: skip
    """The apiserver "down" for every replica: one proxy in front of it that all of them use,
    cut (connections refused, as a stopped apiserver; or black-holed, as a partition where
    requests hang) while the test reads the apiserver directly.

    Scaled arithmetic (docs/sharding.md): an outage costs no Lease up to RD - 1.2 RP - f - t =
    6 - 1.2 - 0.5 - 2 = 2.3 s, so a 2 s outage must move nothing (no leaseTransitions, no claim
    lost). A 12 s outage (1.5 LD, as 2 min is 1.2 LD of 100 s) lapses every Lease: every owner
    stops writing by its renew deadline (no Manager write from 7 s after the cut), and
    afterwards each exchange has exactly one owner (Lease, status and the replicas' own gauge
    agree), with no verdict: thresholds 8 s / 16 s are shorter than the outage, so judging the
    gap as silence would flip every worker."""
    assert SHORT_OUTAGE < OUTAGE_TOLERANCE < LEASE_DURATION < LONG_OUTAGE
    start_estate(
        estate, kubectl, amqp_url, {"inactiveAfter": "8s", "offlineAfter": "16s"}, refresh="2s"
    )
    proxy, config = apiserver_proxy()
    operators = {
        identity: replica(start_operator, manager, namespace, identity, config)
        for identity in ("op-a", "op-b")
    }
    owners = wait_for_owners(estate, coordination, list(operators))
    eventually(lambda: all_workers_active(estate, manager), timeout=60, what="workers active")

    def lost() -> float:
        return sum(
            op.metric("overseer_ownership_changes_total", change="lost")
            for op in operators.values()
        )

    # Within the tolerance: nothing moves.
    transitions = lease_transitions(coordination, namespace)
    short_cut = time.monotonic()
    proxy.set_mode(mode)
    time.sleep(SHORT_OUTAGE)
    proxy.set_mode(Mode.PASS)
    time.sleep(LEASE_DURATION + 2)  # past any expiry the outage could have caused
    short_moves = moves(estate, short_cut, time.monotonic())
    short_lost = lost()
    assert lease_transitions(coordination, namespace) == transitions
    assert short_lost == 0
    assert holders(coordination, namespace) == owners

    # Beyond the Lease duration: every claim lapses; afterwards exactly one owner each.
    cut = time.monotonic()
    proxy.set_mode(mode)
    time.sleep(LONG_OUTAGE)
    proxy.set_mode(Mode.PASS)
    restored = time.monotonic()
    wait_for_owners(estate, coordination, list(operators), timeout=40)
    settled = time.monotonic() - restored
    time.sleep(8 + 3)  # past inactiveAfter: a verdict caused by the outage would show
    quiet_from = cut + RENEW_DEADLINE + 1.0
    during = [
        write.time - cut
        for exchange in estate.exchanges.values()
        for write in manager.module_writes(exchange.exchange_id)
        if quiet_from <= write.time < restored
    ]
    last_write = max(
        write.time - cut
        for exchange in estate.exchanges.values()
        for write in manager.module_writes(exchange.exchange_id)
        if write.time < restored
    )
    wrong = false_transitions(estate, manager)
    intruders = non_holder_writes(estate, manager)
    unwritten = unwritten_since(estate, manager, restored + settled)
    long_lost = lost()
    print(
        f"\nAPISERVER {mode.value.upper()}: {SHORT_OUTAGE:.0f}s (tolerated "
        f"{OUTAGE_TOLERANCE:.1f}s): moves {sum(short_moves.values())}, claims lost "
        f"{short_lost:.0f}; {LONG_OUTAGE:.0f}s: claims lost {long_lost:.0f} of "
        f"{len(estate.exchanges)}, last Manager write {last_write:.2f}s after the cut (renew "
        f"deadline {RENEW_DEADLINE:.0f}s), writes after it {len(during)}, one owner each "
        f"{settled:.1f}s after the apiserver came back; false transitions {len(wrong)}; "
        f"writes by a non-holder {len(intruders)}; rows not rewritten {len(unwritten)}; "
        f"fenced writes {fenced(*operators.values())}"
    )
    if wrong or intruders or unwritten:
        dump_tasks(operators)
    assert long_lost >= len(estate.exchanges)
    assert during == []
    assert wrong == []
    assert intruders == []
    assert unwritten == []
    assert all_workers_active(estate, manager)
    for name, holder in holders(coordination, namespace).items():
        assert owned(operators, namespace, name) == 1
        status = get_exchange(kubectl, namespace, name)["status"]
        assert status["owner"] == holder and status["ownerEpoch"].startswith(f"{holder}/")

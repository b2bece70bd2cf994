"""A lost claim stops its monitor synchronously (``Coordinator.lose`` calls ``Claim.on_lost``),
before the daemon's next look at its stop flag and before anything else on the loop runs; and who
the coordinator knows as its peers, whose own rows a new owner removes without a verdict."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest

from overseer_operator.kube import KubeApi
from overseer_operator.leases import LeaseRecord
from overseer_operator.ownership import Timings
from overseer_operator.sharding import Coordinator


async def test_a_lost_claim_halts_its_monitor_before_the_step_down_is_even_seen() -> None:
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))  # the Event post fails
    coordinator = Coordinator(unused, unused, "ops", "op-a", Timings())
    claim = coordinator.register("uid-1", "ns", "mx")
    claim.held = True
    seen: list[tuple[bool, bool]] = []  # (held, step-down signalled) when halted
    claim.on_lost = lambda: seen.append((claim.held, claim.step_down.is_set()))
    coordinator.lose(claim, "the renew deadline passed")
    assert seen == [(False, False)]
    assert claim.lost and claim.step_down.is_set()
    coordinator.lose(claim, "again")  # losing a claim no longer held does nothing
    assert len(seen) == 1
    for task in list(coordinator._side_tasks):  # the OwnerLost Event, refused by port 9
        await task
    await unused.aclose()


async def test_every_other_holder_seen_is_a_peer_and_stays_one() -> None:
    """A replica that handed an exchange over is still a replica once it released its member
    Lease on the way out: its own row in an exchange is never a worker's."""
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))
    coordinator = Coordinator(unused, unused, "ops", "op-a", Timings())
    coordinator._see(LeaseRecord("overseer-member-op-b", "member", "op-b"))
    coordinator._see(LeaseRecord("overseer-mx-u1", "exchange", "op-c"))
    coordinator._see(LeaseRecord("overseer-mx-u2", "exchange", "op-a"))
    coordinator._see(LeaseRecord("overseer-member-op-b", "member", ""))  # released
    assert coordinator.peers == {"op-b", "op-c"}
    await unused.aclose()


class SlowLeases:
    """The Lease API, answering the create only when the test says so."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.deleted: list[LeaseRecord] = []
        self.replaced: list[LeaseRecord] = []

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        await self.answer.wait()
        return replace(record, resource_version="1")

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        self.replaced.append(record)
        return replace(record, resource_version="2")

    async def delete(self, record: LeaseRecord) -> None:
        self.deleted.append(record)


@pytest.mark.parametrize("gone", [True, False], ids=["exchange deleted", "daemon stopped"])
async def test_a_lease_acquired_while_its_daemon_stopped_is_given_back_at_once(gone) -> None:
    """The exchange's daemon exits (kopf stopped it) while this replica's PUT taking the Lease
    is in flight: nobody here would renew it or clean it up, so it is deleted (the exchange is
    gone) or released at once, not left held until it lapses and the orphan collector finds
    it ten minutes later."""
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))
    coordinator = Coordinator(unused, unused, "ops", "op-a", Timings())
    leases = SlowLeases()
    coordinator.api = leases  # type: ignore[assignment]
    claim = coordinator.register("uid-1", "ns", "mx")
    acquiring = asyncio.create_task(coordinator._acquire(claim))
    await asyncio.sleep(0)
    claim.retired, claim.gone = True, gone  # what monitor_while_owned does on its way out
    coordinator.unregister(claim)
    leases.answer.set()
    await acquiring
    assert not claim.held
    if gone:
        assert [record.holder for record in leases.deleted] == ["op-a"]
    else:
        assert [record.holder for record in leases.replaced] == [""]
    # A daemon started again for the same exchange gets a fresh claim, never the retired one.
    assert coordinator.register("uid-1", "ns", "mx") is not claim
    for task in list(coordinator._side_tasks):
        await task
    await unused.aclose()


async def test_a_lease_is_acquired_only_for_a_daemon_waiting_for_it() -> None:
    """A daemon still shutting its previous monitor down (stuck, say, in a call) must not have
    its exchange's Lease taken again on its behalf: held and unmonitored, nobody else could
    take it over. Once the daemon waits for the Lease, it is acquired."""
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))
    coordinator = Coordinator(unused, unused, "ops", "op-a", Timings())
    leases = SlowLeases()
    leases.answer.set()
    coordinator.api = leases  # type: ignore[assignment]
    claim = coordinator.register("uid-1", "ns", "mx")
    await coordinator._carry_out(coordinator._clock())
    assert not claim.held
    stopped = asyncio.Event()
    waiting = asyncio.create_task(claim.wait_held(StoppedFlag(stopped)))
    await asyncio.sleep(0)
    assert claim.waiting
    await coordinator._carry_out(coordinator._clock())
    assert claim.held and await waiting is True
    assert not claim.waiting
    for task in list(coordinator._side_tasks):
        await task
    await unused.aclose()


class StoppedFlag:
    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def __bool__(self) -> bool:
        return self._event.is_set()

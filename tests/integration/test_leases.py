"""The Lease calls against the real apiserver: two writers on one resourceVersion, one wins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from overseer_operator.kube import KubeApi, KubeApiError
from overseer_operator.leases import EXCHANGE, LeaseApi, LeaseRecord

pytestmark = pytest.mark.testbed


@pytest.fixture
def kube(kubeconfig, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return KubeApi.from_configuration()  # the operator's own credentials loader


async def test_two_replicas_racing_for_a_free_lease_one_wins(kube, namespace):
    api = LeaseApi(kube, namespace, timeout=5.0)
    try:
        free = await api.create(LeaseRecord("overseer-mx-race", EXCHANGE, exchange="ns/mx"))
        now = datetime.now(UTC)
        outcomes = await asyncio.gather(
            api.replace(free.held_by("op-a", now, 8.0)),
            api.replace(free.held_by("op-b", now, 8.0)),
            return_exceptions=True,
        )
        won = [outcome for outcome in outcomes if isinstance(outcome, LeaseRecord)]
        lost = [outcome for outcome in outcomes if isinstance(outcome, KubeApiError)]
        assert len(won) == 1 and len(lost) == 1
        assert lost[0].status == 409
        stored = await api.get("overseer-mx-race")
        assert stored is not None and stored.holder == won[0].holder
        assert stored.transitions == 1
        # Released the client-go way, then deleted only if unchanged.
        released = await api.replace(stored.released())
        assert released.holder == "" and released.duration == 1.0
        with pytest.raises(KubeApiError) as stale:
            await api.delete(stored)  # an old resourceVersion: refused
        assert stale.value.status == 409
        await api.delete(released)
        assert await api.get("overseer-mx-race") is None
    finally:
        await kube.aclose()


async def test_a_watch_sees_the_leases_of_the_operator_only(kube, namespace):
    api = LeaseApi(kube, namespace, timeout=5.0)
    try:
        _, version = await api.list()
        await api.create(LeaseRecord("overseer-mx-watched", EXCHANGE, exchange="ns/mx"))
        events = api.watch(version, 5)
        kind, record, _ = await asyncio.wait_for(anext(events), 10)
        await events.aclose()
        assert kind == "ADDED" and record is not None and record.name == "overseer-mx-watched"
        assert record.exchange == "ns/mx"
    finally:
        await kube.aclose()

"""The operator's start and clean-up (``handlers.configure``, ``handlers.close``), against a local
API server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import kopf
import pytest

from overseer_operator import defaults, handlers, kube
from overseer_operator.leases import EXCHANGE, LeaseRecord
from tests.http_server import json_server


def status_patch_or_watch(request_line: bytes) -> bool:
    return request_line.startswith(b"PATCH ") or b"watch=1" in request_line


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(2.0):
        while not predicate():  # noqa: ASYNC110 - the server only counts
            await asyncio.sleep(0.01)


async def test_a_lease_renewal_never_waits_for_the_connections_of_status_patches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a restart a hundred exchanges patch their statuses at once over a few connections: a
    Lease renewal queued behind them could, with a slow API server, miss its deadline and cost
    the replica its exchanges for nothing. The coordinator's Lease calls have connections of
    their own (its Lease watch holds one for minutes too), closed at clean-up like the others."""
    async with json_server(hold=status_patch_or_watch) as server:
        monkeypatch.setattr(
            kube, "load_configuration", lambda: kopf.ConnectionInfo(server=server.url)
        )
        for name, value in {"SHARDING": "on", "POD_NAMESPACE": "ops", "POD_NAME": "op-a"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("EXCHANGE_ID", raising=False)  # no legacy seed
        memo = kopf.Memo()
        await handlers.configure(
            settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger(__name__)
        )
        patches = [
            asyncio.create_task(memo.kube.patch_status("ns", f"mx-{index}", {}))
            for index in range(defaults.KUBERNETES_CONNECTIONS)
        ]
        try:
            # As many requests held as the status client has connections (before the Lease
            # calls had their own, the watch and the patches took every one of them).
            await until(lambda: server.held >= defaults.KUBERNETES_CONNECTIONS)
            renewal = LeaseRecord("overseer-mx-uid-1", EXCHANGE, "op-a", resource_version="7")
            await asyncio.wait_for(memo.coordinator.api.replace(renewal), 2.0)
        finally:
            server.release.set()
            await asyncio.gather(*patches)
            await handlers.close(memo)
        with contextlib.suppress(TimeoutError):  # the server sees every connection closed
            await until(lambda: server.open == 0)
        assert server.open == 0


@pytest.mark.parametrize(("relookup", "reused_for"), [(None, 10.0), ("4s", 2.0)])
async def test_a_broker_answer_is_never_reused_past_half_the_relookup_interval(
    monkeypatch: pytest.MonkeyPatch, relookup: str | None, reused_for: float
) -> None:
    """An administrator who shortens BROKER_RELOOKUP_INTERVAL to pick rotated brokers up sooner
    must not get the shared answer of up to 10 s ago at each relookup."""
    async with json_server() as server:
        monkeypatch.setattr(
            kube, "load_configuration", lambda: kopf.ConnectionInfo(server=server.url)
        )
        monkeypatch.delenv("EXCHANGE_ID", raising=False)  # no legacy seed
        monkeypatch.delenv("SHARDING", raising=False)
        if relookup is None:
            monkeypatch.delenv("BROKER_RELOOKUP_INTERVAL", raising=False)
        else:
            monkeypatch.setenv("BROKER_RELOOKUP_INTERVAL", relookup)
        memo = kopf.Memo()
        await handlers.configure(
            settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger(__name__)
        )
        try:
            assert memo.broker_directory.ttl == reused_for
        finally:
            await handlers.close(memo)

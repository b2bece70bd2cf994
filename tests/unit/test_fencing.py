"""A lost claim stops its monitor synchronously (``Coordinator.lose`` calls ``Claim.on_lost``),
before the daemon's next look at its stop flag and before anything else on the loop runs."""

from __future__ import annotations

import httpx

from overseer_operator.kube import KubeApi
from overseer_operator.ownership import Timings
from overseer_operator.sharding import Coordinator


async def test_a_lost_claim_halts_its_monitor_before_the_step_down_is_even_seen() -> None:
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))  # the Event post fails
    coordinator = Coordinator(unused, "ops", "op-a", Timings())
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

"""Several replicas sharing the exchanges: Leases held, renewed, handed over and fenced.

One ``Coordinator`` per operator process keeps its member Lease renewed, watches every Lease of
the operator (by label, no polling), and carries out ``ownership.plan``: it acquires the exchanges
it should own and asks the daemons of those it should hand over to step down. Each kopf daemon
(every replica runs one per MessagingExchange) holds a ``Claim`` and monitors its exchange only
while the claim is held (``monitor_while_owned``).

The order of a graceful handover is the safety property: the old owner stops consuming, flushes
what it owes the Manager, writes a final status (fresh evidence), and only then releases the
Lease; the new owner, woken by the watch, acquires it, takes the status over with a new
``ownerEpoch`` and starts a monitor exactly as after a restart (seeded from that status and the
Manager, backlog drained before any verdict). A holder whose renew deadline passes stops every
write at once (``Claim.lost``), ``fencing_gap`` seconds before anybody else may acquire, and a
status patch from a stale owner is refused by the apiserver (a JSON-patch ``test`` on
``status.ownerEpoch``) and counted in ``overseer_fenced_writes_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from overseer_operator import metrics, ownership
from overseer_operator.aiotools import wait_event
from overseer_operator.kube import KubeApi, KubeApiError
from overseer_operator.leases import (
    EXCHANGE,
    MEMBER,
    LeaseApi,
    LeaseRecord,
    exchange_lease_name,
    member_lease_name,
)
from overseer_operator.ownership import Members, Observed, Timings
from overseer_operator.seeding import seconds_since
from overseer_operator.times import parse_time

logger = logging.getLogger(__name__)

WATCH_TIMEOUT = 300.0


class Stopped(Protocol):
    def __bool__(self) -> bool: ...
    async def wait(self, timeout: float | None = None) -> bool: ...  # noqa: ASYNC109 - kopf's API


class Claim:
    """One exchange's Lease, as the daemon of that exchange in this replica sees it."""

    def __init__(self, coordinator: Coordinator, uid: str, namespace: str, name: str) -> None:
        self._coordinator = coordinator
        self.key = uid
        self.namespace, self.name = namespace, name
        self.lease_name = exchange_lease_name(uid)
        self.record: LeaseRecord | None = None  # as last written by us, while held
        self.held = False
        self.lost = False  # stop without another write: the Lease may be someone else's
        self.handing_over = False
        self.renewed_at = float("-inf")  # local start of the last successful renew
        self.next_renew_at = float("inf")
        self.epoch: str | None = None
        self.acquired = asyncio.Event()
        self.step_down = asyncio.Event()
        self.lock = asyncio.Lock()
        # Called synchronously the moment the claim is lost: the running monitor's ``halt``.
        self.on_lost: Callable[[], None] | None = None
        # The daemon has stopped: a Lease acquired from now on is given back at once (deleted,
        # if the exchange is ``gone``), not held by a replica that no longer monitors it.
        self.retired = False
        self.gone = False
        # The daemon waits for the Lease (``wait_held``): only then is it acquired. A daemon
        # still shutting the previous monitor down would leave it held and unmonitored.
        self.waiting = False

    @property
    def involved(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.key}

    async def wait_held(self, stopped: Stopped) -> bool:
        """Until this replica holds the Lease (True) or the daemon is stopped (False). A Lease
        to hand over before any monitor ran (acquired as a backup, say) is released here: there
        is nothing to flush, and nothing else would release it."""
        self.waiting = True
        self._coordinator.wake()
        try:
            while not stopped:
                if self.held and not self.step_down.is_set():
                    return True
                if self.held and self.handing_over:
                    await self.release()
                await wait_event(self.acquired, 0.5)
            return False
        finally:
            self.waiting = False

    def fence(self) -> None:
        """A write was refused for a stale epoch: someone else owns the exchange."""
        self._coordinator.lose(self, "a status write was fenced")

    async def release(self) -> None:
        await self._coordinator.release(self)

    async def delete_lease(self) -> None:
        await self._coordinator.delete(self)

    async def wait_released(self, seconds: float) -> None:
        """Until nobody holds the Lease (deleted, released or expired), or ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (  # noqa: ASYNC110
            loop.time() < deadline
            and not self.held  # acquired by this replica meanwhile: its own clean-up, then
            and self._coordinator.holder(self.lease_name)
        ):
            await asyncio.sleep(0.2)


class StepDown:
    """The daemon's ``stopped`` flag, also raised when this replica must let the exchange go."""

    def __init__(self, stopped: Any, claim: Claim, on_stop: Callable[[Any], None]) -> None:
        self._stopped = stopped
        self._claim = claim
        self._on_stop = on_stop

    @property
    def reason(self) -> Any:
        return getattr(self._stopped, "reason", None)

    @property
    def fenced(self) -> bool:
        """No write at all on the way out (the monitor checks it)."""
        return self._claim.lost

    @property
    def handover(self) -> bool:
        """Flush what is owed before the final status (the monitor checks it)."""
        return not self._claim.lost

    def __bool__(self) -> bool:
        if self._stopped:
            self._on_stop(self.reason)
            return True
        return self._claim.step_down.is_set()

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - kopf's API
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self:
            left = 0.2 if deadline is None else min(0.2, deadline - loop.time())
            if left <= 0:
                break
            await wait_event(self._claim.step_down, left)
        return bool(self)


class Coordinator:
    def __init__(
        self,
        kube: KubeApi,
        lease_kube: KubeApi,
        namespace: str,
        identity: str,
        timings: Timings,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kube = kube  # the status takeover and Events, as the monitors write them
        # The Lease calls' own client: a renewal never waits for a connection behind a burst of
        # status patches (a restart's hundreds), where a slow apiserver could make it late.
        self.api = LeaseApi(lease_kube, namespace, timings.request_timeout)
        self.namespace = namespace
        self.identity = identity
        self.timings = timings
        self._loop = asyncio.get_running_loop()
        self._clock = self._loop.time
        self._wall = wall_clock
        self.members = Members(timings, identity, self._clock())
        self.claims: dict[str, Claim] = {}
        self.records: dict[str, LeaseRecord] = {}  # every Lease seen, by name
        self.observed: dict[str, Observed] = {}  # exchange Leases, by name
        # Every other replica ever seen holding a Lease: their own module rows are not workers'.
        self.peers: set[str] = set()
        self._absent_since: dict[str, float] = {}
        self._member: LeaseRecord | None = None
        self._member_renewed_at = self._clock()
        self._new_tenure = True
        self._last_handover_at = float("-inf")
        self._synced = False
        self._leaving = False
        self._left: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        for name, factory in (
            ("member", self._member_loop),
            ("watch", self._watch_loop),
            ("decide", self._decide_loop),
            ("gc", self._gc_loop),
        ):
            self._tasks.append(
                asyncio.create_task(_forever(name, factory), name=f"sharding-{name}")
            )

    async def stop(self) -> None:
        self.leave()
        if self._left is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._left), self.timings.request_timeout)
        tasks, self._tasks = self._tasks, []
        for task in tasks + list(self._side_tasks):
            task.cancel()
        await asyncio.gather(*tasks, *self._side_tasks, return_exceptions=True)

    def leave(self) -> None:
        """The operator is exiting: stop being a member first, so that the exchanges this replica
        releases next are taken at once by the replicas that remain."""
        if self._leaving:
            return
        self._leaving = True
        self.members.self_ok = False
        self._left = self._spawn(self._release_member())

    def on_daemon_stop(self, reason: Any) -> None:
        import kopf

        if reason is not None and reason & kopf.DaemonStoppingReason.OPERATOR_EXITING:
            self.leave()

    # --- what the daemons use ---------------------------------------------------------------

    def register(self, uid: str, namespace: str, name: str) -> Claim:
        claim = self.claims.get(uid)
        if claim is None or claim.retired:
            claim = Claim(self, uid, namespace, name)
        self.claims[uid] = claim
        self._absent_since.setdefault(uid, self._clock())
        self._wake.set()
        return claim

    def wake(self) -> None:
        """Decide again now (a daemon is ready to monitor)."""
        self._wake.set()

    def unregister(self, claim: Claim) -> None:
        if self.claims.get(claim.key) is claim and not claim.held:
            del self.claims[claim.key]
            metrics.EXCHANGE_OWNED.labels(claim.namespace, claim.name).set(0)

    def holder(self, lease_name: str) -> str:
        """Who holds a Lease, by local observation ("" if nobody)."""
        observed = self.observed.get(lease_name)
        if observed is None or observed.free(self._clock(), self.timings.lease_duration):
            return ""
        return observed.holder

    # --- member Lease -----------------------------------------------------------------------

    async def _member_loop(self) -> None:
        while not self._leaving:
            started = self._clock()
            try:
                await self._renew_member()
            except KubeApiError as error:
                logger.warning("Member Lease of %s not renewed: %s", self.identity, error)
                if self._clock() - self._member_renewed_at >= self.timings.member_duration:
                    self.members.self_ok = False
                await asyncio.sleep(self.timings.failure_retry)
                continue
            self._member_renewed_at = started
            self.members.self_ok = not self._leaving
            await asyncio.sleep(self.timings.retry_period * random.uniform(1.0, ownership.JITTER))

    async def _renew_member(self) -> None:
        name = member_lease_name(self.identity)
        record = self._member
        if record is None:
            record = await self.api.get(name) or LeaseRecord(name, MEMBER)
        if self._new_tenure:
            record = replace(record, holder="")  # a new process: a new tenure (hysteresis)
        wanted = record.held_by(self.identity, self._wall(), self.timings.member_duration)
        try:
            written = (
                await self.api.replace(wanted)
                if wanted.resource_version
                else await self.api.create(wanted)
            )
        except KubeApiError as error:
            if error.status in (404, 409):
                self._member = None  # read it again next time
            raise
        self._member, self._new_tenure = written, False
        self._see(written)

    async def _release_member(self) -> None:
        record = self._member
        if record is None:
            return
        with contextlib.suppress(KubeApiError):
            self._see(await self.api.replace(record.released()))

    # --- observing Leases -------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            try:
                items, version = await self.api.list()
                self._reset(items)
                while True:
                    async for kind, record, seen in self.api.watch(version, WATCH_TIMEOUT):
                        version = seen
                        if record is not None:
                            self._see(record, deleted=kind == "DELETED")
            except KubeApiError as error:
                if error.status != 410:
                    logger.warning("Watching Leases in %s: %s", self.namespace, error)
                    await asyncio.sleep(self.timings.failure_retry)

    def _reset(self, items: list[LeaseRecord]) -> None:
        names = {record.name for record in items}
        for name in list(self.records):
            if name not in names:
                self._see(self.records[name], deleted=True)
        for record in items:
            self._see(record)
        self._synced = True

    def _see(self, record: LeaseRecord, deleted: bool = False) -> None:
        now = self._clock()
        name = record.name
        observations = self.members.leases if record.role == MEMBER else self.observed
        if deleted:
            self.records.pop(name, None)
            observations.pop(name, None)
            if record.role == EXCHANGE:
                self._absent_since[name.removeprefix(exchange_lease_name(""))] = now
        else:
            self.records[name] = record
            if record.holder and record.holder != self.identity:
                self.peers.add(record.holder)
            wall, skew = self._wall(), self.timings.clock_skew
            acquired, renewed = record.acquired_at(), parse_time(record.renew_time)
            tenure_age = 0.0 if acquired is None else seconds_since(acquired, wall) - skew
            observations[name] = ownership.observe(
                observations.get(name),
                record.holder,
                (record.holder, record.renew_time, record.transitions),
                record.acquire_time,
                tenure_age,
                now,
                0.0 if renewed is None else seconds_since(renewed, wall) - skew,
            )
        self._wake.set()

    # --- deciding ---------------------------------------------------------------------------

    async def _decide_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            self._renew_due(now)
            self._enforce_deadlines(now)
            if self._synced and not self._leaving:
                await self._carry_out(now)
            metrics.MEMBERS.set(len(self.members.eligible(self._clock())))
            await wait_event(self._wake, self._next_wake() - self._clock())

    def _next_wake(self) -> float:
        now = self._clock()
        moments = [now + self.timings.retry_period]
        for claim in self.claims.values():
            if claim.held:
                moments += [claim.next_renew_at, claim.renewed_at + self.timings.renew_deadline]
        for observed in self.observed.values():
            moments.append(observed.free_since(self.timings.lease_duration))
            moments.append(
                observed.free_since(self.timings.lease_duration) + self.timings.backup_after
            )
        for lease in self.members.leases.values():
            moments.append(lease.free_since(self.timings.member_duration))
            moments.append(lease.first_seen + self.timings.eligible_after - lease.tenure_age)
        moments.append(self.members.started_at + self.timings.eligible_after)
        since = self.members.eligible_since.values()
        moments += [moment + self.timings.eligible_after for moment in since]
        moments.append(self._last_handover_at + self.timings.handover_interval)
        return max(now + 0.01, min(moment for moment in moments if moment > now))

    async def _carry_out(self, now: float) -> None:
        keys = {uid: claim for uid, claim in self.claims.items()}
        leases = {
            uid: observed
            for uid in keys
            if (observed := self.observed.get(exchange_lease_name(uid))) is not None
        }
        held = {uid for uid, claim in keys.items() if claim.held and not claim.handing_over}
        plan = ownership.plan(
            now,
            self.identity,
            keys,
            leases,
            held,
            self.members,
            self.timings,
            self._last_handover_at,
            self._absent_since,
        )
        ready = [keys[uid] for uid in plan.acquire if keys[uid].waiting]
        if ready:
            await asyncio.gather(*(self._acquire(claim) for claim in ready))
        for uid in plan.release:
            claim = keys[uid]
            self._last_handover_at = now
            claim.handing_over = True
            claim.step_down.set()
            metrics.OWNERSHIP_CHANGES.labels(claim.namespace, claim.name, "handover").inc()
            logger.info(
                "%s/%s: handing over to %s",
                claim.namespace,
                claim.name,
                ownership.preferred(uid, self.members.eligible(now)),
            )

    async def _acquire(self, claim: Claim) -> None:
        async with claim.lock:
            if claim.held or claim.retired:
                return
            current = self.records.get(claim.lease_name)
            started, wall = self._clock(), self._wall()
            base = (
                replace(current, holder="")
                if current is not None
                else LeaseRecord(
                    claim.lease_name, EXCHANGE, exchange=f"{claim.namespace}/{claim.name}"
                )
            )
            wanted = base.held_by(self.identity, wall, self.timings.lease_duration)
            try:
                written = (
                    await self.api.replace(wanted)
                    if current is not None
                    else await self.api.create(wanted)
                )
            except KubeApiError as error:
                outcome = "conflict" if error.status in (404, 409) else "failure"
                metrics.LEASE_CALLS.labels("acquire", outcome).inc()
                logger.info("%s/%s: not acquired: %s", claim.namespace, claim.name, error)
                return
            metrics.LEASE_CALLS.labels("acquire", "success").inc()
            self._see(written)
            if claim.retired:  # the daemon stopped during the PUT: nobody would renew it
                with contextlib.suppress(KubeApiError):
                    if claim.gone:
                        await self.api.delete(written)
                    else:
                        self._see(await self.api.replace(written.released()))
                return
            claim.record, claim.held, claim.lost, claim.handing_over = written, True, False, False
            claim.renewed_at = started
            claim.next_renew_at = started + self._renew_interval()
            claim.epoch = f"{self.identity}/{written.transitions}"
            claim.step_down.clear()
            claim.acquired.set()
        metrics.EXCHANGE_OWNED.labels(claim.namespace, claim.name).set(1)
        metrics.OWNERSHIP_CHANGES.labels(claim.namespace, claim.name, "acquired").inc()
        previous = current.holder if current is not None and current.holder else "nobody"
        message = f"{self.identity} owns the exchange now (epoch {claim.epoch}; was {previous})"
        logger.info("%s/%s: %s", claim.namespace, claim.name, message)
        self._event(claim, "Normal", "OwnerAcquired", message)

    def _renew_interval(self) -> float:
        return self.timings.retry_period * random.uniform(1.0, ownership.JITTER)

    def _renew_due(self, now: float) -> None:
        for claim in self.claims.values():
            if claim.held and now >= claim.next_renew_at and not claim.lock.locked():
                claim.next_renew_at = float("inf")  # until this attempt is over
                self._spawn(self._renew(claim))

    async def _renew(self, claim: Claim) -> None:
        async with claim.lock:
            if not claim.held or claim.record is None:
                return
            started = self._clock()
            wanted = claim.record.held_by(self.identity, self._wall(), self.timings.lease_duration)
            try:
                try:
                    written = await self.api.replace(wanted)
                except KubeApiError as error:
                    if error.status != 404:
                        raise
                    written = await self.api.create(wanted)  # deleted by hand: recreated
            except KubeApiError as error:
                metrics.LEASE_CALLS.labels("renew", "failure").inc()
                if error.status == 409:
                    fresh = await _quietly(self.api.get(claim.lease_name))
                    if (
                        fresh is not None
                        and fresh.holder == self.identity
                        and fresh.acquire_time == claim.record.acquire_time
                    ):
                        claim.record = fresh  # changed by someone else, still ours: renew again
                    else:
                        self.lose(claim, "the Lease was taken over")
                        return
                else:
                    logger.warning("%s/%s: renew failed: %s", claim.namespace, claim.name, error)
                claim.next_renew_at = self._clock() + self.timings.failure_retry
                self._wake.set()
                return
            if not claim.held:
                return
            metrics.LEASE_CALLS.labels("renew", "success").inc()
            claim.record, claim.renewed_at = written, started
            claim.next_renew_at = started + self._renew_interval()
            self._see(written)

    def _enforce_deadlines(self, now: float) -> None:
        for claim in self.claims.values():
            if claim.held and now - claim.renewed_at >= self.timings.renew_deadline:
                self.lose(claim, "the renew deadline passed")

    def lose(self, claim: Claim, why: str) -> None:
        """Stop every write at once: the Lease may be someone else's by now."""
        if not claim.held:
            return
        claim.held, claim.lost = False, True
        if claim.on_lost is not None:
            claim.on_lost()
        claim.acquired.clear()
        claim.step_down.set()
        metrics.EXCHANGE_OWNED.labels(claim.namespace, claim.name).set(0)
        metrics.OWNERSHIP_CHANGES.labels(claim.namespace, claim.name, "lost").inc()
        logger.warning("%s/%s: ownership lost (%s)", claim.namespace, claim.name, why)
        self._event(claim, "Warning", "OwnerLost", f"{self.identity} lost the exchange: {why}")
        self._wake.set()

    async def release(self, claim: Claim) -> None:
        """Let the Lease go (client-go's release: no holder, one second)."""
        async with claim.lock:
            if not claim.held or claim.record is None:
                return
            claim.held = False
            claim.acquired.clear()
            record = claim.record
            for _ in range(3):
                try:
                    self._see(await self.api.replace(record.released()))
                    break
                except KubeApiError as error:
                    if error.status != 409:
                        logger.warning(
                            "%s/%s: not released: %s", claim.namespace, claim.name, error
                        )
                        break
                    fresh = await _quietly(self.api.get(claim.lease_name))
                    if fresh is None or fresh.acquire_time != record.acquire_time:
                        break
                    record = fresh
        self._last_handover_at = self._clock()
        metrics.EXCHANGE_OWNED.labels(claim.namespace, claim.name).set(0)
        metrics.OWNERSHIP_CHANGES.labels(claim.namespace, claim.name, "released").inc()
        logger.info("%s/%s: released the exchange", claim.namespace, claim.name)
        self._event(claim, "Normal", "OwnerReleased", f"{self.identity} released the exchange")
        self._wake.set()

    async def delete(self, claim: Claim) -> None:
        """The exchange is gone: its Lease goes last, by its holder."""
        async with claim.lock:
            if not claim.held or claim.record is None:
                return
            claim.held = False
            with contextlib.suppress(KubeApiError):
                await self.api.delete(claim.record)
        metrics.EXCHANGE_OWNED.labels(claim.namespace, claim.name).set(0)

    # --- garbage --------------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        """Delete Leases nobody holds of exchanges no daemon here runs (gone since)."""
        while True:
            await asyncio.sleep(min(self.timings.orphan_after / 2, 300.0))
            now = self._clock()
            for name, record in list(self.records.items()):
                uid = name.removeprefix(exchange_lease_name(""))
                if record.role == MEMBER:
                    observed = self.members.leases.get(name)
                    duration = self.timings.member_duration
                elif uid not in self.claims:
                    observed = self.observed.get(name)
                    duration = self.timings.lease_duration
                else:
                    continue
                if observed is None or not observed.free(now, duration):
                    continue
                if now - observed.free_since(duration) >= self.timings.orphan_after:
                    with contextlib.suppress(KubeApiError):
                        await self.api.delete(record)
                        logger.info("Deleted the orphaned Lease %s", name)

    # --- helpers --------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    def _event(self, claim: Claim, kind: str, reason: str, message: str) -> None:
        async def post() -> None:
            with contextlib.suppress(KubeApiError):
                await self._kube.create_event(claim.involved, kind, reason, message)

        self._spawn(post())


async def _quietly(call: Any) -> Any:
    try:
        return await call
    except KubeApiError:
        return None


async def _forever(name: str, factory: Callable[[], Any]) -> None:
    while True:
        try:
            await factory()
            return
        except Exception:
            logger.exception("Sharding task %s crashed; restarting it", name)
            await asyncio.sleep(1.0)


# --- the status, taken over ---------------------------------------------------------------


async def claim_status(
    kube: KubeApi, namespace: str, name: str, identity: str, epoch: str
) -> dict[str, Any]:
    """Write ``status.owner`` and ``status.ownerEpoch`` (conditional on the resourceVersion read)
    and return the status as it was: the previous owner's final word, seeding the new monitor."""
    for _ in range(5):
        resource = await kube.get_exchange(namespace, name)
        status = resource.get("status")
        version = resource["metadata"]["resourceVersion"]
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version}
        ]
        owner = {"owner": identity, "ownerEpoch": epoch}
        if status is None:
            operations.append({"op": "add", "path": "/status", "value": owner})
        else:
            operations += [
                {"op": "add", "path": f"/status/{key}", "value": value}
                for key, value in owner.items()
            ]
        try:
            await kube.json_patch_status(namespace, name, operations)
        except KubeApiError as error:
            if error.status in (409, 422):
                continue  # changed meanwhile: read again
            raise
        return dict(status or {})
    raise KubeApiError(f"could not take the status of {namespace}/{name} over", 409)


# --- the daemon ---------------------------------------------------------------------------


class Monitor(Protocol):
    async def run(self, stopped: Any) -> None: ...
    def halt(self) -> None: ...


MonitorFactory = Callable[[Mapping[str, Any], str, Callable[[], None]], Monitor]


async def monitor_while_owned(
    coordinator: Coordinator,
    body: Mapping[str, Any],
    stopped: Any,
    make_monitor: MonitorFactory,
    monitors: MutableMapping[tuple[str, str], Any],
    graceful_stop: float,
) -> None:
    """A kopf daemon's body: wait for the Lease, monitor while it is held, step down, repeat."""
    import kopf

    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    claim = coordinator.register(metadata["uid"], namespace, name)

    def deleted() -> bool:
        reason = getattr(stopped, "reason", None)
        return reason is not None and bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)

    try:
        while not stopped:
            if not await claim.wait_held(stopped):
                break
            try:
                seed = await claim_status(
                    coordinator._kube, namespace, name, coordinator.identity, str(claim.epoch)
                )
            except KubeApiError as error:
                if error.status == 404:
                    break
                logger.warning("%s/%s: cannot take the status over: %s", namespace, name, error)
                await claim.release()
                await stopped.wait(coordinator.timings.retry_period)
                continue
            monitor = make_monitor(seed, str(claim.epoch), claim.fence)
            monitors[namespace, name] = monitor
            claim.on_lost = monitor.halt
            try:
                await monitor.run(StepDown(stopped, claim, coordinator.on_daemon_stop))
            finally:
                claim.on_lost = None
                monitors.pop((namespace, name), None)
            if stopped:
                break
            if not claim.lost:
                await claim.release()
    finally:
        gone = deleted()
        if gone and not claim.held:  # the holder does the clean-up; kopf's finalizer goes after it
            await claim.wait_released(max(1.0, graceful_stop - 3.0))
        claim.retired, claim.gone = True, gone
        # Held now, possibly acquired while waiting: this replica cleans up after all.
        if gone:
            await claim.delete_lease()
        else:
            await claim.release()
        coordinator.unregister(claim)

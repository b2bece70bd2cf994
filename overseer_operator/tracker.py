"""The hot path of one exchange: heartbeats in, transitions out to the writers.

decode -> fleet (the health state machine) -> transitions -> Manager writer, Events, status.
Nothing here reaches back: the tracker is given its writers and a ``changed`` callback, and the
monitor reads what it needs from it.

The rule that makes verdicts trustworthy lives here too: workers may turn inactive or offline only
while the queue is consumed *and* the consumer has caught up with it (``backlog``). Otherwise the
fleet's clock is paused: a broker outage, a slow start or falling behind is never a worker's
silence. Restart evidence (status, Manager rows) is recorded at once, but what it owes the Manager
is settled only when verdicts are next allowed, once per worker.

At start the queue is consumed at once, while the Manager's module list is still being read
(``await_listing``): a worker heard before it is active in the fleet at once, but its registration
waits for the list. A worker the Manager already lists as active, with the same type, then costs
no write (its row is current); any other is registered then. A failed first listing registers
them all, as a start without the Manager always did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from overseer_operator import defaults, metrics, seeding
from overseer_operator.aiotools import wait_event
from overseer_operator.backlog import Backlog
from overseer_operator.consumer import QueueReading
from overseer_operator.events import EventRecorder
from overseer_operator.fleet import Fleet
from overseer_operator.heartbeat import MessageRejected, decode_message
from overseer_operator.manager_client import ModuleRecord
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import (
    BrokerState,
    BrokerStatus,
    FleetSnapshot,
    Heartbeat,
    Reason,
    Thresholds,
    Transition,
    Verdict,
    WorkerState,
)
from overseer_operator.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

# Event types other than ``status`` that the estate is known to send; any other is counted as
# "other", so a sender cannot create metric series at will.
KNOWN_EVENT_TYPES = frozenset({"upgrade_request"})
# Transitions dispatched between two yields to the event loop (~10 ms of work).
SWEEP_BATCH = 100
# Transition log lines per minute; a mass transition is summed up instead of logged line by line.
TRANSITION_LOGS_PER_MINUTE = 60


class FleetTracker:
    def __init__(
        self,
        labels: tuple[str, str],
        writer: ManagerWriter,
        events: EventRecorder,
        changed: Callable[[], None],
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._labels = labels
        self.writer = writer
        self._events = events
        self._changed = changed
        self._clock = clock
        self._wall_clock = wall_clock
        self.fleet = Fleet(Thresholds(), clock)
        self.fleet.pause()  # nobody can be heard before the queue is consumed
        self.backlog = Backlog(clock)
        self.broker: BrokerStatus | None = None
        self._ingest_shown: Verdict | None = None  # the CaughtUp verdict last made visible
        self._judging = True  # False once the monitor stops or hands over: for good
        self.refresh_interval = defaults.REFRESH_INTERVAL
        # Evidence from another process's wall clock is a lower bound only after this is taken
        # off (a bound on the clock skew between replicas).
        self.clock_skew = 0.0
        # How late a row may be while its writer said it was not (seeding.row_write_slack).
        self.row_write_slack = seeding.ROW_WRITE_SLACK
        # The other replicas of this operator (sharding; a live set): a row or heartbeat in a
        # peer's name is the own registration of an earlier owner, not a worker. Its silence
        # since the handover proves nothing, so it is removed without a verdict (retired).
        self.peers: Collection[str] = ()
        self._retired: set[str] = set()
        # Restart evidence not yet settled: the state each record shows (the Manager's row last),
        # the strongest evidence of each worker, the proven last-heard wall time of workers only
        # seeded, and the latest moment a record proves each was heard. A worker heard meanwhile
        # leaves them all. The proofs of life outlive the settling: rows read after it (a start
        # that consumed before the Manager's list came) prove no silence past them.
        self._shown: dict[str, WorkerState] = {}
        self._evidence: dict[str, seeding.Evidence] = {}
        self._heard_wall: dict[str, datetime] = {}
        self._alive_wall: dict[str, datetime] = {}  # the latest moment a record proves it heard
        # When the previous owner's Manager writes started failing (its last status said so):
        # the rows it left prove silence only up to then.
        self._rows_written_until: datetime | None = None
        # Workers heard before the Manager's first listing (None: not waiting for one), with
        # what they would owe it: a registration, or (a worker seeded active from the status)
        # the refresh its latest heartbeat would owe.
        self._unlisted: dict[str, Transition | Heartbeat] | None = None
        self._reject_log = RateLimiter(5, 60.0, clock)
        self._transition_log = RateLimiter(TRANSITION_LOGS_PER_MINUTE, 60.0, clock)
        self._wake = asyncio.Event()
        # Metric children looked up once, not per heartbeat or per transition.
        self._received = {
            wire: metrics.HEARTBEATS_RECEIVED.labels(*labels, wire) for wire in ("etf", "json")
        }
        self._transitions = {
            state: metrics.TRANSITIONS.labels(*labels, state.value) for state in WorkerState
        }
        self._detection_lag = metrics.DETECTION_LAG.labels(*labels)

    # --- configuration -------------------------------------------------------------------

    def set_thresholds(self, thresholds: Thresholds) -> None:
        if thresholds != self.fleet.thresholds:
            self.fleet.set_thresholds(thresholds)
            self._wake.set()

    # --- may verdicts be given? ----------------------------------------------------------

    @property
    def verdicts_allowed(self) -> bool:
        consuming = self.broker is not None and self.broker.state is BrokerState.CONSUMING
        return self._judging and consuming and self.backlog.caught_up

    def stop_judging(self) -> None:
        """The monitor is stopping or handing over: from here on nobody will read the queue to
        the end, so the fleet's clock stops for good and no worker is judged (a flush waiting
        for a Manager that is down would otherwise let thresholds pass on unread heartbeats)."""
        self._judging = False
        # Held registrations are not owed yet: whoever consumes next hears those workers again
        # and asks its own listing (a handover flushing them rewrote current rows).
        self._unlisted = None
        self._verdicts_may_have_changed()

    def ingest_verdict(self) -> Verdict:
        """What the ``CaughtUp`` condition says."""
        if self.broker is None or self.broker.state is not BrokerState.CONSUMING:
            return Verdict(
                False, Reason.NOT_CONSUMING, "the queue is not consumed; verdicts are held"
            )
        return self.backlog.verdict()

    def on_broker_status(self, status: BrokerStatus) -> None:
        self.broker = status
        metrics.BROKER_CONNECTED.labels(*self._labels).set(
            int(status.state is BrokerState.CONSUMING)
        )
        self._verdicts_may_have_changed()
        self._changed()  # BrokerConnected and Ready follow the broker's state

    def on_queue_reading(self, reading: QueueReading) -> None:
        if reading.started:
            self.backlog.started(reading.messages)
        else:
            self.backlog.read(reading.messages)
        metrics.QUEUE_BACKLOG.labels(*self._labels).set(reading.messages)
        self._verdicts_may_have_changed()

    def _verdicts_may_have_changed(self) -> None:
        allowed = self.verdicts_allowed
        metrics.VERDICTS_HELD.labels(*self._labels).set(int(not allowed))
        if allowed and self.fleet.paused:
            self.fleet.resume()
            self._settle_seeds()
        elif not allowed:
            self.fleet.pause()
        self._wake.set()
        # Only a changed CaughtUp is worth a status render: a reading every 5 s is not.
        verdict = self.ingest_verdict()
        if verdict != self._ingest_shown:
            self._ingest_shown = verdict
            self._changed()

    # --- the Manager's first listing ----------------------------------------------------

    def await_listing(self) -> None:
        """Hold first registrations until the Manager's rows are read (``on_manager_rows``), or
        cannot be (``listing_unavailable``)."""
        if self._unlisted is None:
            self._unlisted = {}

    @property
    def awaiting_listing(self) -> bool:
        return self._unlisted is not None

    def listing_unavailable(self) -> None:
        """The first listing failed: register whatever was held (the writes wait for the Manager
        as any other would)."""
        self._register_unlisted(())

    def _register_unlisted(self, rows: list[ModuleRecord] | tuple[()]) -> None:
        """End the hold: a held worker with a current ``active`` row of its type is only marked
        written; every other is owed what it was held with."""
        unlisted, self._unlisted = self._unlisted, None
        if unlisted is None:
            return
        # Even with nothing held the status changes: its first patch waits for the listing.
        for row in rows:
            held = unlisted.get(row.hostname)
            # Held means heard and nothing dispatched since (``_dispatch`` takes it): active.
            if held is not None and row.status != "inactive" and row.type == held.module_type:
                del unlisted[row.hostname]
                self.writer.mark_written(row.hostname)
        for owed in unlisted.values():
            if isinstance(owed, Heartbeat):
                self.writer.observe_heartbeat(owed)
            else:
                self._dispatch(owed)
        self._changed()
        self._wake.set()

    # --- the heartbeat path --------------------------------------------------------------

    def handle_message(self, body: bytes) -> None:
        """Called by the consumer for every delivery; raising ``MessageRejected`` rejects it."""
        if self.backlog.delivered():
            self._verdicts_may_have_changed()  # the start-up backlog has just been read
        try:
            decoded = decode_message(body)
        except MessageRejected as error:
            metrics.MESSAGES_REJECTED.labels(*self._labels, error.reason).inc()
            if self._reject_log.allow():
                logger.warning("Rejected a message on %s/%s: %s", *self._labels, error)
            raise
        if decoded.heartbeat is None:
            event_type = decoded.event_type
            label = event_type if event_type in KNOWN_EVENT_TYPES else "other"
            metrics.MESSAGES_IGNORED.labels(*self._labels, label).inc()
            return
        self._received[decoded.format].inc()
        self.observe(decoded.heartbeat)

    def observe(self, heartbeat: Heartbeat) -> None:
        """A heartbeat heard now (through the queue, or the operator's own registration)."""
        if heartbeat.hostname in self.peers:
            self._retire_peer(heartbeat.hostname, row_listed=False)
            return
        if self._heard_wall or self._shown:
            for unsettled in self._unsettled:
                unsettled.pop(heartbeat.hostname, None)
        transition = self.fleet.observe(heartbeat)
        unlisted = self._unlisted
        if transition is None:
            if unlisted is None:
                self.writer.observe_heartbeat(heartbeat)
            elif not isinstance(unlisted.get(heartbeat.hostname), Transition):
                unlisted[heartbeat.hostname] = heartbeat  # the refresh it owes, if the rows do
            return
        if unlisted is not None and transition.previous is None:
            # Registered once the rows are read. No status render meanwhile: the first round of
            # a restarted fleet's heartbeats was a patch a second from every exchange.
            unlisted[transition.hostname] = transition
            self._wake.set()  # its deadline counts all the same
            return
        self._dispatch(transition)
        self._wake.set()

    @property
    def _unsettled(self) -> tuple[dict[str, Any], ...]:
        """Restart evidence not settled yet, per worker (a heartbeat makes it moot)."""
        return (self._shown, self._evidence, self._heard_wall, self._alive_wall)

    def forget(self, hostname: str) -> None:
        """Drop a worker and whatever is owed for it, without a verdict."""
        if self._unlisted is not None:
            self._unlisted.pop(hostname, None)
        for unsettled in self._unsettled:
            unsettled.pop(hostname, None)
        self.fleet.forget(hostname)
        self.writer.forget(hostname)
        self._changed()

    def _dispatch(self, transition: Transition) -> None:
        if self._unlisted and isinstance(
            held := self._unlisted.pop(transition.hostname, None), Transition
        ):
            self._dispatch(held)  # its registration goes first, whatever the list says
        self._transitions[transition.current].inc()
        if transition.current is not WorkerState.ACTIVE:
            self._detection_lag.observe(max(0.0, transition.at - transition.due_at))
        if (
            transition.current is not WorkerState.ACTIVE or transition.previous is not None
        ) and self._transition_log.allow():
            held_back = self._transition_log.take_suppressed()
            logger.info(
                "%s/%s: worker %s %s -> %s%s",
                *self._labels,
                transition.hostname,
                transition.previous and transition.previous.value,
                transition.current.value,
                f" ({held_back} more transitions not logged)" if held_back else "",
            )
        self.writer.apply(transition)
        self._events.record(transition, self.fleet.thresholds)
        self._changed()

    async def sweep_forever(self) -> None:
        """Turn time into transitions, waking exactly when the next one falls due."""
        while True:
            deadline = self.fleet.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            await wait_event(self._wake, timeout)
            self._wake.clear()
            while batch := self.fleet.sweep(SWEEP_BATCH):
                for transition in batch:
                    self._dispatch(transition)
                if len(batch) < SWEEP_BATCH:
                    break
                await asyncio.sleep(0)  # a mass transition must not stall the event loop
            self._update_gauges()

    def _update_gauges(self) -> None:
        counts = self.fleet.counts
        for state in WorkerState:
            metrics.WORKERS.labels(*self._labels, state.value).set(counts.get(state, 0))

    # --- restart evidence ----------------------------------------------------------------

    def seed_from_status(self, status: Mapping[str, Any]) -> None:
        """Workers the previous operator reported; the Manager's rows, read next, weigh more."""
        now = self._evidence_clock()
        failing_since = seeding.manager_writes_failing_since(status)
        if failing_since is not None:
            self._rows_written_until = failing_since - timedelta(seconds=self.clock_skew)
        for module in status.get("modules") or ():
            evidence = seeding.from_status_module(module, now, defaults.STATUS_REFRESH_INTERVAL)
            if evidence is None:
                continue
            if evidence.hostname in self.peers:
                self._retire_peer(evidence.hostname, row_listed=False)
            else:
                self._seed(evidence, now)

    def on_manager_rows(self, rows: list[ModuleRecord]) -> None:
        """The Manager's module list, at start and every few minutes after.

        A row the fleet never heard of is seeded with the evidence it carries (so it expires by
        the same rules); a worker the fleet knows is reconciled with what its row shows.
        """
        self._register_unlisted(rows)
        now = self._evidence_clock()
        inactive_after = self.fleet.thresholds.inactive_after
        for row in rows:
            if self.writer.owes(row.hostname):
                continue  # a write is on its way: the row is about to change anyway
            if row.hostname in self.peers:
                self._retire_peer(row.hostname, row_listed=True)
                continue
            evidence = seeding.from_manager_row(
                row,
                now,
                inactive_after,
                self.refresh_interval,
                self._rows_written_until,
                self.row_write_slack,
            )
            known = self.fleet.standing(evidence.hostname)
            if known is None or known[1] is None:
                self._seed(evidence, now)
                if evidence.shown is WorkerState.ACTIVE:
                    self.writer.mark_written(evidence.hostname)
            elif known[0] is not evidence.shown:
                # The row disagrees and nothing is on its way to fix it (a DELETE lost to an
                # ingress's 404, a row someone else wrote): settled with the seeds.
                self._shown[evidence.hostname] = evidence.shown
        if self.verdicts_allowed:
            self._settle_seeds()
        self._wake.set()

    def _retire_peer(self, hostname: str, *, row_listed: bool) -> None:
        """Remove another replica's own row without a verdict: once, and again whenever the
        Manager still lists it (a DELETE that was lost)."""
        first = hostname not in self._retired
        if first:
            self._retired.add(hostname)
            logger.info(
                "%s/%s: %s is another replica of this operator, not a worker: its own row is "
                "removed without a verdict",
                *self._labels,
                hostname,
            )
            for unsettled in self._unsettled:
                unsettled.pop(hostname, None)
            if self._unlisted is not None:
                self._unlisted.pop(hostname, None)
            if self.fleet.standing(hostname) is not None:
                self.fleet.forget(hostname)
                self._changed()
        if first or (row_listed and not self.writer.owes(hostname)):
            self.writer.retire(hostname)

    def _evidence_clock(self) -> datetime:
        """Now, minus the skew bound: every silence proven from another clock is shortened."""
        return self._wall_clock() - timedelta(seconds=self.clock_skew)

    def _seed(self, evidence: seeding.Evidence, now: datetime) -> None:
        """Record evidence; until it is settled the worker shows what its record shows."""
        hostname = evidence.hostname
        known = self.fleet.standing(hostname)
        if known is not None and known[1] is not None:
            return  # heard since: the heartbeat is the evidence
        self._shown[hostname] = evidence.shown
        strongest = self._evidence.get(hostname)
        if strongest is None or (evidence.silent_for or 0.0) >= (strongest.silent_for or 0.0):
            self._evidence[hostname] = evidence
        if known is None:
            self.fleet.seed(hostname, evidence.module_type, evidence.shown, None, evidence.workload)
        if evidence.heard_at is not None:
            latest = self._alive_wall.get(hostname)
            self._alive_wall[hostname] = max(evidence.heard_at, latest or evidence.heard_at)
        if evidence.silent_for is not None:
            heard = now - timedelta(seconds=evidence.silent_for)
            previous = self._heard_wall.get(hostname)
            self._heard_wall[hostname] = min(heard, previous or heard)
        alive = self._alive_wall.get(hostname)
        if alive is not None and hostname in self._heard_wall:
            self._heard_wall[hostname] = max(self._heard_wall[hostname], alive)

    def _settle_seeds(self) -> None:
        """Verdicts are allowed again: apply the evidence of workers still unheard, then tell the
        writers, once, where the fleet's view differs from what the records show."""
        evidence, self._evidence = self._evidence, {}
        now = self._evidence_clock()
        for proof in evidence.values():
            standing = self.fleet.standing(proof.hostname)
            if standing is not None and standing[1] is None:
                silent_for = proof.silent_for
                alive = self._alive_wall.get(proof.hostname)
                if silent_for is not None and alive is not None:  # no silence past a proof of life
                    silent_for = min(silent_for, max(0.0, seeding.seconds_since(alive, now)))
                self.fleet.seed(
                    proof.hostname, proof.module_type, proof.shown, silent_for, proof.workload
                )
        shown, self._shown = self._shown, {}
        at = self._clock()
        for hostname, state in shown.items():
            standing = self.fleet.standing(hostname)
            if standing is None or standing[0] is state:
                continue
            worker = self.fleet.get(hostname)
            assert worker is not None
            self._dispatch(
                Transition(
                    hostname, worker.module_type, state, worker.state, worker.workload, at, at
                )
            )

    # --- what the status shows -----------------------------------------------------------

    def snapshot(self, limit: int) -> FleetSnapshot:
        return self.fleet.snapshot(limit)

    def heard_wall_time(self, hostname: str) -> datetime | None:
        """The proven last-heard time of a worker only seeded (None: no proof)."""
        return self._heard_wall.get(hostname)

"""Prometheus metrics: one registry for the whole operator, served by ``serve_metrics``.

Every metric carries the exchange as ``namespace``/``name`` of its MessagingExchange, so one
operator watching many exchanges stays readable. Names follow the Prometheus conventions
(``_total`` for counters, base units in the name).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
_EXCHANGE = ("namespace", "name")

WORKERS = Gauge(
    "overseer_workers",
    "Workers of an exchange by health state.",
    [*_EXCHANGE, "state"],
    registry=REGISTRY,
)
HEARTBEATS_RECEIVED = Counter(
    "overseer_heartbeats_received_total",
    "Status heartbeats accepted from the broker.",
    [*_EXCHANGE, "format"],
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    "overseer_messages_rejected_total",
    "Messages rejected without requeue (undecodable or invalid), by reason.",
    [*_EXCHANGE, "reason"],
    registry=REGISTRY,
)
MESSAGES_IGNORED = Counter(
    "overseer_messages_ignored_total",
    "Decoded messages that are not status heartbeats (acked and ignored), by event type "
    "(known types by name, any other as 'other').",
    [*_EXCHANGE, "event_type"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "overseer_worker_transitions_total",
    "Worker health transitions, by the state entered.",
    [*_EXCHANGE, "state"],
    registry=REGISTRY,
)
MANAGER_WRITES = Counter(
    "overseer_manager_writes_total",
    "Writes to the OpenAperture Manager, by operation and outcome.",
    [*_EXCHANGE, "operation", "outcome"],
    registry=REGISTRY,
)
MANAGER_PENDING = Gauge(
    "overseer_manager_pending_writes",
    "Worker records the Manager has not yet acknowledged.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
MANAGER_WRITE_LATENESS = Gauge(
    "overseer_manager_write_lateness_seconds",
    "How long the oldest Manager write still owed has waited (0: none owed), as of the last write "
    "or status render (at least once a minute); past MANAGER_WRITE_LATENESS_ALLOWED the exchange "
    "says ManagerSynced=False, ManagerBehind.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
KUBERNETES_WRITES = Counter(
    "overseer_kubernetes_writes_total",
    "Writes to the Kubernetes API (status patches, events), by kind and outcome.",
    [*_EXCHANGE, "kind", "outcome"],
    registry=REGISTRY,
)
BROKER_CONNECTED = Gauge(
    "overseer_broker_connected",
    "1 while the heartbeat queue is being consumed, else 0.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
DETECTION_LAG = Histogram(
    "overseer_detection_lag_seconds",
    "Delay between a health threshold passing and the sweep emitting the transition.",
    list(_EXCHANGE),
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
    registry=REGISTRY,
)

QUEUE_BACKLOG = Gauge(
    "overseer_queue_backlog_messages",
    "Messages waiting in the heartbeat queue, as the broker last reported it.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
VERDICTS_HELD = Gauge(
    "overseer_verdicts_held",
    "1 while inactive/offline verdicts are held: not consuming, draining the backlog that was "
    "queued at start, or falling behind the queue.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
TASK_CRASHES = Counter(
    "overseer_task_crashes_total",
    "Background tasks that crashed and were restarted, by task.",
    [*_EXCHANGE, "task"],
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "overseer_event_loop_lag_seconds",
    "How late the event loop ran a tick scheduled every 50 ms (a stall delays every exchange).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
EVENT_LOOP_LAG_MAX = Gauge(
    "overseer_event_loop_lag_max_seconds",
    "The largest event-loop lag seen since the operator started.",
    registry=REGISTRY,
)
GC_FULL_COLLECTION = Histogram(
    "overseer_gc_full_collection_seconds",
    "How long each full garbage collection took (run on a timer, see collector.py): the loop "
    "is stalled meanwhile. kind: since-freeze (what is newer than the last one) or thaw (the "
    "whole heap: the frozen part grew by a quarter, or a session or connection was closed).",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
LOOP_TICK = 0.05


async def watch_event_loop() -> None:
    """Measure, until cancelled, how late the loop wakes a task that sleeps ``LOOP_TICK``."""
    loop = asyncio.get_running_loop()
    largest = 0.0
    while True:
        expected = loop.time() + LOOP_TICK
        await asyncio.sleep(LOOP_TICK)
        lag = max(0.0, loop.time() - expected)
        EVENT_LOOP_LAG.observe(lag)
        if lag > largest:
            largest = lag
            EVENT_LOOP_LAG_MAX.set(lag)


def start_exchange(namespace: str, name: str) -> None:
    """Export the exchange's write counters at 0 before anything happens, for every label value
    the operator itself chooses: a counter that first appears at 1 hides that first increment from
    ``rate()`` and ``increase()``, so the dashboard and the alerts would miss the first failed
    write. (The tracker does the same for transitions and detection lag.)"""
    for operation in ("active", "inactive", "delete"):
        for outcome in ("success", "failure", "rejected"):
            MANAGER_WRITES.labels(namespace, name, operation, outcome)
    for kind in ("status", "event"):
        for outcome in ("success", "failure"):
            KUBERNETES_WRITES.labels(namespace, name, kind, outcome)


# Sharding (several replicas): kept when a monitor stops, since ownership outlives monitors.
EXCHANGE_OWNED = Gauge(
    "overseer_exchange_owned",
    "1 while this replica holds the exchange's Lease (sum over replicas: 1 per exchange).",
    list(_EXCHANGE),
    registry=REGISTRY,
)
OWNERSHIP_CHANGES = Counter(
    "overseer_ownership_changes_total",
    "Exchange Leases acquired, released, lost (renew deadline passed or taken), or handed over.",
    [*_EXCHANGE, "change"],
    registry=REGISTRY,
)
FENCED_WRITES = Counter(
    "overseer_fenced_writes_total",
    "Status writes refused by the apiserver because another replica owns the exchange now.",
    list(_EXCHANGE),
    registry=REGISTRY,
)
LEASE_CALLS = Counter(
    "overseer_lease_calls_total",
    "Exchange Lease acquisitions and renewals, by outcome (success, conflict, failure).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
MEMBERS = Gauge(
    "overseer_eligible_members",
    "Replicas this replica considers eligible to own exchanges.",
    registry=REGISTRY,
)


def forget_exchange(namespace: str, name: str) -> None:
    """Drop every series of an exchange that is no longer monitored here."""
    for collector in (
        WORKERS, HEARTBEATS_RECEIVED, MESSAGES_REJECTED, MESSAGES_IGNORED, TRANSITIONS,
        MANAGER_WRITES, MANAGER_PENDING, MANAGER_WRITE_LATENESS, KUBERNETES_WRITES,
        BROKER_CONNECTED, DETECTION_LAG, QUEUE_BACKLOG, VERDICTS_HELD, TASK_CRASHES,
    ):  # fmt: skip
        _remove_exchange(collector, namespace, name)


def _remove_exchange(collector: Counter | Gauge | Histogram, namespace: str, name: str) -> None:
    for labels in list(collector._metrics):  # prometheus_client offers no public enumeration
        if labels[:2] == (namespace, name):
            collector.remove(*labels)


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` for the operator's registry on ``address:port`` (a daemon thread)."""
    start_http_server(port, addr=address, registry=REGISTRY)

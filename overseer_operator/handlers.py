"""The kopf glue: settings, one monitor daemon per MessagingExchange, the legacy seed, probes.

Handlers stay thin: they build an ``ExchangeMonitor`` and hand it the daemon's ``stopped`` flag.
State shared across resources (the environment, the Kubernetes client, the running monitors) lives
in the operator memo that kopf copies into every resource's memo.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from overseer_operator import collector, defaults, diagnostics, metrics
from overseer_operator.broker import BrokerDirectory
from overseer_operator.config import OperatorEnvironment
from overseer_operator.kube import API_VERSION, GROUP, KIND, PLURAL, VERSION, KubeApi
from overseer_operator.monitor import ExchangeMonitor
from overseer_operator.oauth import TokenCache
from overseer_operator.ratelimit import RateLimiter
from overseer_operator.sharding import Coordinator, monitor_while_owned

# The logger kopf passes to handlers.
Logger = logging.Logger | logging.LoggerAdapter[Any]

PREFIX = "overseer.openaperture.io"
# A stopping monitor gets this long to close its connections by itself (kopf's "backoff")...
GRACEFUL_STOP = 15.0
# ...then it is cancelled, and abandoned (its finalizer released) if still not done after this.
FORCED_STOP = 10.0


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    settings.persistence.finalizer = f"{PREFIX}/monitor"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    # kopf's own handler chatter is not worth an Event; worker transitions are posted explicitly.
    settings.posting.level = logging.WARNING
    memo.environment = OperatorEnvironment.from_environ()
    memo.kube = KubeApi.from_configuration()
    memo.monitors = {}
    memo.token_cache = TokenCache()
    # A broker rotated in the Manager must still reach the next relookup (never a stale answer).
    memo.broker_directory = BrokerDirectory(
        ttl=min(defaults.BROKER_LOOKUP_TTL, memo.environment.broker_relookup_interval / 2)
    )
    memo.event_budget = RateLimiter(
        defaults.OPERATOR_EVENTS_PER_MINUTE, 60.0, asyncio.get_running_loop().time
    )
    memo.loop_watch = asyncio.create_task(metrics.watch_event_loop())
    memo.full_collections = asyncio.create_task(collector.collect_periodically())
    diagnostics.install_task_dump(asyncio.get_running_loop())
    memo.coordinator = None
    environment = memo.environment
    if environment.sharding:
        # Several replicas share the exchanges by Leases in the operator's own namespace.
        memo.lease_kube = KubeApi.from_configuration()
        memo.coordinator = Coordinator(
            memo.kube,
            memo.lease_kube,
            environment.namespace or "default",
            environment.identity,
            environment.lease_timings,
        )
        memo.coordinator.start()
    await seed_legacy_exchange(memo.kube, memo.environment, logger)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    for task in ("loop_watch", "full_collections"):
        if memo.get(task) is not None:
            memo[task].cancel()
    if memo.get("coordinator") is not None:
        await memo.coordinator.stop()
        await memo.lease_kube.aclose()
    await memo.kube.aclose()


@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    id="monitor",
    cancellation_backoff=GRACEFUL_STOP,
    cancellation_timeout=FORCED_STOP,
)
async def monitor_exchange(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    namespace: str | None,
    name: str,
    **_: Any,
) -> None:
    if memo.coordinator is not None:  # several replicas: monitor only while holding the Lease
        await monitor_while_owned(
            memo.coordinator,
            body,
            stopped,
            lambda seed, epoch, fenced: ExchangeMonitor(
                body,
                memo.environment,
                memo.kube,
                memo.token_cache,
                memo.get("event_budget"),
                seed_status=seed,
                epoch=epoch,
                on_fenced=fenced,
                peers=memo.coordinator.peers,
                broker_directory=memo.broker_directory,
            ),
            memo.monitors,
            GRACEFUL_STOP,
        )
        return
    monitor = ExchangeMonitor(
        body,
        memo.environment,
        memo.kube,
        memo.token_cache,
        memo.get("event_budget"),
        broker_directory=memo.broker_directory,
    )
    memo.monitors[namespace, name] = monitor
    try:
        await monitor.run(stopped)
    finally:
        memo.monitors.pop((namespace, name), None)


@kopf.on.probe(id="exchanges")
def report_exchanges(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    monitors = memo.get("monitors") or {}
    return {"monitored": len(monitors)}


async def seed_legacy_exchange(
    kube: KubeApi, environment: OperatorEnvironment, logger: Logger
) -> None:
    """A deployment configured only by the legacy EXCHANGE_ID/BROKER_ID still gets monitored."""
    exchange_id, broker_id = environment.legacy_exchange_id, environment.legacy_broker_id
    if not (exchange_id and broker_id):
        return
    namespace = environment.namespace or "default"
    name = f"exchange-{exchange_id}".lower()
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/created-by": "overseer-operator"},
        },
        "spec": {
            "exchangeId": exchange_id,
            "brokerId": broker_id,
            "queues": {"systemModules": environment.legacy_queue or defaults.QUEUE},
        },
    }
    if await kube.create_exchange(namespace, body):
        logger.info(
            "EXCHANGE_ID=%s and BROKER_ID=%s are set: created MessagingExchange %s/%s",
            exchange_id,
            broker_id,
            namespace,
            name,
        )
    else:
        logger.info(
            "EXCHANGE_ID=%s is set and MessagingExchange %s/%s already exists",
            exchange_id,
            namespace,
            name,
        )

"""Every default the operator applies, in one place; the CRD's defaults agree (a test checks).

Durations are in seconds; ``*_TEXT`` is the same value as the CRD writes it.
"""

from __future__ import annotations

# spec defaults (mirrored by the CRD's structural schema)
INACTIVE_AFTER = 600.0
INACTIVE_AFTER_TEXT = "10m"
OFFLINE_AFTER = 1200.0
OFFLINE_AFTER_TEXT = "20m"
FORGET_AFTER = 3600.0
FORGET_AFTER_TEXT = "1h"
REFRESH_INTERVAL = 300.0
REFRESH_INTERVAL_TEXT = "5m"
QUEUE = "system_modules"
MODULE_TYPE = "overseer"
PREFETCH = 200

# the operator's own timings
STATUS_REFRESH_INTERVAL = 60.0  # heartbeat times in the status are at most this stale
STATUS_MIN_INTERVAL = 1.0  # a burst of changes becomes one status patch
# Longest a monitor's first status patch waits for its start to settle (status.py): what a
# restart shows meanwhile is the status the previous process left.
STATUS_START_HOLD = 10.0
CONFIG_RETRY_INTERVAL = 10.0  # missing or refused Secrets are read again this often
SHUTDOWN_TIMEOUT = 5.0  # for each last call at shutdown (final status, deregistration, close)
MANAGER_TIMEOUT = 10.0  # per Manager or OAuth request attempt
# A write owed longer than this makes ManagerSynced False (ManagerBehind): the rows' age is then
# no proof of silence for the next process (see manager_writer and seeding).
MANAGER_WRITE_LATENESS_ALLOWED = 60.0
KUBERNETES_TIMEOUT = 15.0  # per Kubernetes API request
# Connections each of the operator's own Kubernetes clients keeps (the monitors' one, and with
# sharding the Leases' one; kopf has its own): exchanges starting together queue for these
# instead of each opening one, a TLS handshake on both sides apiece.
KUBERNETES_CONNECTIONS = 10
KUBERNETES_KEEPALIVE = 60.0  # an idle one is kept this long (a steady fleet patches each minute)
BROKER_CONNECT_TIMEOUT = 10.0
BROKER_RETRY_INTERVAL = 5.0
BROKER_VERIFY_INTERVAL = 5.0  # how often the broker is asked about the queue (consumer, depth)
# A session whose broker (looked up in the Manager) stays unreachable is replaced this often, so
# a broker record rotated in the Manager is picked up without a restart (BROKER_RELOOKUP_INTERVAL).
BROKER_RELOOKUP_INTERVAL = 60.0
# A broker's connections read from the Manager serve every exchange that asks this long after
# (broker.BrokerDirectory): a restart's exchanges, which mostly name one broker, read it once.
BROKER_LOOKUP_TTL = 10.0
MAX_BACKOFF = 60.0  # the longest wait between retries of anything
EVENTS_PER_MINUTE = 10
# Events a minute for the whole operator, whatever the number of exchanges (100 exchanges
# registering their fleets at once must not become a thousand POSTs a minute).
OPERATOR_EVENTS_PER_MINUTE = 60
# Exchanges reading from the Manager at the same time (listings, broker lookups, each their own
# slots), at start-up or after an outage; the others wait their turn.
STARTUP_CONCURRENCY = 10
# Broker connection attempts in flight at once. A connect is 8 round trips, and at a restart each
# waits for the loop, busy draining the queues already consumed: 10 at a time, 100 exchanges took
# 14-30 s to be consumed again under traffic; 100 at a time, 3-7 s. Still a bound: a broker that
# comes back is not met by every exchange of a larger estate in the same second.
BROKER_CONNECT_CONCURRENCY = 100
# Manager writes in flight for the whole operator (a mass registration of 100 exchanges is paced
# by the Manager's answers, not sent 400 at a time).
MANAGER_WRITE_CONCURRENCY = 16
# Of those, the slots refreshes can never take: a transition (a verdict, a registration) finds
# one even while every exchange is behind on its refreshes.
MANAGER_WRITE_SLOTS_FOR_TRANSITIONS = 4

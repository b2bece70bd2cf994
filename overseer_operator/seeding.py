"""Restart evidence: how long a worker has *provably* been silent, from what outlived the operator.

After a restart the fleet is rebuilt from two records, each a lower bound on a worker's silence:

- the resource's status, whose ``lastHeartbeatTime`` may lag the real last heartbeat by one status
  refresh interval;
- the Manager's module rows, whose ``updated_at`` is reset by every POST: an ``active`` row may be
  one ``refreshInterval`` older than its worker's last heartbeat, while an ``inactive`` row was
  written when its worker had already been silent for ``inactiveAfter``.

A status's ``lastHeartbeatTime`` is also a proof of life: no record proves silence past it. A
replica that handed an exchange over a second after it took it writes fresh heartbeat times in
its final status but has not rewritten the rows yet; their age is no proof then.

A row's age is proof of silence only while its writer could write, and wrote in time: a previous
owner whose Manager writes were failing or late (its last status says ``ManagerSynced=False``
since some moment) went on consuming heartbeats it did not write, so its rows prove silence up to
that moment only. Before it, a write could still be ``ROW_WRITE_SLACK`` late (the lateness the
writer allows, plus the time to notice and record that it was exceeded): every bound is that much
shorter.
Heartbeats after the writer stopped consuming wait in the queue, which is drained before any
verdict; that is why a replica that loses an exchange stops consuming at once (``halt``).

Pure functions of their inputs and ``now``; the fleet applies the rule "no proof, full threshold".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from overseer_operator import defaults
from overseer_operator.manager_client import ModuleRecord
from overseer_operator.model import ConditionType, WorkerState
from overseer_operator.times import parse_time


def row_write_slack(lateness_allowed: float) -> float:
    """How late a row may be while its writer reported ManagerSynced=True: the lateness it
    allows, a call hanging until its timeout before the writer notices, and the status patch
    that records it."""
    return lateness_allowed + defaults.MANAGER_TIMEOUT + defaults.STATUS_MIN_INTERVAL


ROW_WRITE_SLACK = row_write_slack(defaults.MANAGER_WRITE_LATENESS_ALLOWED)


@dataclass(frozen=True, slots=True)
class Evidence:
    hostname: str
    module_type: str
    shown: WorkerState  # the state the record shows
    silent_for: float | None  # a lower bound, in seconds; None: no proof at all
    workload: list[Any] = field(default_factory=list)
    # A moment the worker was heard (a status's lastHeartbeatTime): no silence is proven past
    # it, whatever another record's age says. None: no such proof.
    heard_at: datetime | None = None


def in_utc(moment: datetime) -> datetime:
    """A time without a zone is taken as UTC (as the Manager and old statuses write them)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def seconds_since(moment: datetime, now: datetime) -> float:
    return (now - in_utc(moment)) / timedelta(seconds=1)


def from_status_module(
    module: Mapping[str, Any], now: datetime, status_refresh_interval: float
) -> Evidence | None:
    """One ``status.modules[]`` entry; None if it is not usable (no hostname or state).

    Without a ``lastHeartbeatTime`` only the state shown is evidence (the fleet never seeds a
    better state than the one shown).
    """
    hostname, seen = module.get("hostname"), parse_time(module.get("lastHeartbeatTime"))
    if not isinstance(hostname, str) or not hostname:
        return None
    try:
        shown = WorkerState(cast(str, module.get("state")))
    except ValueError:
        return None
    silent_for = (
        None if seen is None else max(0.0, seconds_since(seen, now) - status_refresh_interval)
    )
    heard_at = None if seen is None else in_utc(seen)
    return Evidence(hostname, module.get("type") or "unknown", shown, silent_for, heard_at=heard_at)


def manager_writes_failing_since(status: Mapping[str, Any]) -> datetime | None:
    """When the previous owner's Manager writes started failing, if its last status says they
    still were (``ManagerSynced=False``); None otherwise."""
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == ConditionType.MANAGER_SYNCED:
            if condition.get("status") != "False":
                return None
            since = parse_time(condition.get("lastTransitionTime"))
            # No time: the rows prove nothing.
            return in_utc(since) if since is not None else datetime.min.replace(tzinfo=UTC)
    return None


def from_manager_row(
    row: ModuleRecord,
    now: datetime,
    inactive_after: float,
    refresh_interval: float,
    written_until: datetime | None = None,
    write_slack: float = ROW_WRITE_SLACK,
) -> Evidence:
    """One Manager module row; rows other than ``inactive`` count as active, as the legacy did.
    ``written_until``: when the rows' writer stopped being able to write in time (None: it never
    did); the row's age beyond that moment proves nothing. ``write_slack``: how late a row may
    be before that (``row_write_slack``)."""
    shown = WorkerState.INACTIVE if row.status == "inactive" else WorkerState.ACTIVE
    silent_for = None
    if row.updated_at is not None:
        until = now if written_until is None else min(now, written_until)
        age = max(0.0, seconds_since(row.updated_at, until))
        bound = age + inactive_after if shown is WorkerState.INACTIVE else age - refresh_interval
        silent_for = max(0.0, bound - write_slack)
    return Evidence(row.hostname, row.type, shown, silent_for, list(row.workload or []))

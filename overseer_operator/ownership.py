"""Who owns which exchange when several replicas share them: pure rules over an injected clock.

Every replica holds a *member* Lease; every MessagingExchange has an *exchange* Lease. This module
decides, from what the replica has observed of those Leases, which exchanges it should acquire and
which it should hand over. It does no I/O: ``sharding.py`` feeds it observations and carries out
its plans over ``leases.py``.

Expiry is judged by *local observation*, as client-go and the node controller do: a Lease is
expired when the observer's own monotonic clock has seen no change of it for its duration. Another
process's wall clock (``renewTime``, ``acquireTime``) is used only as a lower bound, with the
clock-skew bound subtracted.

Preference is rendezvous (HRW) hashing with blake2b over the *eligible* members (fresh, and a
member for ``eligible_after``: a crash-looping pod never becomes one). Moves are rate-limited
(``handover_interval``) and nobody acquires beyond a fair share, except as a backup for an
exchange nobody has renewed for ``backup_after``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from overseer_operator.times import parse_duration

# client-go jitters the retry period by up to this factor.
JITTER = 1.2


@dataclass(frozen=True, slots=True)
class Timings:
    """The lease timings (seconds); every replica must use the same ones. See docs/sharding.md."""

    lease_duration: float = 100.0  # an exchange Lease not renewed for this long is free
    renew_deadline: float = 80.0  # the holder stops every write this long after its last renew
    retry_period: float = 10.0  # renew (and re-decide) this often
    failure_retry: float = 2.0  # after a failed renew, try again this soon
    request_timeout: float = 5.0  # per Lease API call
    member_duration: float = 30.0  # a member Lease not renewed for this long is not a member
    eligible_after: float = 30.0  # a member prefers exchanges only after this long (hysteresis)
    handover_interval: float = 5.0  # at most one voluntary handover this often, per replica
    clock_skew: float = 20.0  # bound on wall-clock skew between replicas
    orphan_after: float = 600.0  # a free Lease of an exchange nobody runs is deleted after this

    def __post_init__(self) -> None:
        problems = []
        if not self.lease_duration > self.renew_deadline:
            problems.append("the lease duration must exceed the renew deadline")
        if not self.renew_deadline > self.retry_period * JITTER + self.failure_retry:
            problems.append("the renew deadline must exceed 1.2 x retry period + failure retry")
        if not self.member_duration >= 2 * self.retry_period:
            problems.append("the member lease duration must be at least 2 retry periods")
        if min(self.retry_period, self.failure_retry, self.request_timeout) <= 0:
            problems.append("periods and timeouts must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    # --- the arithmetic (docs/sharding.md) --------------------------------------------------

    @property
    def outage_tolerance(self) -> float:
        """The longest apiserver outage that costs no Lease: the last renew may have started up
        to 1.2 retry periods before the outage, and the first one after it starts up to a failure
        retry plus a timed-out request later."""
        return (
            self.renew_deadline
            - JITTER * self.retry_period
            - self.failure_retry
            - self.request_timeout
        )

    @property
    def crash_takeover(self) -> float:
        """A crashed holder's exchange is acquired at most this long after its last renew
        (the successor wakes exactly at the expiry it observed)."""
        return self.lease_duration + self.failure_retry

    @property
    def fencing_gap(self) -> float:
        """How long before anyone may acquire a holder stops writing."""
        return self.lease_duration - self.renew_deadline

    @property
    def backup_after(self) -> float:
        """A replica that is not preferred takes a free exchange over after this long."""
        return self.lease_duration + 2 * self.retry_period

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Timings:
        """``LEASE_DURATION`` and friends, as durations (``100s``, ``1500ms``); unset: default."""
        names = {
            "lease_duration": "LEASE_DURATION",
            "renew_deadline": "LEASE_RENEW_DEADLINE",
            "retry_period": "LEASE_RETRY_PERIOD",
            "failure_retry": "LEASE_FAILURE_RETRY",
            "request_timeout": "LEASE_REQUEST_TIMEOUT",
            "member_duration": "MEMBER_LEASE_DURATION",
            "eligible_after": "MEMBER_ELIGIBLE_AFTER",
            "handover_interval": "HANDOVER_INTERVAL",
            "clock_skew": "CLOCK_SKEW_BOUND",
            "orphan_after": "ORPHAN_LEASE_AFTER",
        }
        values = {
            attribute: parse_duration(environ[variable])
            for attribute, variable in names.items()
            if environ.get(variable)
        }
        return cls(**values)


def score(member: str, key: str) -> int:
    """A stable pseudo-random weight of ``member`` for ``key`` (the same in every process)."""
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred(key: str, members: Iterable[str]) -> str | None:
    """Rendezvous hashing: the member with the highest score; None without members."""
    return max(members, key=lambda member: (score(member, key), member), default=None)


def first_with_room(
    key: str, members: Iterable[str], loads: Mapping[str, int], cap: int
) -> str | None:
    """Rendezvous hashing with bounded loads: the highest-scoring member holding fewer than
    ``cap`` exchanges. A crashed holder's exchange whose preferred member is full is taken at
    once by the next, not by a backup a whole ``backup_after`` later."""
    ranked = sorted(members, key=lambda member: (score(member, key), member), reverse=True)
    return next((member for member in ranked if loads.get(member, 0) < cap), None)


def fair_share(exchanges: int, members: int) -> int:
    """The most exchanges one replica holds on its own initiative."""
    return math.ceil(1.25 * exchanges / max(1, members)) + 1


@dataclass(slots=True)
class Observed:
    """A Lease as this replica has observed it: its record and when it last changed (local)."""

    holder: str
    version: tuple[object, ...]  # what counts as a change: holder, renewTime, transitions...
    tenure: object  # what identifies one holder's tenure (its acquireTime)
    changed_at: float  # local monotonic time of the last observed change
    first_seen: float  # local monotonic time this tenure was first observed
    tenure_age: float = 0.0  # its age then, from its acquireTime, skew subtracted (>= 0)

    def free(self, now: float, duration: float) -> bool:
        return not self.holder or now - self.changed_at >= duration

    def free_since(self, duration: float) -> float:
        """When it became (or becomes) free, by local observation."""
        return self.changed_at if not self.holder else self.changed_at + duration

    def age(self, now: float) -> float:
        """A lower bound on how long this tenure has lasted."""
        return self.tenure_age + (now - self.first_seen)


def observe(
    previous: Observed | None,
    holder: str,
    version: tuple[object, ...],
    tenure: object,
    tenure_age: float,
    now: float,
    renewed_ago: float = 0.0,
) -> Observed:
    """Fold one reading of a Lease into what was observed of it; an unchanged ``version`` keeps
    the old observation time (that is what makes a silent holder expire).

    A Lease seen for the first time (this process just started) counts as changed when its
    ``renewTime`` says, skew subtracted (``renewed_ago``), not now: a replacement pod would
    otherwise wait a whole duration from its own start before taking over a crashed holder's
    exchanges it is preferred for. Safe within the skew bound: the holder stopped writing a
    renew deadline after that renewal's start, before the duration ran out."""
    if previous is not None and previous.version == version:
        return previous
    if previous is not None and previous.holder == holder and previous.tenure == tenure:
        return Observed(holder, version, tenure, now, previous.first_seen, previous.tenure_age)
    changed_at = now if previous is not None else now - max(0.0, renewed_ago)
    return Observed(holder, version, tenure, changed_at, now, max(0.0, tenure_age))


@dataclass(slots=True)
class Members:
    """Which replicas may be preferred: fresh member Leases, members for ``eligible_after``."""

    timings: Timings
    identity: str
    started_at: float  # this replica's own membership, by its own clock
    leases: dict[str, Observed] = field(default_factory=dict)
    eligible_since: dict[str, float] = field(default_factory=dict)
    self_ok: bool = True  # False while leaving, or while the own member Lease is not renewed

    def _fresh(self, now: float) -> dict[str, Observed | None]:
        """Holders of member Leases renewed within their duration (ourselves: by our own
        renewals, ``self_ok``), with what was observed of them."""
        fresh: dict[str, Observed | None] = {
            lease.holder: lease
            for lease in self.leases.values()
            if lease.holder and not lease.free(now, self.timings.member_duration)
        }
        fresh.pop(self.identity, None)
        if self.self_ok:
            fresh[self.identity] = None
        return fresh

    def fresh(self, now: float) -> set[str]:
        return set(self._fresh(now))

    def eligible(self, now: float) -> set[str]:
        """Fresh members that have been members for ``eligible_after``; when none has yet (a
        cold start), every fresh member, so that somebody always owns every exchange."""
        fresh = self._fresh(now)
        eligible = set()
        for holder, lease in fresh.items():
            age = now - self.started_at if lease is None else lease.age(now)
            if age >= self.timings.eligible_after:
                eligible.add(holder)
        for holder in list(self.eligible_since):
            if holder not in eligible:
                del self.eligible_since[holder]
        for holder in eligible:
            self.eligible_since.setdefault(holder, now)
        return eligible or set(fresh)

    def settled(self, holder: str, now: float) -> bool:
        """Eligible for ``eligible_after`` without a break: a handover to it is worth it."""
        since = self.eligible_since.get(holder)
        return since is not None and now - since >= self.timings.eligible_after


@dataclass(frozen=True, slots=True)
class Plan:
    acquire: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def plan(
    now: float,
    identity: str,
    keys: Iterable[str],
    leases: Mapping[str, Observed],
    held: set[str],
    members: Members,
    timings: Timings,
    last_handover_at: float,
    absent_since: Mapping[str, float],
) -> Plan:
    """What to acquire and what to hand over now.

    ``keys`` are the exchanges this replica runs a daemon for; ``leases`` what it observed of
    their Leases (by key); ``held`` the keys it holds; ``absent_since`` when a key without a Lease
    was first seen without one.
    """
    keys = sorted(keys)
    eligible = members.eligible(now)
    if not members.self_ok:
        return Plan()  # leaving, or our own membership is not renewed: take nothing new
    cap = fair_share(len(keys), len(eligible))
    loads = Counter(
        lease.holder for lease in leases.values() if not lease.free(now, timings.lease_duration)
    )
    acquire: list[str] = []
    count = loads[identity] = len(held)
    for key in keys:
        if key in held:
            continue
        lease = leases.get(key)
        if lease is None:
            free_since = absent_since.get(key, now)
        elif lease.free(now, timings.lease_duration):
            free_since = lease.free_since(timings.lease_duration)
        else:
            continue
        if first_with_room(key, eligible, loads, cap) == identity:
            acquire.append(key)
            count = loads[identity] = count + 1
        elif now - free_since >= timings.backup_after:
            acquire.append(key)  # nobody else took it: a backup, whatever the fair share
            count = loads[identity] = count + 1
    release: list[str] = []
    if now - last_handover_at >= timings.handover_interval:
        # Never to a member at its fair share: it would not acquire, a backup would after
        # ``backup_after``, hand it over again, and the exchange go unmonitored meanwhile.
        for key in sorted(held):
            owner = preferred(key, eligible)
            if (
                owner != identity
                and owner is not None
                and members.settled(owner, now)
                and loads[owner] < cap
            ):
                release.append(key)  # one at a time: a new pod causes no herd
                break
    return Plan(tuple(acquire), tuple(release))

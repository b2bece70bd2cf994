"""Who owns which exchange: the pure rules of ownership.py, with a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from overseer_operator import ownership
from overseer_operator.ownership import Members, Observed, Timings, observe, plan, preferred

KEYS = [f"uid-{index:03d}" for index in range(300)]
T = Timings()


def member(holder: str, now: float, *, since: float | None = None) -> Observed:
    """A member Lease renewed at ``now``, whose tenure was first observed at ``since``."""
    first = now if since is None else since
    return Observed(holder, (holder, now), f"{holder}-tenure", now, first)


def members(identity: str, now: float, others: dict[str, float], started: float) -> Members:
    """``others``: holder -> since when it is a member (observed)."""
    view = Members(T, identity, started)
    for holder, since in others.items():
        view.leases[f"m-{holder}"] = member(holder, now, since=since)
    return view


def test_the_default_timings_meet_the_issue_arithmetic():
    assert T.outage_tolerance >= 60.0  # a 1-minute apiserver outage costs no Lease
    assert T.crash_takeover + 15.0 <= 120.0  # plus seeding and connecting: about 2 minutes
    assert T.fencing_gap >= 20.0  # the old holder stops writing this long before any acquire
    assert T.backup_after > T.crash_takeover


def test_timings_that_cannot_fence_are_refused():
    with pytest.raises(ValueError, match="exceed the renew deadline"):
        Timings(lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry period"):
        Timings(lease_duration=20, renew_deadline=10, retry_period=8)


def test_timings_come_from_the_environment_as_durations():
    timings = Timings.from_environ(
        {"LEASE_DURATION": "8s", "LEASE_RENEW_DEADLINE": "6s", "LEASE_RETRY_PERIOD": "1s",
         "LEASE_FAILURE_RETRY": "500ms", "MEMBER_LEASE_DURATION": "3s"}
    )  # fmt: skip
    assert (timings.lease_duration, timings.renew_deadline, timings.retry_period) == (8, 6, 1)
    assert timings.failure_retry == 0.5
    assert timings.eligible_after == T.eligible_after  # unset: the default


def test_the_hash_is_stable_and_spreads_the_exchanges():
    # Not Python's hash(): the same answer in every process, whatever PYTHONHASHSEED.
    assert ownership.score("pod-a", "uid-1") == ownership.score("pod-a", "uid-1")
    shares = Counter(preferred(key, ["pod-a", "pod-b", "pod-c"]) for key in KEYS)
    assert set(shares) == {"pod-a", "pod-b", "pod-c"}
    assert all(70 <= share <= 130 for share in shares.values()), shares


def test_a_new_member_takes_only_its_share_from_each_of_the_others():
    before = {key: preferred(key, ["pod-a", "pod-b", "pod-c"]) for key in KEYS}
    after = {key: preferred(key, ["pod-a", "pod-b", "pod-c", "pod-d"]) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "pod-d" for key in moved)  # nobody else swaps exchanges
    assert 50 <= len(moved) <= 100


def test_a_lone_replica_is_eligible_at_once():
    view = Members(T, "pod-a", started_at=0.0)
    assert view.eligible(0.0) == {"pod-a"}  # nobody eligible yet: every fresh member is


def test_a_new_member_is_eligible_only_after_the_hysteresis():
    view = members("pod-a", 100.0, {"pod-b": 100.0}, started=0.0)
    assert view.eligible(100.0) == {"pod-a"}
    view.leases["m-pod-b"] = member("pod-b", 129.0, since=100.0)
    assert view.eligible(129.0) == {"pod-a"}
    view.leases["m-pod-b"] = member("pod-b", 130.0, since=100.0)
    assert view.eligible(130.0) == {"pod-a", "pod-b"}
    assert not view.settled("pod-b", 130.0)  # eligible just now: no handover to it yet
    assert view.settled("pod-b", 160.0)


def test_a_crash_looping_member_never_becomes_eligible():
    view = members("pod-a", 0.0, {}, started=-100.0)
    observed = None
    for restart in range(10):  # a new tenure every 20 s, renewed in between
        now = restart * 20.0
        observed = observe(observed, "pod-b", ("pod-b", now), f"tenure-{restart}", 0.0, now)
        view.leases["m-pod-b"] = observed
        for tick in range(0, 20, 5):
            observed = observe(
                observed, "pod-b", ("pod-b", now + tick), f"tenure-{restart}", 0.0, now + tick
            )
            view.leases["m-pod-b"] = observed
            assert "pod-b" not in view.eligible(now + tick)


def test_an_unrenewed_member_lease_expires_by_local_observation():
    view = members("pod-a", 0.0, {"pod-b": -100.0}, started=-100.0)
    assert view.eligible(1.0) == {"pod-a", "pod-b"}
    # The record never changes again: 30 s of our own clock later it is not a member.
    assert view.eligible(T.member_duration + 0.1) == {"pod-a"}


def test_the_wall_clock_age_of_a_tenure_counts_with_the_skew_taken_off():
    view = Members(T, "pod-a", started_at=0.0)
    # First observed now, but its acquireTime proves (skew already subtracted) 45 s of tenure.
    view.leases["m-pod-b"] = observe(None, "pod-b", ("pod-b", 1), "t", 45.0, 0.0)
    assert "pod-b" in view.eligible(0.0)


def free(now: float) -> Observed:
    return Observed("", ("", None), None, now, now)


def held_by(holder: str, now: float) -> Observed:
    return Observed(holder, (holder, now), "t", now, now)


def test_a_lone_replica_acquires_every_free_exchange_at_once():
    view = Members(T, "pod-a", started_at=0.0)
    keys = KEYS[:20]
    result = plan(0.0, "pod-a", keys, {}, set(), view, T, float("-inf"), dict.fromkeys(keys, 0.0))
    assert sorted(result.acquire) == keys
    assert result.release == ()


def test_two_settled_replicas_each_acquire_only_what_they_prefer():
    keys = KEYS[:40]
    leases = {key: free(0.0) for key in keys}
    taken: dict[str, set[str]] = {}
    for me, other in (("pod-a", "pod-b"), ("pod-b", "pod-a")):
        view = members(me, 0.0, {other: -100.0}, started=-100.0)
        view.eligible(-50.0)  # both eligible since -50 s
        result = plan(0.0, me, keys, leases, set(), view, T, float("-inf"), {})
        taken[me] = set(result.acquire)
    assert taken["pod-a"].isdisjoint(taken["pod-b"])
    assert taken["pod-a"] | taken["pod-b"] == set(keys)


def test_nobody_acquires_an_exchange_held_by_a_live_holder():
    view = Members(T, "pod-a", started_at=-100.0)
    leases = {key: held_by("pod-z", 0.0) for key in KEYS[:5]}
    assert plan(10.0, "pod-a", KEYS[:5], leases, set(), view, T, 0.0, {}).acquire == ()
    # The holder stopped renewing: free after the lease duration, by our own clock.
    later = T.lease_duration + 0.01
    assert len(plan(later, "pod-a", KEYS[:5], leases, set(), view, T, 0.0, {}).acquire) == 5


def test_a_replica_that_is_not_preferred_is_a_backup_after_a_while():
    view = members("pod-a", 0.0, {"pod-b": -100.0}, started=-100.0)
    view.eligible(-60.0)
    mine = [key for key in KEYS if preferred(key, ["pod-a", "pod-b"]) == "pod-b"][:3]
    leases = {key: free(0.0) for key in mine}
    assert plan(1.0, "pod-a", mine, leases, set(), view, T, 0.0, {}).acquire == ()
    for lease in view.leases.values():
        lease.changed_at = T.backup_after  # pod-b stays a fresh member, yet takes nothing
    late = plan(T.backup_after, "pod-a", mine, leases, set(), view, T, 0.0, {})
    assert sorted(late.acquire) == sorted(mine)


def test_handovers_are_one_at_a_time_and_only_to_a_settled_member():
    keys = KEYS[:40]
    view = members("pod-a", 100.0, {"pod-b": 60.0}, started=0.0)
    held = set(keys)
    leases = {key: held_by("pod-a", 100.0) for key in keys}
    # pod-b is seen eligible from 100 s on: not settled (no handover to it) before 130 s.
    view.eligible(100.0)
    assert plan(100.0, "pod-a", keys, leases, held, view, T, 0.0, {}).release == ()
    for lease in view.leases.values():
        lease.changed_at = 131.0
    assert plan(129.0, "pod-a", keys, leases, held, view, T, 0.0, {}).release == ()
    result = plan(131.0, "pod-a", keys, leases, held, view, T, 0.0, {})
    assert len(result.release) == 1
    assert preferred(result.release[0], ["pod-a", "pod-b"]) == "pod-b"
    # The next one only after the handover interval.
    soon = 131.0 + T.handover_interval / 2
    assert plan(soon, "pod-a", keys, leases, held, view, T, 131.0, {}).release == ()


def test_no_handover_to_a_member_already_at_its_fair_share():
    # It would not acquire: a backup would take the exchange after backup_after, hand it over
    # again, and the exchange would go unmonitored in between (found by benchmarks.chaos).
    view = members("pod-a", 100.0, {"pod-b": 0.0, "pod-c": 0.0}, started=0.0)
    view.eligible(60.0)
    trio = ["pod-a", "pod-b", "pod-c"]
    b_prefers = [key for key in KEYS if preferred(key, trio) == "pod-b"][:7]
    others = [key for key in KEYS if preferred(key, trio) != "pod-b"][:5]
    keys = b_prefers + others
    assert ownership.fair_share(len(keys), 3) == 6
    leases = {key: held_by("pod-b", 100.0) for key in b_prefers[:6]}
    leases[b_prefers[6]] = held_by("pod-a", 100.0)
    leases.update({key: held_by("pod-c", 100.0) for key in others})
    mine = {b_prefers[6]}
    assert plan(100.0, "pod-a", keys, leases, mine, view, T, 0.0, {}).release == ()
    leases[b_prefers[0]] = free(100.0)  # pod-b below its share again: the handover goes ahead
    result = plan(100.0, "pod-a", keys, leases, mine, view, T, 0.0, {})
    assert result.release == (b_prefers[6],)


def test_the_fair_share_caps_what_one_replica_takes_on_its_own_initiative():
    assert ownership.fair_share(100, 4) == 33
    assert ownership.fair_share(1, 1) == 3
    view = members("pod-a", 0.0, {"pod-b": -100.0, "pod-c": -100.0}, started=-100.0)
    view.eligible(-60.0)
    keys = KEYS[:12]
    held = {key for key in keys if preferred(key, ["pod-a", "pod-b", "pod-c"]) != "pod-a"}
    leases = {key: held_by("pod-a" if key in held else "", 0.0) for key in keys}
    for key in keys:
        if key not in held:
            leases[key] = free(0.0)
    result = plan(0.0, "pod-a", keys, leases, held, view, T, float("-inf"), {})
    cap = ownership.fair_share(len(keys), 3)
    assert len(held) + len(result.acquire) <= max(cap, len(held))


def test_a_leaving_replica_takes_nothing():
    view = Members(T, "pod-a", started_at=0.0)
    view.self_ok = False
    assert plan(0.0, "pod-a", KEYS[:3], {}, set(), view, T, 0.0, {}) == ownership.Plan()


def test_an_unchanged_reading_keeps_the_observation_time():
    first = observe(None, "pod-a", ("pod-a", "t1", 1), "a1", 0.0, 0.0)
    again = observe(first, "pod-a", ("pod-a", "t1", 1), "a1", 0.0, 50.0)
    assert again.changed_at == 0.0  # a silent holder expires by our clock
    renewed = observe(again, "pod-a", ("pod-a", "t2", 1), "a1", 0.0, 60.0)
    assert (renewed.changed_at, renewed.first_seen) == (60.0, 0.0)  # same tenure
    taken = observe(renewed, "pod-b", ("pod-b", "t3", 2), "b1", 0.0, 70.0)
    assert taken.first_seen == 70.0  # a new tenure starts its hysteresis again


def test_a_lease_first_seen_by_a_new_process_counts_from_its_renewal_not_from_now():
    """A replacement pod starts 3 s after the holder's last renewal (by the Lease's renewTime,
    skew subtracted): the Lease is free 3 s sooner than a whole duration after the pod's start,
    exactly when the replicas that watched the renewal judge it free."""
    first = observe(None, "pod-a", ("pod-a", "t1", 1), "a1", 0.0, 100.0, renewed_ago=3.0)
    assert first.changed_at == 97.0 and first.first_seen == 100.0
    assert not first.free(97.0 + T.lease_duration - 0.1, T.lease_duration)
    assert first.free(97.0 + T.lease_duration, T.lease_duration)
    # A renewal watched live is dated by the watch, whatever its renewTime says.
    renewed = observe(first, "pod-a", ("pod-a", "t2", 1), "a1", 0.0, 101.0, renewed_ago=50.0)
    assert renewed.changed_at == 101.0
    # A renewTime ahead of our clock (skew beyond the bound) proves nothing: now.
    ahead = observe(None, "pod-a", ("pod-a", "t1", 1), "a1", 0.0, 100.0, renewed_ago=-4.0)
    assert ahead.changed_at == 100.0


def test_an_exchange_whose_preferred_member_is_full_goes_at_once_to_the_next():
    """Bounded-load rendezvous hashing. The crashed holder's exchange is preferred by pod-b, which
    already holds its fair share: it will not take it, so the next member in HRW order with room
    takes it as soon as it is free, not a backup LD + 2 RP later (the chaos run's 18 s
    takeover, crash bound 13.5 s)."""
    trio = ["pod-a", "pod-b", "pod-c"]
    b_first = [key for key in KEYS if preferred(key, trio) == "pod-b"]
    # Of those, one whose second choice is pod-a: pod-a's turn when pod-b is full.
    orphan = next(key for key in b_first if preferred(key, ["pod-a", "pod-c"]) == "pod-a")
    full = [key for key in b_first if key != orphan][:4]
    keys = [*full, orphan, *[key for key in KEYS if preferred(key, trio) == "pod-c"][:1]]
    cap = ownership.fair_share(len(keys), 3)
    assert cap == 4
    leases = {key: held_by("pod-b", 100.0) for key in full}
    leases[orphan] = held_by("pod-dead", 100.0 - T.lease_duration)  # just lapsed
    leases[keys[-1]] = held_by("pod-c", 100.0)
    for identity in ("pod-a", "pod-c"):
        others = {name: 0.0 for name in trio if name != identity}
        view = members(identity, 100.0, others, started=0.0)
        view.eligible(60.0)
        mine = {keys[-1]} if identity == "pod-c" else set()
        result = plan(100.0, identity, keys, leases, mine, view, T, 0.0, {})
        assert (orphan in result.acquire) is (identity == "pod-a"), identity
    # With room left, pod-b would have been the one (and the others leave it alone).
    leases[full[0]] = free(100.0)
    view = members("pod-a", 100.0, {"pod-b": 0.0, "pod-c": 0.0}, started=0.0)
    view.eligible(60.0)
    assert orphan not in plan(100.0, "pod-a", keys, leases, set(), view, T, 0.0, {}).acquire

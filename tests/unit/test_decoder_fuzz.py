"""A quick fuzz of the wire decoder: a few thousand generated and mutated bodies, every one a
decoded message or a counted rejection. The 100,000-input run is ``scripts/fuzz``."""

from __future__ import annotations

from benchmarks.fuzz_decoder import Summary, check, fuzz


def test_a_few_thousand_inputs_decode_or_are_rejected_never_crash() -> None:
    summary = fuzz(3000)  # derandomized: the same inputs each run
    assert summary.inputs >= 3000
    # The generator reaches every outcome it is meant to (else the fuzzing is blind).
    assert {"etf heartbeat", "json heartbeat"} <= set(summary.accepted)
    assert {
        "undecodable",
        "too_large",
        "too_deep",
        "unsafe_term",
        "missing_event_type",
        "invalid_hostname",
    } <= set(summary.rejected)
    assert summary.inputs == sum(summary.accepted.values()) + sum(summary.rejected.values())


def test_the_harness_counts_what_it_sees() -> None:
    summary = Summary()
    check(b'{"event_type":"status","hostname":"h"}', summary)
    check(b"\x83", summary)
    assert (summary.inputs, dict(summary.accepted), dict(summary.rejected)) == (
        2,
        {"json heartbeat": 1},
        {"undecodable": 1},
    )

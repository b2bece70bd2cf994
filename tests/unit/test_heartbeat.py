"""Heartbeat wire format: ETF and JSON decoding, validation and rejection, and our own encoding."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import erlang
import pytest

from overseer_operator.heartbeat import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_WORKLOAD_BYTES,
    Heartbeat,
    MessageRejected,
    decode_message,
    encode_etf,
    encode_json,
)

Atom = erlang.OtpErlangAtom
Binary = erlang.OtpErlangBinary

HEARTBEAT = Heartbeat(
    "007aaefbbcc9", "builder", "active", [{"description": "building workflow 123"}]
)


def legacy_atom(name: str) -> Atom:
    """An atom as OTP 25 and older encode it (ATOM_EXT, Latin-1 bytes)."""
    return Atom(name.encode("latin-1"))


def etf(fields: dict[str, Any], atom: Any = Atom) -> bytes:
    return erlang.term_to_binary({atom(key): value for key, value in fields.items()})


_ABSENT = object()  # leaves a field out of status_fields()


def status_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_type": Atom("status"),
        "hostname": Binary(b"007aaefbbcc9"),
        "type": Atom("builder"),
        "status": Atom("active"),
        "workload": [{Atom("description"): Binary(b"building workflow 123")}],
    }
    fields.update(overrides)
    return {key: value for key, value in fields.items() if value is not _ABSENT}


def rejected_reason(body: bytes) -> str:
    with pytest.raises(MessageRejected) as caught:
        decode_message(body)
    assert str(caught.value)  # a human message for the log
    return caught.value.reason


# Decoding what workers send


@pytest.mark.parametrize("atom", [Atom, legacy_atom], ids=["utf8-atoms", "latin1-atoms"])
def test_decodes_an_elixir_status_map(atom: Any) -> None:
    fields = status_fields(
        event_type=atom("status"), type=atom("builder"), status=atom("active"),
        workload=[{atom("description"): Binary(b"building workflow 123")}],
    )  # fmt: skip
    message = decode_message(etf(fields, atom))
    assert message.format == "etf"
    assert message.event_type == "status"
    assert message.heartbeat == HEARTBEAT


def test_decodes_a_json_object_with_leading_whitespace() -> None:
    body = b" \n\t" + json.dumps(
        {"event_type": "status", "hostname": "worker-1", "type": "deployer",
         "status": "active", "workload": [{"description": "deploying"}]}
    ).encode()  # fmt: skip
    message = decode_message(body)
    assert message.format == "json"
    assert message.heartbeat == Heartbeat(
        "worker-1", "deployer", "active", [{"description": "deploying"}]
    )


def test_type_may_be_a_binary_and_hostname_an_erlang_string() -> None:
    # An Erlang string ("abc", a list of bytes) arrives as STRING_EXT: erlang-py gives bytes.
    body = etf(status_fields(type=Binary(b"workflow_orchestrator"), hostname=b"host-7"))
    heartbeat = decode_message(body).heartbeat
    assert heartbeat is not None
    assert (heartbeat.hostname, heartbeat.module_type) == ("host-7", "workflow_orchestrator")


def test_workload_becomes_plain_json_data() -> None:
    workload = [
        {
            Atom("description"): Binary("bygger åt dig".encode()),
            Atom("step"): Atom("config"),
            Atom("ids"): (1, 300, -5, 2**40),
            Atom("nested"): {Binary(b"k"): [Atom("nil"), True, False, 1.5, b"chars", []]},
            7: Binary(b"\xff bad utf-8"),
        },
        erlang.OtpErlangList([Atom("head"), Atom("tail")], improper=True),
    ]
    heartbeat = decode_message(etf(status_fields(workload=workload))).heartbeat
    assert heartbeat is not None
    assert heartbeat.workload == [
        {
            "description": "bygger åt dig",
            "step": "config",
            "ids": [1, 300, -5, 2**40],
            "nested": {"k": [None, True, False, 1.5, "chars", []]},
            "7": "\ufffd bad utf-8",
        },
        ["head", "tail"],
    ]
    json.dumps(heartbeat.workload)  # JSON-able as is


def test_other_event_types_are_decoded_but_are_not_heartbeats() -> None:
    message = decode_message(etf({"event_type": Atom("upgrade_request"), "x": 1}))
    assert (message.event_type, message.heartbeat) == ("upgrade_request", None)
    message = decode_message(b'{"event_type": "system_event"}')
    assert (message.event_type, message.format, message.heartbeat) == ("system_event", "json", None)


@pytest.mark.parametrize(
    ("overrides", "module_type", "status", "workload"),
    [
        ({"type": _ABSENT}, "unknown", "active", [{"description": "building workflow 123"}]),
        ({"type": Atom("nil")}, "unknown", "active", [{"description": "building workflow 123"}]),
        ({"status": _ABSENT}, "builder", "active", [{"description": "building workflow 123"}]),
        ({"status": Atom("inactive")}, "builder", "inactive",
         [{"description": "building workflow 123"}]),
        ({"workload": _ABSENT}, "builder", "active", []),
        ({"workload": {Atom("description"): Binary(b"one")}}, "builder", "active",
         [{"description": "one"}]),
    ],
)  # fmt: skip
def test_defaults_for_missing_fields(
    overrides: dict[str, Any], module_type: str, status: str, workload: list[Any]
) -> None:
    heartbeat = decode_message(etf(status_fields(**overrides))).heartbeat
    assert heartbeat == Heartbeat("007aaefbbcc9", module_type, status, workload)


def test_decodes_a_compressed_term() -> None:
    body = erlang.term_to_binary(
        {Atom(key): value for key, value in status_fields().items()}, compressed=True
    )
    assert body[1] == 80
    assert decode_message(body).heartbeat == HEARTBEAT


def test_an_oversized_workload_keeps_its_leading_entries() -> None:
    entry = {Atom("description"): Binary(b"x" * 1000)}
    message = decode_message(etf(status_fields(workload=[entry] * 40)))
    assert message.heartbeat is not None
    kept = message.heartbeat.workload
    assert 0 < len(kept) < 40
    assert kept == [{"description": "x" * 1000}] * len(kept)
    assert len(json.dumps(kept, separators=(",", ":"))) <= MAX_WORKLOAD_BYTES


# Rejections


A_PID = erlang.OtpErlangPid(Atom("node@host"), b"\0\0\0\1", b"\0\0\0\0", b"\0\0\0\1")
A_FUN = erlang.OtpErlangFunction(113, b"\x77\x01m\x77\x01f\x61\x01")  # fun m:f/1


def nested_lists(depth: int) -> Any:
    term: Any = []
    for _ in range(depth):
        term = [term]
    return term


def test_message_rejected_is_a_value_error_with_a_reason() -> None:
    error = MessageRejected("undecodable", "bad bytes")
    assert isinstance(error, ValueError)
    assert (error.reason, str(error)) == ("undecodable", "bad bytes")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "undecodable"),
        (b"hello", "undecodable"),
        (b"[1, 2]", "undecodable"),
        (b'{"event_type": ', "undecodable"),
        (b'{"event_type": "status", "hostname": "\xff"}', "undecodable"),
        (b"\x83", "undecodable"),
        (b"\x83\x6d\x00\x00\x00\x10abc", "undecodable"),  # a truncated binary
        (erlang.term_to_binary([1]) + b"\x00", "undecodable"),  # trailing bytes
        (b"\x83\x76\x00\x02\xff\xfe", "undecodable"),  # an atom of invalid UTF-8
        (erlang.term_to_binary([1, 2]), "not_a_map"),
        (b'{"hostname": "a"}', "missing_event_type"),
        (etf({"hostname": Binary(b"a")}), "missing_event_type"),
        (etf({"event_type": 5}), "invalid_event_type"),
        (etf({"event_type": Binary(b"a b")}), "invalid_event_type"),
        (etf(status_fields(hostname=_ABSENT)), "missing_hostname"),
        (etf(status_fields(hostname=Atom("nil"))), "missing_hostname"),
        (etf(status_fields(hostname=Binary(b""))), "invalid_hostname"),
        (etf(status_fields(hostname=Binary(b"two words"))), "invalid_hostname"),
        (etf(status_fields(hostname=Binary(b"line\nbreak"))), "invalid_hostname"),
        (etf(status_fields(hostname=Binary(b"a" * 254))), "invalid_hostname"),
        (etf(status_fields(hostname=42)), "invalid_hostname"),
        (etf(status_fields(hostname=[Binary(b"a")])), "invalid_hostname"),
        (b'{"event_type": "status", "hostname": {"a": 1}}', "invalid_hostname"),
        (etf(status_fields(type={Atom("a"): 1})), "invalid_module_type"),
        (etf(status_fields(type=Binary(b"x" * 65))), "invalid_module_type"),
        (etf(status_fields(status=Binary(b"very active!"))), "invalid_status"),
        (b'{"event_type": "status", "hostname": "h", "status": true}', "invalid_status"),
        (b"{" + b" " * MAX_BODY_BYTES + b"}", "too_large"),
        (etf(status_fields(workload=[2**64])), "too_large"),
        (etf(status_fields(workload=nested_lists(MAX_DEPTH))), "too_deep"),
        (b'{"event_type": "status", "w": ' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b'{"w": ' + b"[" * 30000 + b"]" * 30000 + b"}", "too_deep"),
        (etf(status_fields(workload=[A_PID])), "unsafe_term"),
        (etf(status_fields(workload=[A_FUN])), "unsafe_term"),
        (etf(status_fields(workload=[Binary(b"\xff", bits=3)])), "unsafe_term"),
    ],
)  # fmt: skip
def test_rejects_unusable_messages(body: bytes, reason: str) -> None:
    assert rejected_reason(body) == reason


@pytest.mark.parametrize("hostname", [".", "..", "...", ".hidden", "-x", "_x", ":", "::1"])
@pytest.mark.parametrize("encode", ["etf", "json"])
def test_a_hostname_must_start_with_a_letter_or_digit(hostname: str, encode: str) -> None:
    # "..", sent as a path segment, would name the exchange itself: DELETE would remove it.
    if encode == "etf":
        body = etf(status_fields(hostname=Binary(hostname.encode())))
    else:
        body = json.dumps({"event_type": "status", "hostname": hostname}).encode()
    assert rejected_reason(body) == "invalid_hostname"


@pytest.mark.parametrize(
    "hostname", ["007aaefbbcc9", "h", "worker-1.example.com.", "10.0.0.7", "fe80::1", "a_b:c"]
)
def test_usable_hostnames(hostname: str) -> None:
    body = json.dumps({"event_type": "status", "hostname": hostname}).encode()
    assert decode_message(body).heartbeat.hostname == hostname


def test_accepts_nesting_up_to_the_limit() -> None:
    # The map is at depth 0 and the workload at 1, so its innermost list is at MAX_DEPTH.
    body = etf(status_fields(workload=nested_lists(MAX_DEPTH - 1)))
    assert decode_message(body).heartbeat is not None


def test_a_compressed_body_is_not_inflated_past_the_limit() -> None:
    inner = erlang.term_to_binary([Binary(b"\x00" * (4 * MAX_BODY_BYTES))])[1:]
    squeezed = zlib.compress(inner, 9)
    assert len(squeezed) < MAX_BODY_BYTES
    honest = b"\x83\x50" + struct.pack(">I", len(inner)) + squeezed
    assert rejected_reason(honest) == "too_large"
    lying = b"\x83\x50" + struct.pack(">I", 1000) + squeezed
    assert rejected_reason(lying) == "undecodable"


def test_a_corrupt_compressed_body_is_undecodable() -> None:
    assert rejected_reason(b"\x83\x50\x00\x00\x00\x10not zlib at all") == "undecodable"
    assert rejected_reason(b"\x83\x50\x00") == "undecodable"


# Encoding


def test_encode_etf_uses_atoms_and_binaries_as_elixir_does() -> None:
    heartbeat = Heartbeat(
        "worker-1", "builder", "active",
        [{"description": "building", "steps": [1, None, True], "meta": {"ok": 2.5}}],
    )  # fmt: skip
    term = erlang.binary_to_term(encode_etf(heartbeat))
    assert term == {
        Atom("event_type"): Atom("status"),
        Atom("hostname"): Binary(b"worker-1"),
        Atom("type"): Atom("builder"),
        Atom("status"): Atom("active"),
        Atom("workload"): [
            {
                Atom("description"): Binary(b"building"),
                Atom("steps"): [1, Atom("nil"), True],
                Atom("meta"): {Atom("ok"): 2.5},
            }
        ],
    }
    # Keys in Erlang's order (sorted atoms), so the bytes match term_to_binary's.
    assert list(term) == [Atom(key) for key in ("event_type", "hostname", "status", "type",
                                                "workload")]  # fmt: skip


def test_encode_etf_can_carry_another_event_type() -> None:
    message = decode_message(encode_etf(HEARTBEAT, event_type="deregister"))
    assert (message.event_type, message.heartbeat) == ("deregister", None)


@pytest.mark.parametrize("encode", [encode_etf, encode_json])
def test_encodings_round_trip(encode: Any) -> None:
    heartbeat = Heartbeat(
        "node-3.example.com", "fleet_manager", "active",
        [{"description": "ünïcode", "count": 3, "tags": ["a", "b"], "none": None}],
    )  # fmt: skip
    assert decode_message(encode(heartbeat)).heartbeat == heartbeat


def test_encode_json_writes_the_legacy_keys() -> None:
    assert json.loads(encode_json(HEARTBEAT)) == {
        "event_type": "status",
        "hostname": "007aaefbbcc9",
        "type": "builder",
        "status": "active",
        "workload": [{"description": "building workflow 123"}],
    }

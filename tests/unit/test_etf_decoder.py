"""The one-pass ETF decoder against erlang-py, the reference it replaced on the hot path.

Random plain terms are encoded with erlang-py and decoded both ways: by ``decode_message``'s
decoder, and by erlang-py's ``binary_to_term`` followed by the conversion to plain Python the
operator used before (kept here as the reference). They must agree on every value; and every
truncation or corruption of a heartbeat is refused as a ``MessageRejected``, never another error.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import struct
from typing import Any

import erlang
import pytest

from overseer_operator.heartbeat import (
    MAX_DEPTH,
    Heartbeat,
    MessageRejected,
    _decode_etf,
    decode_message,
    encode_etf,
)

Atom = erlang.OtpErlangAtom
Binary = erlang.OtpErlangBinary


def reference(body: bytes) -> Any:
    """What the operator decoded before: erlang-py, then atoms and binaries to text."""
    return _plain(erlang.binary_to_term(body))


def _plain(term: Any) -> Any:
    if term is None or isinstance(term, bool | int | str):
        return term
    if isinstance(term, float):
        return term if math.isfinite(term) else None
    if isinstance(term, Atom):
        text = term.value.decode("latin-1") if isinstance(term.value, bytes) else term.value
        return None if text == "nil" else text
    if isinstance(term, Binary):
        return term.value.decode("utf-8", "replace")
    if isinstance(term, bytes):
        return term.decode("latin-1")
    if isinstance(term, dict):
        return {_key(key): _plain(value) for key, value in term.items()}
    if isinstance(term, erlang.OtpErlangList):
        term = term.value
    return [_plain(item) for item in term]


def _key(term: Any) -> str:
    value = _plain(term)
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True, separators=(",", ":"))
    )


ATOM_NAMES = ["status", "builder", "nil", "true", "false", "undefined", "héllo", "x" * 255, ""]


def random_term(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["atom", "latin1", "binary", "bytes", "int", "big", "float", "string"]
    if depth < 6:
        kinds += ["list", "tuple", "map", "improper"]
    kind = rng.choice(kinds)
    if kind == "atom":
        return Atom(rng.choice(ATOM_NAMES))
    if kind == "latin1":  # ATOM_EXT / SMALL_ATOM_EXT, as OTP 25 and older send
        return Atom(rng.choice(ATOM_NAMES).encode("latin-1"))
    if kind == "binary":
        return Binary(rng.choice(["building", "ünïcode", ""]).encode())
    if kind == "bytes":  # invalid UTF-8 in a binary: replaced, not refused
        return Binary(bytes(rng.randrange(256) for _ in range(rng.randrange(6))))
    if kind == "int":
        return rng.choice([0, 255, 256, -1, 2**31 - 1, -(2**31)])
    if kind == "big":
        return rng.choice([2**31, -(2**31) - 1, 2**63 - 1, -(2**64) + 1])
    if kind == "float":
        return rng.choice([0.5, -1e300, float("inf"), float("nan")])
    if kind == "string":  # STRING_EXT: a list of bytes
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 5)))
    size = rng.randrange(4)
    if kind == "list":
        return [random_term(rng, depth + 1) for _ in range(size)]
    if kind == "tuple":
        return tuple(random_term(rng, depth + 1) for _ in range(size))
    if kind == "improper":
        items = [random_term(rng, depth + 1) for _ in range(size + 1)]
        return erlang.OtpErlangList([*items, Atom("tail")], improper=True)
    keys = [
        rng.choice([Atom("k"), Atom(f"k{index}"), Binary(b"bin"), index, (index, Atom("t"))])
        for index in range(size)
    ]
    return {key: random_term(rng, depth + 1) for key in keys}


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_erlang_py_on_random_terms(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        body = erlang.term_to_binary(random_term(rng))
        assert _decode_etf(body) == reference(body), body


def test_agrees_on_a_heartbeat_and_compressed_bodies() -> None:
    body = encode_etf(Heartbeat("h-1", "builder", "active", [{"description": "x" * 300}]))
    assert _decode_etf(body) == reference(body)
    compressed = erlang.term_to_binary(erlang.binary_to_term(body), compressed=True)
    assert compressed[1] == 80
    assert _decode_etf(compressed) == reference(body)


def test_atoms_are_interned_once_decoded() -> None:
    first = decode_message(encode_etf(Heartbeat("h-1", "deployer", "active", []))).heartbeat
    second = decode_message(encode_etf(Heartbeat("h-2", "deployer", "active", []))).heartbeat
    assert first is not None and second is not None
    assert first.module_type is second.module_type


def test_every_truncation_of_a_heartbeat_is_refused() -> None:
    body = encode_etf(Heartbeat("h-1", "builder", "active", [{"description": "d", "n": 2**40}]))
    for end in range(2, len(body)):
        with pytest.raises(MessageRejected) as caught:
            decode_message(body[:end])
        assert caught.value.reason == "undecodable"


def test_every_single_byte_corruption_is_refused_or_decoded() -> None:
    body = encode_etf(Heartbeat("h-1", "builder", "active", [{"description": "d", "n": 3}]))
    rng = random.Random(7)
    for position in range(1, len(body)):
        for value in {0, 255, rng.randrange(256), body[position] ^ 1}:
            corrupted = body[:position] + bytes([value]) + body[position + 1 :]
            # Anything but a rejection (IndexError, UnicodeDecodeError...) fails the test.
            with contextlib.suppress(MessageRejected):
                decode_message(corrupted)


def nested_lists(depth: int) -> bytes:
    term: Any = []
    for _ in range(depth):
        term = [term]
    return erlang.term_to_binary(term)


def test_nesting_is_bounded_as_before() -> None:
    # The outermost list is at depth 0; a non-empty container at MAX_DEPTH is refused.
    assert _decode_etf(nested_lists(MAX_DEPTH)) == reference(nested_lists(MAX_DEPTH))
    with pytest.raises(MessageRejected) as caught:
        _decode_etf(nested_lists(MAX_DEPTH + 1))
    assert caught.value.reason == "too_deep"


def test_integers_wider_than_64_bits_are_refused_before_decoding() -> None:
    wide = b"\x83n\x09\x00" + b"\xff" * 9  # SMALL_BIG_EXT with 9 digits
    with pytest.raises(MessageRejected) as caught:
        _decode_etf(wide)
    assert caught.value.reason == "too_large"
    assert _decode_etf(b"\x83n\x08\x01" + struct.pack("<Q", 2**64 - 1)) == -(2**64 - 1)


def test_an_atom_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(MessageRejected) as caught:
        _decode_etf(b"\x83w\x02\xc3\x28")  # SMALL_ATOM_UTF8_EXT with invalid UTF-8
    assert caught.value.reason == "undecodable"

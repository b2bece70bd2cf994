"""Heartbeat messages on the wire: decoding what workers send, and encoding our own.

The Elixir workers (overseer_api) publish ``:erlang.term_to_binary(map)`` with atom keys
``event_type``, ``hostname``, ``type``, ``status`` and ``workload``; newer producers may send a JSON
object with the same keys. The format is told by content: Erlang term format starts with the
version byte 131, JSON with ``{``.

Bodies are untrusted. Before erlang-py builds anything, the term's structure is walked without
building it, so that nesting depth, integer width and term kinds are bounded (only plain data:
maps, lists, tuples, atoms, binaries, strings, numbers), and a compressed body is inflated only up
to the size limit. erlang-py never creates atoms in a VM, so foreign atoms are harmless here.

Decisions on missing fields: a heartbeat without ``type`` is still a sign of life, so it counts
with module type ``unknown``; without ``status`` it is ``active`` (what overseer_api always sends);
a ``workload`` that is not a list is wrapped in one, and a workload whose JSON exceeds
``MAX_WORKLOAD_BYTES`` keeps only its leading entries. A missing or unusable hostname, event type,
module type or status rejects the message.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import erlang

from overseer_operator.model import DEFAULT_STATUS, Heartbeat

MAX_BODY_BYTES = 64 * 1024
MAX_WORKLOAD_BYTES = 16 * 1024
MAX_DEPTH = 32
# erlang-py decodes big integers in quadratic time, so wider ones are refused before decoding.
MAX_INTEGER_BYTES = 8

STATUS_EVENT = "status"
UNKNOWN_MODULE_TYPE = "unknown"

WireFormat = Literal["etf", "json"]

# A hostname becomes a Manager path segment (DELETE .../modules/{hostname}): it starts with a
# letter or digit, so "." and ".." (which would name the exchange itself) cannot pass.
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"  # event types, module types and statuses
_NAME = re.compile(NAME_PATTERN[1:-1])
_MAX_ATOM_CHARS = 255  # Erlang refuses longer atoms

_VERSION = 131
_COMPRESSED = 80
# Term tags (erl_ext_dist) of plain data, by how their payload is laid out.
_FIXED_SIZE = {97: 1, 98: 4, 70: 8, 99: 31, 106: 0}  # small int, int, floats, nil
_LENGTH_PREFIXED = {100: 2, 118: 2, 115: 1, 119: 1, 107: 2, 109: 4}  # atoms, string, binary
_CONTAINERS = {104: (1, 1), 105: (4, 1), 108: (4, 1), 116: (4, 2)}  # tuples, list, map
_LIST = 108
_BIG_INTEGERS = {110: 1, 111: 4}


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A decoded message; ``heartbeat`` is set only for ``status`` events."""

    event_type: str
    format: WireFormat
    heartbeat: Heartbeat | None


class MessageRejected(ValueError):
    """A message that cannot be used; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_name(value: str) -> bool:
    """Whether ``value`` is usable as an event type, a module type or a status."""
    return _NAME.fullmatch(value) is not None


def decode_message(body: bytes) -> DecodedMessage:
    """Decode an ETF or JSON message body; ``MessageRejected`` if it is unusable."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageRejected(
            "too_large", f"message of {len(body)} bytes exceeds {MAX_BODY_BYTES} bytes"
        )
    if body[:1] == bytes([_VERSION]):
        return _message(_decode_etf(body), "etf")
    if body.lstrip()[:1] == b"{":
        return _message(_decode_json(body), "json")
    raise MessageRejected("undecodable", "neither Erlang term format nor a JSON object")


def encode_etf(heartbeat: Heartbeat, event_type: str = STATUS_EVENT) -> bytes:
    """The body an Elixir worker would send: atom keys, atom event type, status and type."""
    body: bytes = erlang.term_to_binary(  # erlang is untyped
        _atom_keyed(
            {
                "event_type": erlang.OtpErlangAtom(event_type),
                "hostname": erlang.OtpErlangBinary(heartbeat.hostname.encode()),
                "status": erlang.OtpErlangAtom(heartbeat.status),
                "type": erlang.OtpErlangAtom(heartbeat.module_type),
                "workload": [_to_term(item) for item in heartbeat.workload],
            }
        )
    )
    return body


def encode_json(heartbeat: Heartbeat, event_type: str = STATUS_EVENT) -> bytes:
    """The same message as a JSON object."""
    document = {
        "event_type": event_type,
        "hostname": heartbeat.hostname,
        "type": heartbeat.module_type,
        "status": heartbeat.status,
        "workload": heartbeat.workload,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# Decoding


def _decode_etf(body: bytes) -> Any:
    if body[1:2] == bytes([_COMPRESSED]):
        body = _inflate(body)
    _check_term(body)
    try:
        term = erlang.binary_to_term(body)
    except Exception as error:  # erlang-py signals malformed input with several exception types
        raise MessageRejected("undecodable", f"invalid Erlang term: {error}") from None
    return _plain(term)


def _decode_json(body: bytes) -> Any:
    try:
        document = json.loads(body)
    except RecursionError:
        raise MessageRejected("too_deep", "JSON nested too deeply to parse") from None
    except ValueError as error:
        raise MessageRejected("undecodable", f"invalid JSON: {error}") from None
    return _plain(document)


def _inflate(body: bytes) -> bytes:
    """The uncompressed term of a compressed body, never inflating past the size limit."""
    if len(body) < 6:
        raise MessageRejected("undecodable", "truncated compressed term")
    (size,) = struct.unpack(">I", body[2:6])
    if size > MAX_BODY_BYTES:
        raise MessageRejected(
            "too_large", f"compressed term of {size} bytes exceeds {MAX_BODY_BYTES} bytes"
        )
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body[6:], size + 1)
    except zlib.error as error:
        raise MessageRejected("undecodable", f"corrupt compressed term: {error}") from None
    if len(data) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise MessageRejected("undecodable", "compressed term does not match its declared size")
    return bytes([_VERSION]) + data


def _check_term(data: bytes) -> None:
    """Walk the term's layout without building it; refuse what is not bounded plain data."""
    offset = 1
    pending = [1]  # terms still to read at each open nesting level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        tag = _read(data, offset, 1)
        offset += 1
        if tag in _FIXED_SIZE:
            offset += _FIXED_SIZE[tag]
        elif tag in _LENGTH_PREFIXED:
            width = _LENGTH_PREFIXED[tag]
            offset += width + _read(data, offset, width)
        elif tag in _BIG_INTEGERS:
            width = _BIG_INTEGERS[tag]
            digits = _read(data, offset, width)
            if digits > MAX_INTEGER_BYTES:
                raise MessageRejected("too_large", "integer wider than 64 bits")
            offset += width + 1 + digits
        elif tag in _CONTAINERS:
            width, per_item = _CONTAINERS[tag]
            items = _read(data, offset, width) * per_item + (1 if tag == _LIST else 0)
            offset += width
            if items:
                if len(pending) > MAX_DEPTH:
                    raise MessageRejected("too_deep", f"term nested deeper than {MAX_DEPTH}")
                pending.append(items)
        else:
            raise MessageRejected(
                "unsafe_term",
                f"term tag {tag} is not plain data "
                "(only maps, lists, tuples, atoms, binaries, strings and numbers are accepted)",
            )
        if offset > len(data):
            raise MessageRejected("undecodable", "truncated Erlang term")
    if offset != len(data):
        raise MessageRejected("undecodable", "trailing bytes after the Erlang term")


def _read(data: bytes, offset: int, width: int) -> int:
    if offset + width > len(data):
        raise MessageRejected("undecodable", "truncated Erlang term")
    return int.from_bytes(data[offset : offset + width], "big")


def _plain(term: Any, depth: int = 0) -> Any:
    """The term as JSON-able Python: atoms and binaries become str, tuples become lists."""
    if depth > MAX_DEPTH:
        raise MessageRejected("too_deep", f"message nested deeper than {MAX_DEPTH}")
    if term is None or isinstance(term, bool | int | str):
        return term
    if isinstance(term, float):
        return term if math.isfinite(term) else None
    if isinstance(term, erlang.OtpErlangAtom):
        return _atom_text(term)
    if isinstance(term, erlang.OtpErlangBinary):
        return term.value.decode("utf-8", "replace")
    if isinstance(term, bytes):  # an Erlang string (a list of character codes up to 255)
        return term.decode("latin-1")
    if isinstance(term, dict):
        return {_key(key, depth + 1): _plain(value, depth + 1) for key, value in term.items()}
    if isinstance(term, erlang.OtpErlangList):  # an improper list: keep the tail as an item
        term = term.value
    if isinstance(term, list | tuple):
        return [_plain(item, depth + 1) for item in term]
    raise MessageRejected("unsafe_term", f"{type(term).__name__} is not plain data")


def _atom_text(atom: erlang.OtpErlangAtom) -> str | None:
    if isinstance(atom.value, bytes):  # ATOM_EXT: Latin-1 text
        text = atom.value.decode("latin-1")
    elif isinstance(atom.value, str):
        text = atom.value
    else:
        raise MessageRejected("unsafe_term", "atom cache references are not plain data")
    return None if text == "nil" else text  # Elixir's nil (erlang-py already maps undefined)


def _key(term: Any, depth: int) -> str:
    value = _plain(term, depth)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _message(document: Any, wire_format: WireFormat) -> DecodedMessage:
    if not isinstance(document, dict):
        raise MessageRejected("not_a_map", f"expected a map, got {type(document).__name__}")
    event_type = document.get("event_type")
    if event_type is None:
        raise MessageRejected("missing_event_type", "no event_type")
    if not (isinstance(event_type, str) and _NAME.fullmatch(event_type)):
        raise MessageRejected("invalid_event_type", f"unusable event_type {_excerpt(event_type)}")
    if event_type != STATUS_EVENT:
        return DecodedMessage(event_type, wire_format, None)

    hostname = document.get("hostname")
    if hostname is None:
        raise MessageRejected("missing_hostname", "status event without a hostname")
    if not (isinstance(hostname, str) and _HOSTNAME.fullmatch(hostname)):
        raise MessageRejected("invalid_hostname", f"unusable hostname {_excerpt(hostname)}")
    module_type = _name_or_default(document, "type", UNKNOWN_MODULE_TYPE, "invalid_module_type")
    status = _name_or_default(document, "status", DEFAULT_STATUS, "invalid_status")
    workload = document.get("workload")
    if workload is None:
        workload = []
    elif not isinstance(workload, list):
        workload = [workload]
    return DecodedMessage(
        STATUS_EVENT, wire_format, Heartbeat(hostname, module_type, status, _capped(workload))
    )


def _name_or_default(document: dict[str, Any], field: str, default: str, reason: str) -> str:
    value = document.get(field)
    if value is None:
        return default
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        raise MessageRejected(reason, f"unusable {field} {_excerpt(value)}")
    return value


def _capped(workload: list[Any]) -> list[Any]:
    """The leading workload entries whose JSON fits in ``MAX_WORKLOAD_BYTES``."""
    size = 2  # the brackets
    for index, item in enumerate(workload):
        size += len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if size > MAX_WORKLOAD_BYTES:
            return workload[:index]
    return workload


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Encoding


def _atom_keyed(mapping: dict[str, Any]) -> dict[Any, Any]:
    """A map with atom keys, in Erlang's key order so the bytes match ``term_to_binary``."""
    keys = sorted(mapping, key=lambda key: (len(key) > _MAX_ATOM_CHARS, key))
    return {_map_key(key): mapping[key] for key in keys}


def _map_key(key: str) -> Any:
    if len(key) > _MAX_ATOM_CHARS:  # not a possible atom: a binary key instead
        return erlang.OtpErlangBinary(key.encode())
    return erlang.OtpErlangAtom(key)


def _to_term(value: Any) -> Any:
    """Plain data as Elixir holds it: strings as binaries, keys as atoms, None as nil."""
    if isinstance(value, str):
        return erlang.OtpErlangBinary(value.encode())
    if isinstance(value, dict):
        return _atom_keyed({str(key): _to_term(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return [_to_term(item) for item in value]
    if value is None:
        return erlang.OtpErlangAtom("nil")
    return value  # bool, int and float: erlang-py encodes them as Erlang does

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
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Literal, cast

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
# Term tags (erl_ext_dist) of plain data.
_SMALL_INTEGER, _INTEGER, _NEW_FLOAT, _FLOAT, _NIL = 97, 98, 70, 99, 106
_STRING, _BINARY, _SMALL_BIG, _LARGE_BIG = 107, 109, 110, 111
_SMALL_TUPLE, _LARGE_TUPLE, _LIST, _MAP = 104, 105, 108, 116
_ATOM_WIDTH = {100: 2, 118: 2, 115: 1, 119: 1}  # atom tags: width of their length
_UTF8_ATOM_TAGS = frozenset({118, 119})  # the others are Latin-1 (OTP 25 and older)
_SPECIAL_ATOMS: dict[bytes, bool | None] = {
    b"true": True,
    b"false": False,
    b"undefined": None,
    b"nil": None,  # Elixir's nil
}
_U32, _I32, _F64 = struct.Struct(">I"), struct.Struct(">i"), struct.Struct(">d")
# Decoded atoms by their bytes (the handful a fleet sends: keys, event types, module types and
# states), interned: decoded once, and every worker's record shares one string.
_UTF8_ATOMS: dict[bytes, str | bool | None] = {}
_LATIN1_ATOMS: dict[bytes, str | bool | None] = {}
_ATOM_CACHE_SIZE = 4096
_NAMES: dict[str, str] = {}  # module types and statuses of JSON messages, likewise shared
_UNCACHED = object()


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
    try:
        document, offset = _term(body, 1, 0)
    except (IndexError, struct.error):  # a read past the end
        raise MessageRejected("undecodable", "truncated Erlang term") from None
    if offset != len(body):
        raise MessageRejected("undecodable", "trailing bytes after the Erlang term")
    return document


def _decode_json(body: bytes) -> Any:
    try:
        # Non-finite numbers (NaN, Infinity, 1e999) become null, as in ETF.
        document = json.loads(body, parse_constant=_no_number, parse_float=_finite_float)
    except RecursionError:
        raise MessageRejected("too_deep", "JSON nested too deeply to parse") from None
    except ValueError as error:
        raise MessageRejected("undecodable", f"invalid JSON: {error}") from None
    # Nothing can nest deeper than there are opening brackets: count them (in C) before walking.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(document, 0)
    return document


def _no_number(text: str) -> None:
    return None


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise MessageRejected("too_deep", f"message nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return
    for item in value:
        _check_depth(item, depth + 1)


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


def _term(data: bytes, offset: int, depth: int) -> tuple[Any, int]:
    """The term at ``offset`` as JSON-able Python, and the offset after it.

    One pass that checks and builds at once (no erlang-py objects, no second walk): only plain
    data is accepted, nesting is bounded (a non-empty container at ``MAX_DEPTH`` is refused),
    integers are at most ``MAX_INTEGER_BYTES`` wide, and every length is checked against the
    bytes there are. Atoms become text (``true``/``false`` booleans, ``nil``/``undefined`` None),
    binaries UTF-8 text, Erlang strings Latin-1 text, tuples lists; an improper list keeps its
    tail as its last item; a map key that is not text becomes its canonical JSON. Reads past the
    end raise ``IndexError`` or ``struct.error`` (the caller's "truncated").
    """
    tag = data[offset]
    offset += 1
    if tag == _MAP:
        (arity,) = _U32.unpack_from(data, offset)
        offset += 4
        document: dict[str, Any] = {}
        if arity:
            _enter(depth)
            for _ in range(arity):
                key, offset = _term(data, offset, depth + 1)
                value, offset = _term(data, offset, depth + 1)
                document[key if type(key) is str else _json_key(key)] = value
        return document, offset
    if tag in _ATOM_WIDTH:
        width = _ATOM_WIDTH[tag]
        end = offset + width + int.from_bytes(data[offset : offset + width], "big")
        if end > len(data):
            raise IndexError
        return _atom(tag, data[offset + width : end]), end
    if tag == _BINARY:
        (size,) = _U32.unpack_from(data, offset)
        end = offset + 4 + size
        if end > len(data):
            raise IndexError
        return data[offset + 4 : end].decode("utf-8", "replace"), end
    if tag == _SMALL_INTEGER:
        return data[offset], offset + 1
    if tag in (_LIST, _SMALL_TUPLE, _LARGE_TUPLE):
        width = 1 if tag == _SMALL_TUPLE else 4
        length = int.from_bytes(data[offset : offset + width], "big")
        offset += width
        items: list[Any] = []
        if length or tag == _LIST:  # a list always has a tail to read
            _enter(depth)
        for _ in range(length):
            item, offset = _term(data, offset, depth + 1)
            items.append(item)
        if tag == _LIST:
            if data[offset] == _NIL:
                offset += 1
            else:  # an improper list: its tail is kept as an item
                tail, offset = _term(data, offset, depth + 1)
                items.append(tail)
        return items, offset
    if tag == _NIL:
        return [], offset
    if tag == _INTEGER:
        return _I32.unpack_from(data, offset)[0], offset + 4
    if tag == _STRING:  # a list of character codes up to 255
        end = offset + 2 + int.from_bytes(data[offset : offset + 2], "big")
        if end > len(data):
            raise IndexError
        return data[offset + 2 : end].decode("latin-1"), end
    if tag == _NEW_FLOAT:
        value = _F64.unpack_from(data, offset)[0]
        return (value if math.isfinite(value) else None), offset + 8
    if tag == _FLOAT:  # the old 31-byte text format
        if offset + 31 > len(data):
            raise IndexError
        try:
            value = float(data[offset : offset + 31].partition(b"\0")[0])
        except ValueError:
            raise MessageRejected("undecodable", "invalid Erlang float") from None
        return (value if math.isfinite(value) else None), offset + 31
    if tag in (_SMALL_BIG, _LARGE_BIG):
        width = 1 if tag == _SMALL_BIG else 4
        digits = int.from_bytes(data[offset : offset + width], "big")
        if digits > MAX_INTEGER_BYTES:
            raise MessageRejected("too_large", "integer wider than 64 bits")
        offset += width
        end = offset + 1 + digits
        if end > len(data):
            raise IndexError
        magnitude = int.from_bytes(data[offset + 1 : end], "little")
        return (-magnitude if data[offset] == 1 else magnitude), end
    raise MessageRejected(
        "unsafe_term",
        f"term tag {tag} is not plain data "
        "(only maps, lists, tuples, atoms, binaries, strings and numbers are accepted)",
    )


def _enter(depth: int) -> None:
    """A non-empty container at ``depth`` (the outermost term is at 0)."""
    if depth >= MAX_DEPTH:
        raise MessageRejected("too_deep", f"term nested deeper than {MAX_DEPTH}")


def _atom(tag: int, name: bytes) -> str | bool | None:
    """An atom's meaning; the few that recur (keys, types, states) are decoded once."""
    cache = _UTF8_ATOMS if tag in _UTF8_ATOM_TAGS else _LATIN1_ATOMS
    meaning = cache.get(name, _UNCACHED)
    if meaning is not _UNCACHED:
        return cast(str | bool | None, meaning)
    if name in _SPECIAL_ATOMS:
        meaning = _SPECIAL_ATOMS[name]
    elif cache is _UTF8_ATOMS:
        try:
            meaning = sys.intern(name.decode("utf-8"))
        except UnicodeDecodeError:
            raise MessageRejected("undecodable", "an atom that is not UTF-8") from None
    else:
        meaning = sys.intern(name.decode("latin-1"))
    if len(cache) < _ATOM_CACHE_SIZE:  # bounded: atoms are whatever a sender makes up
        cache[name] = meaning
    return meaning


def _json_key(value: Any) -> str:
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
    workload, text = _capped(workload)
    return DecodedMessage(
        STATUS_EVENT, wire_format, Heartbeat(hostname, module_type, status, workload, text)
    )


def _name_or_default(document: dict[str, Any], field: str, default: str, reason: str) -> str:
    value = document.get(field)
    if value is None:
        return default
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        raise MessageRejected(reason, f"unusable {field} {_excerpt(value)}")
    # One string per distinct name (as ETF atoms already are), not one per worker.
    if len(_NAMES) < _ATOM_CACHE_SIZE:
        return _NAMES.setdefault(value, value)
    return _NAMES.get(value, value)


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _capped(workload: list[Any]) -> tuple[list[Any], str]:
    """The leading workload entries whose JSON fits in ``MAX_WORKLOAD_BYTES``, and that JSON."""
    # The usual case in one encoding: the per-entry count below is this size plus one.
    text = _COMPACT_JSON.encode(workload)
    if len(text.encode()) < MAX_WORKLOAD_BYTES:
        return workload, text
    size = 2  # the brackets
    for index, item in enumerate(workload):
        size += len(_COMPACT_JSON.encode(item).encode()) + 1
        if size > MAX_WORKLOAD_BYTES:
            return workload[:index], _COMPACT_JSON.encode(workload[:index])
    return workload, text


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

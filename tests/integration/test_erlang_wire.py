"""The heartbeat wire format against a real Erlang runtime (``erl`` ships with rabbitmq-server).

Bodies made by ``term_to_binary`` in Erlang must decode to the right heartbeat, and the bodies we
encode must be, for Erlang, exactly the map an Elixir worker sends.
"""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from overseer_operator.heartbeat import decode_message, encode_etf
from overseer_operator.model import Heartbeat

ERL = shutil.which("erl")

pytestmark = pytest.mark.skipif(
    ERL is None,
    reason="erl is not installed: install rabbitmq-server (or erlang-base) to run the Erlang "
    "wire tests",
)

STATUS_MAP = """#{event_type => status, hostname => <<"007aaefbbcc9">>, type => builder,
                  status => active, workload => [#{description => <<"building workflow 123">>}]}"""


def erl(expression: str) -> list[str]:
    """Evaluate Erlang expressions (ending in output) and return the lines printed."""
    assert ERL is not None
    result = subprocess.run(
        [ERL, "-noshell", "-eval", f"{expression}, halt()."],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


def test_decodes_status_maps_encoded_by_erlang() -> None:
    # OTP 25's default writes Latin-1 atoms; minor_version 2 (OTP 26+ and Elixir's default) UTF-8.
    bodies = erl(
        f"M = {STATUS_MAP}, "
        '[io:format("~s~n", [base64:encode(term_to_binary(M, Options))])'
        " || Options <- [[], [{minor_version, 2}], [compressed]]]"
    )
    assert len(bodies) == 3
    for body in map(base64.b64decode, bodies):
        message = decode_message(body)
        assert (message.event_type, message.format) == ("status", "etf")
        assert message.heartbeat == Heartbeat(
            "007aaefbbcc9", "builder", "active", [{"description": "building workflow 123"}]
        )


def test_decodes_a_rich_workload_encoded_by_erlang() -> None:
    [body] = erl(
        'M = #{event_type => status, hostname => "node-1", type => <<"deployer">>,'
        ' workload => [#{description => <<"deploying">>, step => config, ids => {1, 300, -5},'
        ' big => 1099511627776, ratio => 0.5, tags => ["a", "bc"],'
        ' nested => #{<<"k">> => [nil, true, false, undefined]}}]}, '
        'io:format("~s~n", [base64:encode(term_to_binary(M))])'
    )
    heartbeat = decode_message(base64.b64decode(body)).heartbeat
    assert heartbeat == Heartbeat(
        "node-1",
        "deployer",
        "active",
        [
            {
                "description": "deploying",
                "step": "config",
                "ids": [1, 300, -5],
                "big": 2**40,
                "ratio": 0.5,
                "tags": ["a", "bc"],
                "nested": {"k": [None, True, False, None]},
            }
        ],
    )


def test_erlang_reads_our_heartbeat_as_the_elixir_map() -> None:
    heartbeat = Heartbeat(
        "worker-1",
        "builder",
        "active",
        [{"description": "building", "count": 3, "tags": ["a"], "none": None}],
    )
    encoded = base64.b64encode(encode_etf(heartbeat)).decode()
    same_term, same_bytes = erl(
        f'B = base64:decode(<<"{encoded}">>), '
        'Expected = #{event_type => status, hostname => <<"worker-1">>, type => builder,'
        ' status => active, workload => [#{description => <<"building">>, count => 3,'
        ' tags => [<<"a">>], none => nil}]}, '
        'io:format("~p ~p~n", [binary_to_term(B) =:= Expected,'
        " B =:= term_to_binary(Expected, [{minor_version, 2}])])"
    )
    assert same_term == "true"  # atom keys, atom status and type, binary hostname
    assert same_bytes == "true"  # byte for byte what an OTP 26+ worker sends

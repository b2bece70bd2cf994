"""Durations: the parser accepts exactly what the CRD's pattern accepts, and formats back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from overseer_operator.times import DURATION_PATTERN, format_duration, parse_duration

CRD = Path(__file__).resolve().parents[2] / "crds" / "openaperture.io_messagingexchanges.yaml"
DURATION_FIELDS = {"refreshInterval", "inactiveAfter", "offlineAfter", "forgetAfter"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("0s", 0.0),
        ("1h2m3s", 3723.0),
        ("500ms", 0.5),
        ("1m30s250ms", 90.25),
        ("90m", 5400.0),
        ("007s", 7.0),
    ],
)
def test_parses_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " ", "10", "1x", " 1m", "1m ", "1s1m", "1m1h", "ms", "1.5s", "-1s", "10m\n", "1H", "1d"],
)
def test_refuses_anything_else_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .* such as 90s, 10m"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["", "5", "5s", "5ms", "1h1m", "1m1h", "1.5s", "s", "1h2m3s4ms", "1h 2m", "4mss"]
)
def test_parser_agrees_with_the_crd_pattern(text: str) -> None:
    pattern_accepts = bool(text) and re.fullmatch(DURATION_PATTERN, text) is not None
    try:
        parse_duration(text)
    except ValueError:
        parsed = False
    else:
        parsed = True
    assert parsed == pattern_accepts


def test_crd_validates_every_duration_with_this_pattern() -> None:
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                if key in DURATION_FIELDS:
                    found[key] = value.get("pattern")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(CRD.read_text(encoding="utf-8")))
    assert set(found) == DURATION_FIELDS
    assert set(found.values()) == {DURATION_PATTERN}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "1m30s"), (0, "0s"), (3600, "1h"), (3723, "1h2m3s"), (0.5, "500ms"), (600.0, "10m")],
)
def test_formats_the_shortest_text(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [-1, float("inf"), float("nan")])
def test_refuses_to_format_impossible_durations(seconds: float) -> None:
    with pytest.raises(ValueError):
        format_duration(seconds)

"""Time as Kubernetes writes it: durations (``90s``, ``10m``, ``1m30s``) and RFC 3339 moments.

The duration grammar is the CRD's validation pattern, so anything ``kubectl apply`` accepts parses
here and anything it refuses is refused here too.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"

_DURATION = re.compile(DURATION_PATTERN)
_UNIT_MILLIS = (3_600_000, 60_000, 1000, 1)  # the pattern's groups, in order: h, m, s, ms


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``1m30s`` -> 90.0); ``ValueError`` if it is not a duration."""
    match = _DURATION.fullmatch(text) if text else None
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected hours, minutes, seconds and milliseconds "
            "in that order, each optional, such as 90s, 10m, 1h, 1m30s or 500ms"
        )
    millis = sum(
        int(group.rstrip("hms")) * unit
        for group, unit in zip(match.groups(), _UNIT_MILLIS, strict=True)
        if group is not None
    )
    return millis / 1000


def format_duration(seconds: float) -> str:
    """The shortest duration text for ``seconds``, to the millisecond (90 -> ``1m30s``)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    text = "".join(
        f"{amount}{unit}"
        for amount, unit in ((hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms"))
        if amount
    )
    return text or "0s"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes ``metav1.Time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 moment; None if absent or unparseable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None

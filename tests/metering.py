"""Reading the operator's Prometheus registry in tests (it is global: compare before and after)."""

from __future__ import annotations

from overseer_operator import metrics


def sample(metric: str, /, **labels: str) -> float:
    """The current value of one sample; 0 if that series does not exist (yet)."""
    return metrics.REGISTRY.get_sample_value(metric, labels) or 0.0

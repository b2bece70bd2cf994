"""A Kubernetes API double for the monitors' own calls: the same methods as ``KubeApi``,
recording what was written and failing on demand."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from overseer_operator.kube import KubeApiError


class FakeKube:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.secrets: dict[tuple[str, str], Mapping[str, str]] = {}
        self.failures: list[KubeApiError] = []  # raised by the next calls, in order
        self.secret_reads: list[tuple[str, str]] = []

    def fail_next(self, *errors: KubeApiError) -> None:
        self.failures.extend(errors)

    def _maybe_fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._maybe_fail()
        self.patches.append(copy.deepcopy(dict(status)))

    async def create_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self._maybe_fail()
        self.events.append((event_type, reason, message))

    async def get_secret_data(self, namespace: str, name: str) -> Mapping[str, str]:
        self.secret_reads.append((namespace, name))
        self._maybe_fail()
        try:
            return self.secrets[namespace, name]
        except KeyError:
            raise KubeApiError(f"secret {name} not found", 404) from None

"""The ``coordination.k8s.io/v1`` Lease calls of the sharding coordinator, over ``KubeApi``.

Transport only. Every write carries the ``resourceVersion`` it was based on, so two replicas
racing for one Lease get one success and one 409 Conflict from the apiserver; nothing here decides
what a Lease means (``ownership.py``) or when to write it (``sharding.py``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from overseer_operator.kube import COMPONENT, KubeApi, KubeApiError
from overseer_operator.times import parse_time

APP_LABEL = "app.kubernetes.io/name"
ROLE_LABEL = "overseer.openaperture.io/lease"  # "member" or "exchange"
EXCHANGE_ANNOTATION = "overseer.openaperture.io/exchange"  # namespace/name, for people and GC
MEMBER, EXCHANGE = "member", "exchange"
SELECTOR = f"{APP_LABEL}={COMPONENT}"


def member_lease_name(identity: str) -> str:
    return f"overseer-member-{identity}"[:253]


def exchange_lease_name(uid: str) -> str:
    return f"overseer-mx-{uid}"


def micro_time(moment: datetime) -> str:
    """``metav1.MicroTime`` as the apiserver writes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    name: str
    role: str
    holder: str = ""
    duration: float = 0.0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    exchange: str | None = None  # namespace/name of the MessagingExchange (exchange Leases)
    resource_version: str | None = None

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> LeaseRecord:
        metadata = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        return cls(
            name=metadata.get("name", ""),
            role=(metadata.get("labels") or {}).get(ROLE_LABEL, ""),
            holder=spec.get("holderIdentity") or "",
            duration=float(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            exchange=(metadata.get("annotations") or {}).get(EXCHANGE_ANNOTATION),
            resource_version=metadata.get("resourceVersion"),
        )

    def to_object(self, namespace: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": namespace,
            "labels": {APP_LABEL: COMPONENT, ROLE_LABEL: self.role},
        }
        if self.exchange:
            metadata["annotations"] = {EXCHANGE_ANNOTATION: self.exchange}
        if self.resource_version:
            metadata["resourceVersion"] = self.resource_version
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, math.ceil(self.duration)),
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    def acquired_at(self) -> datetime | None:
        return parse_time(self.acquire_time)

    def held_by(self, holder: str, at: datetime, duration: float) -> LeaseRecord:
        """This Lease acquired (a new tenure, one more transition) or renewed by ``holder``."""
        now = micro_time(at)
        if holder == self.holder and self.acquire_time:
            return replace(self, renew_time=now, duration=duration)
        transitions = self.transitions + 1 if self.resource_version else self.transitions
        return replace(
            self,
            holder=holder,
            acquire_time=now,
            renew_time=now,
            duration=duration,
            transitions=transitions,
        )

    def released(self) -> LeaseRecord:
        """client-go's release: no holder, a duration of one second."""
        return replace(self, holder="", duration=1.0, acquire_time=None, renew_time=None)


class LeaseApi:
    def __init__(self, kube: KubeApi, namespace: str, timeout: float) -> None:
        self._kube = kube
        self.namespace = namespace
        self._timeout = timeout
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    async def list(self) -> tuple[list[LeaseRecord], str]:
        answer = await self._kube.request_json(
            "GET", self._path, params={"labelSelector": SELECTOR}, timeout=self._timeout
        )
        items = [LeaseRecord.from_object(item) for item in answer.get("items") or ()]
        return items, (answer.get("metadata") or {}).get("resourceVersion", "")

    async def watch(
        self, resource_version: str, seconds: float
    ) -> AsyncIterator[tuple[str, LeaseRecord | None, str]]:
        """(event type, Lease or None for a bookmark, resourceVersion) until the watch ends.
        An expired resourceVersion raises ``KubeApiError`` with status 410."""
        params = {
            "labelSelector": SELECTOR,
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, int(seconds))),
        }
        async for event in self._kube.watch(self._path, params, seconds + self._timeout):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise KubeApiError(f"watch: {obj.get('message')}", int(obj.get("code") or 0))
            version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
            if kind == "BOOKMARK":
                yield kind, None, version
            else:
                yield str(kind), LeaseRecord.from_object(obj), version

    async def get(self, name: str) -> LeaseRecord | None:
        try:
            answer = await self._kube.request_json(
                "GET", f"{self._path}/{name}", timeout=self._timeout
            )
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        return LeaseRecord.from_object(answer)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """409 if it exists already: somebody else created it first."""
        body = replace(record, resource_version=None).to_object(self.namespace)
        answer = await self._kube.request_json("POST", self._path, json=body, timeout=self._timeout)
        return LeaseRecord.from_object(answer)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        """409 if the Lease changed since ``record`` was read; 404 if it was deleted."""
        answer = await self._kube.request_json(
            "PUT",
            f"{self._path}/{record.name}",
            json=record.to_object(self.namespace),
            timeout=self._timeout,
        )
        return LeaseRecord.from_object(answer)

    async def delete(self, record: LeaseRecord) -> None:
        """Delete if unchanged since ``record`` was read; gone already is fine."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if record.resource_version:
            options["preconditions"] = {"resourceVersion": record.resource_version}
        try:
            await self._kube.request_json(
                "DELETE", f"{self._path}/{record.name}", json=options, timeout=self._timeout
            )
        except KubeApiError as error:
            if error.status != 404:
                raise

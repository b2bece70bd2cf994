"""The few Kubernetes API calls the monitors make themselves, over one async httpx client.

Transport only: failures are ``KubeApiError`` with the HTTP status; what they mean to a user
(a missing Secret, a forbidden one) is decided by the callers.

kopf owns the watch, finalizers and daemons; status patches, Secrets, Events and the legacy
resource seed go through this small client so that a long-running monitor can write whenever its
writers decide, without waiting for a handler to return. Credentials are loaded the standard way
(in-cluster ServiceAccount, else ``KUBECONFIG``) by ``overseer_operator.kubeconfig``, the loader
kopf uses too.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Generator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from kopf import ConnectionInfo

from overseer_operator import defaults
from overseer_operator.backoff import raise_if_cancelling
from overseer_operator.kubeconfig import CredentialsError, load_credentials
from overseer_operator.names import dns_subdomain_problem
from overseer_operator.times import format_time

GROUP = "openaperture.io"
VERSION = "v1alpha1"
PLURAL = "messagingexchanges"
KIND = "MessagingExchange"
API_VERSION = f"{GROUP}/{VERSION}"
COMPONENT = "overseer-operator"


class KubeApiError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status, 0 for a transport error."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _ConfigurationAuth(httpx.Auth):
    """The credentials' ``Authorization`` header, reloaded when they expire or the API server
    answers 401 (a rotated ServiceAccount token, an exec plugin's short-lived one)."""

    def __init__(self, configuration: ConnectionInfo) -> None:
        self._configuration = configuration

    def _reload(self) -> None:
        # On failure keep the last good credentials; the request's own error tells the caller.
        with contextlib.suppress(CredentialsError):
            self._configuration = load_credentials()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        expiration = self._configuration.expiration
        if expiration is not None:
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=UTC)
            if datetime.now(UTC) >= expiration:
                self._reload()
        request.headers.update(self._configuration.as_http_headers())
        response = yield request
        if response.status_code == 401:
            self._reload()
            request.headers.update(self._configuration.as_http_headers())
            yield request


def load_configuration() -> ConnectionInfo:
    return load_credentials()


def _ssl_context(configuration: ConnectionInfo) -> ssl.SSLContext:
    return configuration.as_ssl_context()


class KubeApi:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @classmethod
    def from_configuration(cls, configuration: ConnectionInfo | None = None) -> KubeApi:
        configuration = configuration or load_configuration()
        http = httpx.AsyncClient(
            base_url=configuration.server,
            verify=_ssl_context(configuration),
            auth=_ConfigurationAuth(configuration),
            timeout=httpx.Timeout(defaults.KUBERNETES_TIMEOUT),
            headers={"User-Agent": COMPONENT},
            limits=httpx.Limits(
                max_connections=defaults.KUBERNETES_CONNECTIONS,
                max_keepalive_connections=defaults.KUBERNETES_CONNECTIONS,
                keepalive_expiry=defaults.KUBERNETES_KEEPALIVE,
            ),
        )
        return cls(http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except (httpx.HTTPError, RuntimeError) as error:  # RuntimeError: closed at shutdown
            raise_if_cancelling()  # a cancellation the transport turned into an error
            raise KubeApiError(f"{method} {url}: {type(error).__name__}: {error}") from error
        if response.is_error:
            message = response.json().get("message", "") if _is_json(response) else response.text
            raise KubeApiError(
                f"{method} {url}: {response.status_code} {message}", response.status_code
            )
        return response

    @staticmethod
    def exchange_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{path}/{name}" if name else path

    async def get_secret_data(self, namespace: str, name: str) -> Mapping[str, str]:
        """The base64-encoded ``data`` of one Secret; ``ValueError`` for a name that is not one."""
        response = await self._request(
            "GET", f"/api/v1/namespaces/{_name(namespace)}/secrets/{_name(name)}"
        )
        data = response.json().get("data") or {}
        return data if isinstance(data, dict) else {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            self.exchange_path(namespace, name) + "/status",
            json={"status": dict(status)},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def get_exchange(self, namespace: str, name: str) -> dict[str, Any]:
        response = await self._request("GET", self.exchange_path(namespace, name))
        resource: dict[str, Any] = response.json()
        return resource

    async def json_patch_status(
        self, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> None:
        """A JSON patch of the status: its ``test`` operations make it conditional (422)."""
        await self._request(
            "PATCH",
            self.exchange_path(namespace, name) + "/status",
            json=operations,
            headers={"Content-Type": "application/json-patch+json"},
        )

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """Any other call (the Lease API): the decoded JSON answer."""
        response = await self._request(method, url, **kwargs)
        return response.json() if _is_json(response) else None

    async def watch(
        self, url: str, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (``watch=1`` is added), until the server ends it."""
        request_params = {**params, "watch": "1", "allowWatchBookmarks": "true"}
        try:
            async with self._http.stream(
                "GET", url, params=request_params, timeout=httpx.Timeout(read_timeout)
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise KubeApiError(f"WATCH {url}: {response.status_code}", response.status_code)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.HTTPError, RuntimeError) as error:
            raise_if_cancelling()
            raise KubeApiError(f"WATCH {url}: {type(error).__name__}: {error}") from error

    async def create_exchange(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a MessagingExchange; False if one of that name already exists."""
        try:
            await self._request("POST", self.exchange_path(namespace), json=dict(body))
        except KubeApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def create_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """Post a core v1 Event about a MessagingExchange (shown by ``kubectl describe mx``)."""
        now = datetime.now(UTC)
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": involved["name"],
                "namespace": namespace,
                "uid": involved.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": f"{GROUP}/{COMPONENT}",
            "reportingInstance": COMPONENT,
            "firstTimestamp": format_time(now),
            "lastTimestamp": format_time(now),
            "count": 1,
        }
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", json=body)


def _name(name: str) -> str:
    """A namespace's or Secret's name as one URL path segment; nothing else gets that far."""
    problem = dns_subdomain_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return quote(name, safe="")


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("Content-Type", "")
    return content_type.startswith("application/json")

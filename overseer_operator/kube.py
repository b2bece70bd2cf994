"""The few Kubernetes API calls the monitors make themselves, over one async httpx client.

Transport only: failures are ``KubeApiError`` with the HTTP status; what they mean to a user
(a missing Secret, a forbidden one) is decided by the callers.

kopf owns the watch, finalizers and daemons; status patches, Secrets, Events and the legacy
resource seed go through this small client so that a long-running monitor can write whenever its
writers decide, without waiting for a handler to return. Credentials are loaded the standard way
(in-cluster ServiceAccount, else ``KUBECONFIG``) by the ``kubernetes`` package's config loaders.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from overseer_operator import defaults
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
    """Bearer token from the loaded configuration, refreshed as its loader allows."""

    def __init__(self, configuration: k8s_client.Configuration) -> None:
        self._configuration = configuration

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._configuration.refresh_api_key_hook is not None:
            self._configuration.refresh_api_key_hook(self._configuration)
        token = self._configuration.api_key.get("BearerToken") or self._configuration.api_key.get(
            "authorization"
        )
        if token:
            request.headers["Authorization"] = (
                token if token.startswith("Bearer ") else f"Bearer {token}"
            )
        yield request


def load_configuration() -> k8s_client.Configuration:
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def _ssl_context(configuration: k8s_client.Configuration) -> ssl.SSLContext | bool:
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


class KubeApi:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @classmethod
    def from_configuration(cls, configuration: k8s_client.Configuration | None = None) -> KubeApi:
        configuration = configuration or load_configuration()
        http = httpx.AsyncClient(
            base_url=configuration.host,
            verify=_ssl_context(configuration),
            auth=_ConfigurationAuth(configuration),
            timeout=httpx.Timeout(defaults.KUBERNETES_TIMEOUT),
            headers={"User-Agent": COMPONENT},
        )
        return cls(http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except (httpx.HTTPError, RuntimeError) as error:  # RuntimeError: closed at shutdown
            raise KubeApiError(f"{method} {url}: {type(error).__name__}: {error}") from error
        if response.is_error:
            message = response.json().get("message", "") if _is_json(response) else response.text
            raise KubeApiError(
                f"{method} {url}: {response.status_code} {message}", response.status_code
            )
        return response

    @staticmethod
    def _exchange_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{path}/{name}" if name else path

    async def get_secret_data(self, namespace: str, name: str) -> Mapping[str, str]:
        """The base64-encoded ``data`` of one Secret."""
        response = await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        data = response.json().get("data") or {}
        return data if isinstance(data, dict) else {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            self._exchange_path(namespace, name) + "/status",
            json={"status": dict(status)},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def create_exchange(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a MessagingExchange; False if one of that name already exists."""
        try:
            await self._request("POST", self._exchange_path(namespace), json=dict(body))
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


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("Content-Type", "")
    return content_type.startswith("application/json")

"""The Kubernetes client's Secret reads stay on the one Secret named, in the resource's namespace,
whatever the name holds (the CRD and ``parse_spec`` refuse such names first; this is the last
line)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from kopf import ConnectionInfo

from overseer_operator import defaults
from overseer_operator.config import SecretKeyRef, secret_reader
from overseer_operator.kube import KubeApi
from overseer_operator.model import ConfigError, Reason
from tests.http_server import json_server


class Recorder:
    """A Kubernetes API that serves one Secret at any path and records the paths asked for."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path)
        data = {"token": base64.b64encode(b"cluster-admin-token").decode()}
        return httpx.Response(200, json={"data": data})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def kube(recorder: Recorder):
    api = KubeApi(
        httpx.AsyncClient(base_url="https://apiserver", transport=httpx.MockTransport(recorder))
    )
    yield api
    await api.aclose()


async def test_reads_the_named_secret_in_the_namespace(kube: KubeApi, recorder: Recorder) -> None:
    read = secret_reader(kube.get_secret_data, "team-a")
    assert await read(SecretKeyRef("creds", "token")) == "cluster-admin-token"
    assert recorder.paths == [b"/api/v1/namespaces/team-a/secrets/creds"]


@pytest.mark.parametrize(
    "name",
    [
        "../../kube-system/secrets/admin-token",
        "..",
        ".",
        "",
        "a/b",
        "a?b",
        "a#b",
        "%2e%2e",
        "UPPER",
    ],
)
async def test_a_secret_name_that_is_not_a_dns_subdomain_is_never_sent(
    kube: KubeApi, recorder: Recorder, name: str
) -> None:
    with pytest.raises(ValueError):
        await kube.get_secret_data("team-a", name)
    with pytest.raises(ConfigError) as caught:
        await secret_reader(kube.get_secret_data, "team-a")(SecretKeyRef(name, "token"))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert recorder.paths == []


@pytest.mark.parametrize("namespace", ["..", "team-a/../kube-system", ""])
async def test_an_unusable_namespace_is_never_sent(
    kube: KubeApi, recorder: Recorder, namespace: str
) -> None:
    with pytest.raises(ConfigError):
        await secret_reader(kube.get_secret_data, namespace)(SecretKeyRef("creds", "token"))
    assert recorder.paths == []


async def test_status_patches_of_many_exchanges_share_a_few_connections() -> None:
    """A hundred exchanges starting together patch their statuses at once: each new connection
    is a TLS handshake for the operator and the API server alike, and httpx's pool kept 100 of
    them (each request then walked all of them); the client keeps a few, reused."""
    async with json_server(delay=0.02) as server:
        kube = KubeApi.from_configuration(ConnectionInfo(server=server.url))
        try:
            await asyncio.gather(
                *(kube.patch_status("ns", f"x{index}", {"workers": {}}) for index in range(50))
            )
        finally:
            await kube.aclose()
    assert server.requests == 50
    assert server.connections <= defaults.KUBERNETES_CONNECTIONS

"""Configuration: a MessagingExchange spec, then the operator's environment, then Secrets.

``parse_spec`` is pure and checks what the CRD schema cannot (it also guards resources written
before a schema change). ``OperatorEnvironment`` is the only place that reads ``os.environ``.
Secrets come through a ``SecretReader``; ``secret_reader`` turns the Kubernetes API's answers
into the condition reasons a user acts on.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from overseer_operator import defaults
from overseer_operator.heartbeat import is_name
from overseer_operator.kube import KubeApiError
from overseer_operator.manager_client import ManagerSettings
from overseer_operator.model import ConfigError, Reason, Thresholds
from overseer_operator.names import dns_subdomain_problem, secret_key_problem
from overseer_operator.ownership import Timings
from overseer_operator.times import parse_duration


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str
    key: str

    def __str__(self) -> str:
        return f"Secret {self.name!r} key {self.key!r}"


SecretReader = Callable[[SecretKeyRef], Awaitable[str]]
# The ``data`` of a Secret, by namespace and name; raises ``KubeApiError`` (``ValueError`` for a
# name that is not one).
SecretFetcher = Callable[[str, str], Awaitable[Mapping[str, str]]]


def secret_reader(fetch: SecretFetcher, namespace: str) -> SecretReader:
    """Read Secret keys in ``namespace`` only; every failure is a ``ConfigError`` with a reason."""

    async def read(ref: SecretKeyRef) -> str:
        try:
            data = await fetch(namespace, ref.name)
        except ValueError as error:  # not a name the apiserver could be asked about
            raise ConfigError(Reason.INVALID_SPEC, f"cannot read {ref}: {error}") from None
        except KubeApiError as error:
            if error.status == 404:
                raise ConfigError(
                    Reason.SECRET_NOT_FOUND,
                    f"Secret {ref.name!r} not found in namespace {namespace!r}",
                ) from None
            if error.status == 403:
                raise ConfigError(
                    Reason.SECRET_FORBIDDEN,
                    f"the operator may not read Secret {ref.name!r} in namespace {namespace!r}",
                ) from None
            raise ConfigError(
                Reason.KUBERNETES_UNREACHABLE, f"cannot read Secret {ref.name!r}: {error}"
            ) from None
        encoded = data.get(ref.key)
        if encoded is None:
            raise ConfigError(
                Reason.SECRET_NOT_FOUND, f"Secret {ref.name!r} has no key {ref.key!r}"
            )
        try:
            return base64.b64decode(encoded).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(
                Reason.INVALID_SPEC, f"Secret {ref.name!r} key {ref.key!r} is not UTF-8 text"
            ) from None

    return read


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """A validated ``MessagingExchange.spec``; unset Manager fields are None."""

    exchange_id: str
    broker_id: str
    module_type: str = defaults.MODULE_TYPE
    queue: str = defaults.QUEUE
    prefetch: int = defaults.PREFETCH
    thresholds: Thresholds = field(default_factory=Thresholds)
    refresh_interval: float = defaults.REFRESH_INTERVAL
    manager_url: str | None = None
    login_url: str | None = None
    client_id: str | None = None
    client_secret_ref: SecretKeyRef | None = None
    manager_ca_ref: SecretKeyRef | None = None
    amqp_url_ref: SecretKeyRef | None = None
    amqp_ca_ref: SecretKeyRef | None = None

    @property
    def connection_fields(self) -> tuple[Any, ...]:
        """What needs new connections when it changes (the rest is applied in place)."""
        return (
            self.broker_id,
            self.queue,
            self.prefetch,
            self.module_type,
            self.manager_url,
            self.login_url,
            self.client_id,
            self.client_secret_ref,
            self.manager_ca_ref,
            self.amqp_url_ref,
            self.amqp_ca_ref,
        )


def _secret_ref(value: Any, path: str) -> SecretKeyRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value.get("name") or not value.get("key"):
        raise ConfigError(Reason.INVALID_SPEC, f"spec.{path} needs both name and key")
    name, key = value["name"], value["key"]
    if not isinstance(name, str) or (problem := dns_subdomain_problem(name)):
        raise ConfigError(
            Reason.INVALID_SPEC,
            f"spec.{path}.name: {problem or 'not a string'}; it names a Secret in the"
            " resource's own namespace",
        )
    if not isinstance(key, str) or (problem := secret_key_problem(key)):
        raise ConfigError(Reason.INVALID_SPEC, f"spec.{path}.key: {problem or 'not a string'}")
    return SecretKeyRef(name, key)


def _module_type(value: Any) -> str:
    """``spec.moduleType``, held to the rule a heartbeat's module type follows."""
    if value is None:
        return defaults.MODULE_TYPE
    if not (isinstance(value, str) and is_name(value)):
        raise ConfigError(
            Reason.INVALID_SPEC,
            f"spec.moduleType {value!r:.80} is not a module type: 1 to 64 letters, digits,"
            " '.', '_', ':' or '-'",
        )
    return value


def _duration(section: Mapping[str, Any], key: str, default: str, path: str) -> float:
    text = section.get(key) or default
    try:
        return parse_duration(str(text))
    except ValueError as error:
        raise ConfigError(Reason.INVALID_SPEC, f"spec.{path}.{key}: {error}") from None


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(Reason.INVALID_SPEC, f"spec.{key} must be an object")
    return value


def parse_spec(spec: Mapping[str, Any]) -> ExchangeSpec:
    exchange_id = str(spec.get("exchangeId") or "").strip()
    broker_id = str(spec.get("brokerId") or "").strip()
    if not exchange_id or not broker_id:
        raise ConfigError(Reason.INVALID_SPEC, "spec.exchangeId and spec.brokerId are required")

    thresholds_spec = _section(spec, "thresholds")
    inactive_after = _duration(
        thresholds_spec, "inactiveAfter", defaults.INACTIVE_AFTER_TEXT, "thresholds"
    )
    offline_after = _duration(
        thresholds_spec, "offlineAfter", defaults.OFFLINE_AFTER_TEXT, "thresholds"
    )
    forget_after = _duration(
        thresholds_spec, "forgetAfter", defaults.FORGET_AFTER_TEXT, "thresholds"
    )
    if inactive_after < 1:
        raise ConfigError(Reason.INVALID_SPEC, "spec.thresholds.inactiveAfter must be at least 1s")
    if offline_after <= inactive_after:
        raise ConfigError(
            Reason.INVALID_SPEC,
            "spec.thresholds.offlineAfter must be longer than spec.thresholds.inactiveAfter",
        )

    manager = _section(spec, "manager")
    oauth = manager.get("oauth") or {}
    amqp = _section(spec, "amqp")
    queues = _section(spec, "queues")
    return ExchangeSpec(
        exchange_id=exchange_id,
        broker_id=broker_id,
        module_type=_module_type(spec.get("moduleType")),
        queue=str(queues.get("systemModules") or defaults.QUEUE),
        prefetch=int(amqp.get("prefetch") or defaults.PREFETCH),
        thresholds=Thresholds(inactive_after, offline_after, forget_after),
        refresh_interval=_duration(
            manager, "refreshInterval", defaults.REFRESH_INTERVAL_TEXT, "manager"
        ),
        manager_url=manager.get("url") or None,
        login_url=oauth.get("loginUrl") or None,
        client_id=oauth.get("clientId") or None,
        client_secret_ref=_secret_ref(
            oauth.get("clientSecretRef"), "manager.oauth.clientSecretRef"
        ),
        manager_ca_ref=_secret_ref(manager.get("caSecretRef"), "manager.caSecretRef"),
        amqp_url_ref=_secret_ref(amqp.get("urlSecretRef"), "amqp.urlSecretRef"),
        amqp_ca_ref=_secret_ref(amqp.get("caSecretRef"), "amqp.caSecretRef"),
    )


@dataclass(frozen=True, slots=True)
class OperatorEnvironment:
    """The operator's own settings; each is the default for every MessagingExchange."""

    manager_url: str | None = None
    login_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    manager_ca_bundle: str | None = None
    amqp_ca_bundle: str | None = None
    identity: str = "overseer-operator"
    namespace: str | None = None
    legacy_exchange_id: str | None = None
    legacy_broker_id: str | None = None
    legacy_queue: str | None = None
    # Hosts ("host" or "host:port", lower case) besides those of MANAGER_URL and OAUTH_LOGIN_URL
    # that a spec's manager.url or oauth.loginUrl may name and still use the default credentials.
    manager_allowed_hosts: frozenset[str] = frozenset()
    # Several replicas sharing the exchanges by Leases (SHARDING=on); see ownership.py.
    sharding: bool = False
    lease_timings: Timings = field(default_factory=Timings)
    # Subtracted from evidence read from another process's wall clock (CLOCK_SKEW_BOUND; by
    # default the lease timings' bound with sharding on, else none).
    clock_skew: float = 0.0
    broker_relookup_interval: float = defaults.BROKER_RELOOKUP_INTERVAL
    # A Manager write owed longer than this makes ManagerSynced False (ManagerBehind).
    manager_write_lateness_allowed: float = defaults.MANAGER_WRITE_LATENESS_ALLOWED

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> OperatorEnvironment:
        def get(name: str) -> str | None:
            return environ.get(name) or None

        sharding = (get("SHARDING") or "off").lower() in {"on", "true", "1", "yes"}
        timings = Timings.from_environ(environ)
        default_skew = timings.clock_skew if sharding else 0.0
        return cls(
            manager_url=get("MANAGER_URL"),
            login_url=get("OAUTH_LOGIN_URL"),
            client_id=get("OAUTH_CLIENT_ID"),
            client_secret=get("OAUTH_CLIENT_SECRET"),
            manager_ca_bundle=get("MANAGER_CA_BUNDLE"),
            amqp_ca_bundle=get("AMQP_CA_BUNDLE"),
            identity=get("POD_NAME") or get("HOSTNAME") or socket.gethostname(),
            namespace=get("POD_NAMESPACE"),
            legacy_exchange_id=get("EXCHANGE_ID"),
            legacy_broker_id=get("BROKER_ID"),
            legacy_queue=get("SYSTEM_MODULES_QUEUE_NAME"),
            manager_allowed_hosts=_allowed_hosts(get("MANAGER_ALLOWED_HOSTS") or ""),
            sharding=sharding,
            lease_timings=timings,
            clock_skew=(
                parse_duration(skew) if (skew := get("CLOCK_SKEW_BOUND")) else default_skew
            ),
            broker_relookup_interval=(
                parse_duration(relookup)
                if (relookup := get("BROKER_RELOOKUP_INTERVAL"))
                else defaults.BROKER_RELOOKUP_INTERVAL
            ),
            manager_write_lateness_allowed=(
                parse_duration(lateness)
                if (lateness := get("MANAGER_WRITE_LATENESS_ALLOWED"))
                else defaults.MANAGER_WRITE_LATENESS_ALLOWED
            ),
        )


@dataclass(frozen=True, slots=True)
class Connections:
    """Everything a monitor needs to talk to the Manager and the broker, secrets resolved."""

    manager: ManagerSettings
    amqp_url: str | None = field(default=None, repr=False)  # None: resolve from the Manager
    amqp_ca_data: str | None = field(default=None, repr=False)


def _has_host(url: str) -> bool:
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def _check_ca_bundle(pem: str | None, ref: SecretKeyRef | None) -> None:
    """A CA bundle that cannot be loaded is a configuration error, not a crash later."""
    if pem is None:
        return
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as error:
        where = str(ref) if ref is not None else "the operator's CA bundle file"
        raise ConfigError(
            Reason.INVALID_SPEC, f"{where} does not hold a PEM CA bundle: {error}"
        ) from None


def _allowed_hosts(text: str) -> frozenset[str]:
    return frozenset(host.strip().lower() for host in text.split(",") if host.strip())


def _http_url(url: str) -> httpx.URL | None:
    """``url`` parsed as httpx will send it, if it is an absolute http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return parsed


def _same_url(url: str, default: str | None) -> bool:
    return default is not None and url.rstrip("/") == default.rstrip("/")


def _host_allowed(url: str, env: OperatorEnvironment) -> bool:
    """Whether the administrator listed ``url``'s server in ``MANAGER_ALLOWED_HOSTS``."""
    parsed = _http_url(url)
    if parsed is None or parsed.userinfo:
        return False
    host = parsed.host.lower()
    # A bare host allows https on its default port; "host:port" allows that port (http or https).
    if parsed.port is None:
        return parsed.scheme == "https" and host in env.manager_allowed_hosts
    return f"{host}:{parsed.port}" in env.manager_allowed_hosts


def _check_default_credentials_stay_home(spec: ExchangeSpec, env: OperatorEnvironment) -> None:
    """The operator's own client secret (and the token it buys) go only to the operator's own
    Manager and login URLs, or to hosts its administrator allowed; a spec naming another server
    must bring its own credentials (``clientSecretRef``)."""
    for name, url, default in (
        ("manager.url", spec.manager_url, env.manager_url),
        ("manager.oauth.loginUrl", spec.login_url, env.login_url),
    ):
        if url is None or _same_url(url, default) or _host_allowed(url, env):
            continue
        raise ConfigError(
            Reason.INVALID_SPEC,
            f"spec.{name} {url!r:.200} is not the operator's own Manager, so the operator's"
            " default client secret is not sent there: set spec.manager.oauth.clientSecretRef"
            " to this Manager's own credentials, or ask the operator's administrator to list"
            " the host in MANAGER_ALLOWED_HOSTS",
        )


def _read_file(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as bundle:
        return bundle.read()


async def resolve_connections(
    spec: ExchangeSpec, env: OperatorEnvironment, read_secret: SecretReader
) -> Connections:
    """Merge spec and environment and read the Secrets; raise ``ConfigError`` on a gap."""
    manager_url = spec.manager_url or env.manager_url
    login_url = spec.login_url or env.login_url
    client_id = spec.client_id or env.client_id
    for name, url in (
        ("manager.url", spec.manager_url),
        ("manager.oauth.loginUrl", spec.login_url),
    ):
        if url is not None and _http_url(url) is None:
            raise ConfigError(
                Reason.INVALID_SPEC, f"spec.{name} {url!r:.200} is not an http:// or https:// URL"
            )
    if spec.client_secret_ref is not None:
        client_secret: str | None = (await read_secret(spec.client_secret_ref)).strip()
    else:
        client_secret = env.client_secret
        if client_secret:
            _check_default_credentials_stay_home(spec, env)
    missing = [
        name
        for name, value in (
            ("manager.url (or MANAGER_URL)", manager_url),
            ("manager.oauth.loginUrl (or OAUTH_LOGIN_URL)", login_url),
            ("manager.oauth.clientId (or OAUTH_CLIENT_ID)", client_id),
            ("manager.oauth.clientSecretRef (or OAUTH_CLIENT_SECRET)", client_secret),
        )
        if not value
    ]
    if missing:
        raise ConfigError(Reason.INVALID_SPEC, "missing Manager settings: " + ", ".join(missing))
    assert manager_url and login_url and client_id and client_secret  # for mypy: checked above

    manager_ca = await read_secret(spec.manager_ca_ref) if spec.manager_ca_ref else None
    _check_ca_bundle(manager_ca, spec.manager_ca_ref)
    amqp_url = (await read_secret(spec.amqp_url_ref)).strip() if spec.amqp_url_ref else None
    if amqp_url is not None and (
        not amqp_url.startswith(("amqp://", "amqps://")) or not _has_host(amqp_url)
    ):
        raise ConfigError(
            Reason.INVALID_BROKER_URL,
            f"{spec.amqp_url_ref} does not hold an amqp:// or amqps:// URL with a host",
        )
    amqp_ca = (
        await read_secret(spec.amqp_ca_ref) if spec.amqp_ca_ref else _read_file(env.amqp_ca_bundle)
    )
    _check_ca_bundle(amqp_ca, spec.amqp_ca_ref)
    return Connections(
        manager=ManagerSettings(
            url=manager_url,
            login_url=login_url,
            client_id=client_id,
            client_secret=client_secret,
            ca_bundle=None if manager_ca else env.manager_ca_bundle,
            ca_data=manager_ca,
        ),
        amqp_url=amqp_url,
        amqp_ca_data=amqp_ca,
    )

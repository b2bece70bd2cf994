"""The Manager emulator in a process of its own, for the benchmark runner.

Inside the runner's process, the emulator's server threads shared the GIL with the runner (its
apiserver polling, its reads of the request log), which bounded how fast they took the POSTs of a
mass transition. Here :class:`ManagerEmulator` runs unchanged in a spawned child (no inherited
threads) and the runner calls it through a pipe. Request times are ``time.monotonic()``, one
clock for every process on Linux, so they compare with the runner's own readings.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import Connection
from typing import Any, Concatenate, ParamSpec, TypeVar

from devtools.manager_emulator import ManagerEmulator, RecordedRequest

P = ParamSpec("P")
T = TypeVar("T")


class EmulatorProcess:
    """A :class:`ManagerEmulator` serving from a child process; the methods the runner uses."""

    def __init__(self, clients: Mapping[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, dict(clients)), name="manager-emulator", daemon=True
        )
        self._process.start()
        child.close()
        self.url: str = self._connection.recv()  # sent once it listens
        self.login_url = f"{self.url}/oauth/token"

    @property
    def pid(self) -> int:
        assert self._process.pid is not None  # started in __init__
        return self._process.pid

    def call(self, function: Callable[Concatenate[ManagerEmulator, P], T], *args: Any) -> T:
        """``function(emulator, *args)`` in the child; ``function`` is pickled by name, so it is
        a module-level function or a ``ManagerEmulator`` method."""
        self._connection.send((function, args))
        ok, result = self._connection.recv()
        if not ok:
            raise result
        return result  # type: ignore[no-any-return]

    def add_exchange(self, id: str, name: str, fragment: str, parent_id: str | None = None) -> None:
        self.call(ManagerEmulator.add_exchange, id, name, fragment, parent_id)

    def add_broker(self, id: str, name: str) -> None:
        self.call(ManagerEmulator.add_broker, id, name)

    def add_broker_connection(
        self, broker_id: str, username: str, password: str, host: str, port: int | None, vhost: str
    ) -> None:
        self.call(
            ManagerEmulator.add_broker_connection, broker_id, username, password, host, port, vhost
        )

    def set_client_secret(self, client_id: str, secret: str) -> None:
        self.call(ManagerEmulator.set_client_secret, client_id, secret)

    def modules(self, exchange_id: str) -> list[dict[str, Any]]:
        return self.call(ManagerEmulator.modules, exchange_id)

    def module_count(self, exchange_ids: set[str]) -> int:
        return self.call(ManagerEmulator.module_count, exchange_ids)

    def module_writes(self, exchange_id: str) -> list[RecordedRequest]:
        return self.call(ManagerEmulator.module_writes, exchange_id)

    def put_fleet(self, exchange_ids: list[str], prefix: str, per_exchange: int) -> None:
        """Rows ``active``, updated now, for the load generator's workers (``prefix``, the
        exchanges in its routing keys' order): a fleet an earlier Overseer registered."""
        self.call(_put_fleet, exchange_ids, prefix, per_exchange)

    def inactive_posts(self, exchange_ids: Iterable[str], since: float) -> dict[str, float]:
        """Hostname -> time of its first POST ``inactive`` after ``since`` (cheap to poll: only
        these pairs cross the pipe)."""
        return self.call(_inactive_posts, list(exchange_ids), since)

    def close(self) -> None:
        self._connection.close()  # the child sees EOF and stops its server
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _put_fleet(
    emulator: ManagerEmulator, exchange_ids: list[str], prefix: str, per_exchange: int
) -> None:
    for key, exchange_id in enumerate(exchange_ids):
        for index in range(per_exchange):
            hostname = f"{prefix}-{key:03d}-{index:06d}"  # as benchmarks.loadgen names them
            emulator.put_module(exchange_id, hostname, "builder", "active")


def _inactive_posts(
    emulator: ManagerEmulator, exchange_ids: list[str], since: float
) -> dict[str, float]:
    posts: dict[str, float] = {}
    for exchange_id in exchange_ids:
        for request in emulator.module_writes(exchange_id):
            body = request.body if isinstance(request.body, dict) else {}
            if (
                request.time > since
                and request.method == "POST"
                and body.get("status") == "inactive"
            ):
                posts.setdefault(str(body.get("hostname")), request.time)
    return posts


def _serve(connection: Connection, clients: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the runner, which closes us
    with ManagerEmulator(clients=clients) as emulator:
        connection.send(emulator.url)
        while True:
            try:
                function, args = connection.recv()
            except EOFError:  # the runner is done (or gone)
                return
            try:
                connection.send((True, function(emulator, *args)))
            except Exception as error:  # raised again in the runner
                connection.send((False, error))

"""Long-lived tasks that cannot die silently.

Every background task of a monitor (writers, sweeper, consumer, own heartbeat) runs under a
``Supervisor``: a crash is logged with its traceback, counted in
``overseer_task_crashes_total``, reported to the owner (which turns it into a condition where it
matters), and the task is started again after a backoff. Cancellation is the only way to stop one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from overseer_operator import metrics
from overseer_operator.backoff import Backoff, raise_if_cancelling

logger = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
CrashCallback = Callable[[str, BaseException], None]


class Supervisor:
    def __init__(
        self,
        labels: tuple[str, str],
        on_crash: CrashCallback = lambda name, error: None,
        *,
        restart_after: float = 1.0,
    ) -> None:
        self._labels = labels
        self._on_crash = on_crash
        self._restart_after = restart_after
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` until it returns; restart it whenever it raises."""
        task = asyncio.create_task(self._keep_running(name, factory), name=self._name(name))
        self._tasks.append(task)

    def _name(self, name: str) -> str:
        return f"{self._labels[0]}/{self._labels[1]}:{name}"

    async def _keep_running(self, name: str, factory: TaskFactory) -> None:
        backoff = Backoff(self._restart_after)
        while True:
            try:
                await factory()
                return
            except Exception as error:
                raise_if_cancelling()  # a cancellation turned into an error: stop, not restart
                metrics.TASK_CRASHES.labels(*self._labels, name).inc()
                logger.exception("Task %s crashed; restarting it", self._name(name))
                self._on_crash(name, error)
            await backoff.wait()

    async def aclose(self) -> None:
        """Cancel every task and wait for them; cancel again any that swallowed it (a library
        may turn a cancellation into an error, or, on 3.11, ``wait_for`` drop it)."""
        pending, self._tasks = set(self._tasks), []
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)

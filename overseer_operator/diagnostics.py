"""``kill -USR1 <pid>``: every asyncio task's name and where it waits, written to the log.

A monitor that never finishes shutting down, a daemon stuck in a call: the event loop keeps
running, so nothing crashes and no thread stack shows it. The dump shows which coroutine each
task is suspended in, without a debugger and without stopping the process.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

logger = logging.getLogger(__name__)


def dump_tasks() -> str:
    """Every task of the running loop, one stack each (innermost frame last)."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"--- {task.get_name()} ({task.get_coro()!r:.120})\n")
        task.print_stack(file=out)
    return out.getvalue()


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR1, lambda: logger.warning("%s", dump_tasks()))

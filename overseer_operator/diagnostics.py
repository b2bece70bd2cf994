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
    """Every task of the running loop with the chain of awaits it is suspended in, outermost
    first (``Task.print_stack`` shows only the outermost coroutine of a suspended task)."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        state = "cancelling" if task.cancelling() else "pending"
        out.write(f"--- {task.get_name()} ({state})\n")
        for line in awaiting(task.get_coro()):
            out.write(f"    {line}\n")
    return out.getvalue()


def awaiting(awaitable: object) -> list[str]:
    """``file:line in function`` for each coroutine or generator in the chain of awaits."""
    lines = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR1, lambda: logger.warning("%s", dump_tasks()))

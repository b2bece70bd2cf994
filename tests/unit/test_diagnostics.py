"""The task dump names every task and the coroutine line where it waits."""

from __future__ import annotations

import asyncio

from overseer_operator.diagnostics import dump_tasks


async def test_the_dump_shows_where_each_task_waits() -> None:
    stuck = asyncio.Event()

    async def waiting_for_a_lease() -> None:
        await stuck.wait()

    task = asyncio.create_task(waiting_for_a_lease(), name="mx-0:claim")
    await asyncio.sleep(0)
    dump = dump_tasks()
    task.cancel()
    assert "--- mx-0:claim (pending)" in dump
    lines = dump.split("--- mx-0:claim")[1].splitlines()
    # The whole chain of awaits, down to the Event's own wait.
    assert "in waiting_for_a_lease" in lines[1] and lines[2].endswith(" in wait")

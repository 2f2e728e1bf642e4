"""wait_event keeps a cancellation that arrives together with the event (the 3.11
wait_for race that once hung the queue runner's stop under load)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

import pytest

from pillarbox.core.aio import wait_event


async def _stdlib_wait(event: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def _stop_a_loop(wait: Callable[[asyncio.Event, float], Awaitable[bool]]) -> str:
    """Run a loop like the queue runner's, then set its event and cancel it at once."""
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await wait(event, 10.0)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)  # the loop is waiting
    event.set()
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    except asyncio.CancelledError:
        return "stopped"
    except TimeoutError:
        task.cancel()  # clean up: this time nothing races the cancellation
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "ran on"
    return "returned"


async def test_cancellation_beats_a_simultaneous_event() -> None:
    assert await _stop_a_loop(wait_event) == "stopped"


async def test_the_race_is_real_with_wait_for_on_this_python() -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("fixed in CPython 3.12 (gh-86296)")
    assert await _stop_a_loop(_stdlib_wait) == "ran on"


async def test_timeout_and_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 1.0) is True

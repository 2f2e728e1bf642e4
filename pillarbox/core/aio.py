"""Small asyncio helpers that the standard library gets subtly wrong on Python 3.11."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on 3.11, when the task is cancelled
    just as the event is set, wait_for returns the result and swallows the cancellation
    (CPython gh-86296, fixed in 3.12), so a loop told to stop runs on and its stop() hangs.
    ``asyncio.timeout`` keeps the cancellation.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True

"""A bound on how many password verifications run at once, with a lane for known devices.

Each argon2id verification takes 64 MiB for its whole run, so the number running at once is
what sets the server's peak memory under parallel logins; ``HashSlots`` holds the rest in
line. Waiters are served first come, first served, except that an attempt from an (account,
client) pair that has logged in before goes ahead of strangers: under a flood of guesses
from many addresses, the owner's phone does not wait behind the whole queue.

The limit can change at run time (a reload): raising it lets waiters in at once, lowering
it lets running verifications finish and admits no one until the count is under it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class HashSlots:
    def __init__(self, limit: int):
        self._limit = limit
        self._busy = 0
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    @property
    def busy(self) -> int:
        return self._busy

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._wake()

    async def acquire(self, *, priority: bool = False) -> None:
        if self._busy < self._limit and not any(self._waiting.values()):
            self._busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same instant we were cancelled
            else:
                # A cancelled waiter may already have been skipped (and dropped) by _wake.
                with contextlib.suppress(ValueError):
                    self._waiting[priority].remove(waiter)
            raise

    def release(self) -> None:
        self._busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._busy < self._limit:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._busy += 1
            waiter.set_result(None)

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for lane in (self._waiting[True], self._waiting[False]):
            while lane:
                waiter = lane.popleft()
                if not waiter.done():
                    return waiter
        return None

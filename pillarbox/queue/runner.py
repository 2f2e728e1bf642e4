"""The queue runner: picks due recipients, groups them into jobs, runs them concurrently.

A *job* is one message for one destination (a recipient domain, or the smarthost): its
recipients there travel in one SMTP transaction. Jobs wait in a FIFO per destination.
Each destination gets at most ``max_concurrency_per_destination`` workers and all together
at most ``max_concurrency`` connections, so a slow or dead destination holds only its own
few slots and never starves the others (Postfix qmgr's per-destination concurrency). A
worker keeps its connection open between the jobs of its destination (connection reuse:
RSET, then the next message), and closes it when its destination has no more work.

The runner wakes when a message is queued or flushed, when the next retry is due, and every
``queue_scan_interval`` to pick up work queued by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pillarbox import log
from pillarbox.core.aio import wait_event
from pillarbox.queue.remote import Slot
from pillarbox.queue.store import Recipient

_log = log.get("queue")


@dataclass(frozen=True)
class Job:
    queue_id: str
    domain: str
    recipient_ids: tuple[int, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.queue_id, self.domain)


JobRunner = Callable[[Job, Slot], Awaitable[None]]

# Jobs a worker may run in a row while other destinations wait for a slot.
JOBS_PER_TURN = 10


class FairSlots:
    """``max_concurrency`` connection slots handed out round-robin by destination.

    A plain semaphore serves waiters in arrival order, so a destination with several
    waiting workers would get every freed slot ahead of a destination that asked once;
    here each destination with waiters gets the next free slot in turn."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()

    def others_waiting(self, destination: str) -> bool:
        return any(d != destination for d in self._turns)

    async def acquire(self, destination: str) -> None:
        if self._free > 0 and not self._turns:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if destination not in self._waiters:
            self._waiters[destination] = deque()
            self._turns.append(destination)
        self._waiters[destination].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled at once: pass the slot on
            else:
                self._forget(destination, future)
            raise

    def release(self) -> None:
        while self._turns:
            destination = self._turns.popleft()
            waiters = self._waiters[destination]
            future = waiters.popleft()
            if waiters:
                self._turns.append(destination)
            else:
                del self._waiters[destination]
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    def _forget(self, destination: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(destination)
        if waiters is None or future not in waiters:
            return
        waiters.remove(future)
        if not waiters:
            del self._waiters[destination]
            self._turns.remove(destination)


class Runner:
    def __init__(
        self,
        *,
        due: Callable[[float], Awaitable[list[Recipient]]],
        next_due: Callable[[float], Awaitable[float | None]],
        run_job: JobRunner,
        housekeeping: Callable[[], Awaitable[None]],
        destination_of: Callable[[str], str],
        max_concurrency: int,
        per_destination: int,
        scan_interval: float,
    ) -> None:
        self._due = due
        self._next_due = next_due
        self._run_job = run_job
        self._housekeeping = housekeeping
        self.destination_of = destination_of
        self.per_destination = per_destination
        self.scan_interval = scan_interval
        self._slots = FairSlots(max_concurrency)
        self._wake = asyncio.Event()
        self._jobs: dict[str, deque[Job]] = {}
        self._workers: dict[str, int] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._main = asyncio.create_task(self._loop(), name="queue-runner")

    async def stop(self, grace: float = 0.0) -> None:
        """Stop scheduling; let attempts in flight finish for up to ``grace`` seconds, then
        cancel them (an attempt cut short is retried after the restart)."""
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        for destination, jobs in self._jobs.items():
            for job in jobs:
                self._in_flight.discard(job.key)
            jobs.clear()
            _log.debug("queue runner stopping", destination=destination)
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def held(self) -> frozenset[tuple[str, str]]:
        """The (queue id, domain) jobs scheduled or running here (their claims to renew)."""
        return frozenset(self._in_flight)

    def in_flight(self, queue_id: str) -> bool:
        return any(key[0] == queue_id for key in self._in_flight)

    # -- scheduling -----------------------------------------------------------------------

    async def _loop(self) -> None:
        last_housekeeping = -float("inf")
        while True:
            self._wake.clear()
            try:
                # Housekeeping (leftover reports after a crash, orphans) scans the whole
                # queue: on the timer only, not after every job.
                if time.monotonic() - last_housekeeping >= self.scan_interval:
                    last_housekeeping = time.monotonic()
                    await self._housekeeping()
                await self._schedule()
                delay = await self._delay()
            except Exception:
                _log.error("queue scan failed", exc_info=True)
                delay = self.scan_interval
            await wait_event(self._wake, delay)

    async def _delay(self) -> float:
        # Recipients due now are scheduled or in flight (a finished job wakes the loop), so
        # only future retries set the timer: no busy loop while a slow attempt runs.
        now = time.time()
        upcoming = await self._next_due(now)
        if upcoming is None:
            return self.scan_interval
        return max(0.05, min(self.scan_interval, upcoming - now))

    async def _schedule(self) -> None:
        self.take(await self._due(time.time()))

    def take(self, recipients: Sequence[Recipient]) -> None:
        """Schedule ``recipients`` (due and this node's to work on) as jobs, except those
        of a job already here. Enqueue hands a new message's recipients over this way at
        once, without a scan in between."""
        if self._main is None or self._main.done():
            return  # not running: the next start's scan finds them
        grouped: dict[tuple[str, str], list[int]] = {}
        for r in recipients:
            key = (r.queue_id, r.domain)
            if key not in self._in_flight:
                grouped.setdefault(key, []).append(r.id)
        for (queue_id, domain), ids in grouped.items():
            job = Job(queue_id, domain, tuple(ids))
            self._in_flight.add(job.key)
            self._jobs.setdefault(self.destination_of(domain), deque()).append(job)
        for destination, jobs in self._jobs.items():
            # Workers that find nothing left exit at once, so over-spawning is harmless.
            running = self._workers.get(destination, 0)
            for _ in range(min(self.per_destination - running, len(jobs))):
                self._workers[destination] = self._workers.get(destination, 0) + 1
                task = asyncio.create_task(self._worker(destination), name=f"queue-{destination}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _worker(self, destination: str) -> None:
        """Run the destination's jobs over one reused connection. A worker holds one of the
        ``max_concurrency`` slots for at most JOBS_PER_TURN jobs while other destinations
        wait for one, then queues up again behind them (slots go round-robin by
        destination): a destination with a long backlog cannot keep the slots from the
        others."""
        slot = Slot()
        try:
            while self._jobs.get(destination):
                await self._slots.acquire(destination)
                try:
                    await self._turn(destination, slot)
                finally:
                    await slot.close()
                    self._slots.release()
        finally:
            self._workers[destination] -= 1
            if not self._workers[destination]:
                del self._workers[destination]
                if not self._jobs.get(destination):
                    self._jobs.pop(destination, None)

    async def _turn(self, destination: str, slot: Slot) -> None:
        done = 0
        while (jobs := self._jobs.get(destination)) and not (
            done >= JOBS_PER_TURN and self._slots.others_waiting(destination)
        ):
            job = jobs.popleft()
            done += 1
            try:
                await self._run_job(job, slot)
            except Exception:
                _log.error(
                    "delivery attempt failed", queue_id=job.queue_id, domain=job.domain,
                    exc_info=True,
                )  # fmt: skip
                self._in_flight.discard(job.key)
                continue  # no wake-up: a job that keeps failing waits for the next scan
            self._in_flight.discard(job.key)
            self._wake.set()  # rescan: the job may have due siblings

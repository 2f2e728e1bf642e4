"""Failure throttles: for each key (a client, an account), a wait that doubles per failure.

After the k-th failure within the window the key may not be tried again for
``min(max_delay, base_delay * 2**(k-1))`` seconds. Attempts on one key pass one at a time
through the key's *gate* (a lock held from before the wait until the outcome is recorded),
and each waits in the gate until the key's ``not_before`` time: N parallel connections
therefore make exactly as many guesses as one connection would. Failures are forgotten
``window`` seconds after the last one.

Memory stays bounded however many keys an attacker uses: a key with no failures is dropped
as soon as no attempt is in its gate, records whose failures have expired are dropped from
the old end of the table (it is kept in order of last failure, so they collect there), and
past ``max_entries`` the oldest records are dropped even if live. A record with an attempt
in its gate is never dropped: the gate would stop serialising.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThrottlePolicy:
    base_delay: float
    max_delay: float
    window: float

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (0 for none)."""
        if failures <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 62))


@dataclass(eq=False)
class Record:
    failures: int = 0
    last_failure: float = 0.0
    not_before: float = 0.0
    # Attempts in the gate or queued at it; while any, the record stays in the table.
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Throttle:
    def __init__(
        self, policy: ThrottlePolicy, clock: Callable[[], float], *, max_entries: int = 65536
    ):
        self.policy = policy
        self._clock = clock
        self._max_entries = max_entries
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def failures(self, key: str) -> int:
        """Failures of ``key`` still remembered."""
        record = self._records.get(key)
        if record is None:
            return 0
        self._refresh(record, self._clock())
        return record.failures

    def next_delay(self, key: str) -> float:
        """The wait a failure of ``key`` would bring if it happened now."""
        return self.policy.delay(self.failures(key) + 1)

    @contextlib.asynccontextmanager
    async def gate(self, key: str) -> AsyncIterator[Record]:
        """Hold ``key``'s gate: one attempt at a time; the caller waits for not_before."""
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = Record()
        record.users += 1
        try:
            async with record.lock:
                self._refresh(record, self._clock())
                yield record
        finally:
            record.users -= 1
            if record.users == 0 and record.failures == 0 and self._records.get(key) is record:
                del self._records[key]

    def record_failure(self, key: str) -> int:
        """Count a failure of ``key`` now; returns its failure count within the window."""
        now = self._clock()
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = Record()
        self._refresh(record, now)
        record.failures += 1
        record.last_failure = now
        record.not_before = max(record.not_before, now + self.policy.delay(record.failures))
        self._records.move_to_end(key)
        self._prune(now)
        return record.failures

    def forget(self, key: str) -> None:
        """Drop ``key``'s failures (after a ban, or an administrator's unban)."""
        record = self._records.get(key)
        if record is None:
            return
        record.failures = 0
        record.not_before = 0.0
        if record.users == 0:
            del self._records[key]

    def _refresh(self, record: Record, now: float) -> None:
        if record.failures and now - record.last_failure > self.policy.window:
            record.failures = 0

    def _expired(self, record: Record, now: float) -> bool:
        return record.users == 0 and (
            record.failures == 0 or now - record.last_failure > self.policy.window
        )

    def _prune(self, now: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            if not self._expired(record, now):
                break
            del self._records[key]
        excess = len(self._records) - self._max_entries
        if excess > 0:
            idle = (k for k, r in self._records.items() if r.users == 0)
            for key in list(itertools.islice(idle, excess)):
                del self._records[key]

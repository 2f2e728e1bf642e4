"""The one authentication service every protocol uses.

``Authenticator.authenticate`` checks a user name and password against the accounts store
with argon2id off the event loop, and slows down repeated failures: each failure from one
client address adds to a delay (capped) that is served before the reply, which makes
password guessing slow without locking real users out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pillarbox.auth.passwords import verify_password
from pillarbox.auth.sasl import Credentials
from pillarbox.core.address import AddressError, parse_address

MAX_DELAY = 15.0
FAILURE_MEMORY = 900.0  # seconds a failure is remembered


@dataclass
class _Failures:
    count: int
    last: float


class Authenticator:
    """Verifies credentials; ``lookup_hash(address) -> hash | None`` is the accounts store."""

    def __init__(
        self,
        lookup_hash: Callable[[str], str | None],
        *,
        base_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._lookup_hash = lookup_hash
        self._base_delay = base_delay
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def failure_delay(self, client: str) -> float:
        """Seconds to wait before answering a failure from ``client``: grows 1, 2, 4 ..."""
        entry = self._failures.get(client)
        if entry is None or self._clock() - entry.last > FAILURE_MEMORY:
            return self._base_delay
        return min(MAX_DELAY, self._base_delay * (2 ** min(entry.count, 8)))

    async def authenticate(self, credentials: Credentials, client: str) -> str | None:
        """Return the canonical user address on success, else None (after a delay)."""
        user = self._canonical(credentials)
        stored = await asyncio.to_thread(self._lookup_hash, user) if user else None
        ok = await asyncio.to_thread(verify_password, stored, credentials.password)
        if ok and user:
            self._failures.pop(client, None)
            return user
        delay = self.failure_delay(client)
        self._record_failure(client)
        await asyncio.sleep(delay)
        return None

    def _canonical(self, credentials: Credentials) -> str | None:
        try:
            user = str(parse_address(credentials.authcid))
        except AddressError:
            return None
        # We do not support proxy authorisation: authzid must be empty or the user itself.
        if credentials.authzid:
            try:
                if str(parse_address(credentials.authzid)) != user:
                    return None
            except AddressError:
                return None
        return user

    def _record_failure(self, client: str) -> None:
        now = self._clock()
        entry = self._failures.get(client)
        if entry is None or now - entry.last > FAILURE_MEMORY:
            self._failures[client] = _Failures(1, now)
        else:
            entry.count += 1
            entry.last = now
        if len(self._failures) > 10000:  # bound memory under a distributed attack
            cutoff = now - FAILURE_MEMORY
            self._failures = {k: v for k, v in self._failures.items() if v.last > cutoff}

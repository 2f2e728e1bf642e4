"""A short-lived cache of verified credentials, so a device that logs in all day does not
pay argon2id (tens of milliseconds, 64 MiB) on every connection (like Dovecot's auth_cache).

Only a password that has just verified is put in; a wrong guess is never cached and always
costs the full hash. Entries are keyed by HMAC-SHA256 under a random per-process key of
user and password (the password itself is never kept, and the key cannot be tested offline
by someone reading memory without the process key). Each entry remembers the stored hash it
was verified against: a hit is only a hit while the accounts store still returns that same
hash, so a password change or a deleted user (from the CLI, the web admin or another
process) invalidates it at once, with no notification needed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

DEFAULT_TTL: Final = 300.0
DEFAULT_SIZE: Final = 4096


class CredentialCache:
    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def _digest(self, user: str, password: str) -> bytes:
        # NUL cannot occur in an address or a password (passwords.check_policy).
        data = f"{user}\0{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def hit(self, user: str, password: str, stored_hash: str | None) -> bool:
        """Whether (user, password) verified against ``stored_hash`` within the TTL."""
        if stored_hash is None or self._ttl <= 0:
            return False
        digest = self._digest(user, password)
        entry = self._entries.get(digest)
        if entry is None:
            return False
        cached_hash, expires = entry
        if expires <= self._clock() or not hmac.compare_digest(cached_hash, stored_hash):
            del self._entries[digest]
            return False
        return True

    def put(self, user: str, password: str, stored_hash: str) -> None:
        if self._ttl <= 0:
            return
        digest = self._digest(user, password)
        self._entries[digest] = (stored_hash, self._clock() + self._ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

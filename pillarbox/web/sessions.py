"""Signed-in sessions and their CSRF tokens, kept in memory.

A session is a random 256-bit token in a cookie named ``__Host-pb_session`` with
``Secure; HttpOnly; SameSite=Strict; Path=/`` (the ``__Host-`` prefix makes the browser
refuse it unless it came over https without a Domain attribute, RFC 6265bis §4.1.3.2).
The server keeps only a SHA-256 of the token, so a memory dump or a log line holding a
key gives nobody a session. Each session has its own CSRF token (the synchronizer token
pattern): every form carries it in a hidden field and every POST is refused without it.

Sessions end at ``web.session_lifetime`` after login, after ``web.session_idle`` without a
request, at logout, and for every session of a user whose password changes or who is
deleted. A restart signs everyone out (nothing of a session is written to disk).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "__Host-pb_session"
LOGIN_COOKIE = "__Host-pb_login"  # the CSRF token of the login form (no session yet)
MAX_SESSIONS = 10_000  # the oldest are dropped beyond this: memory stays bounded


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison (the CSRF token must not leak by timing)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Session:
    user: str
    created: float  # time.monotonic()
    seen: float
    csrf: str = field(default_factory=new_token)
    # Messages for the next page shown ("user added", "no such alias"): (kind, text).
    flashes: list[tuple[str, str]] = field(default_factory=list)


class Sessions:
    def __init__(self, lifetime: float, idle: float):
        self.lifetime = lifetime
        self.idle = idle
        self._by_key: dict[str, Session] = {}

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: (the cookie value, the session)."""
        self._expire()
        while len(self._by_key) >= MAX_SESSIONS:
            del self._by_key[next(iter(self._by_key))]  # dicts keep insertion order
        token = new_token()
        now = time.monotonic()
        session = Session(user, created=now, seen=now)
        self._by_key[_key(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        key = _key(token)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.created > self.lifetime or now - session.seen > self.idle:
            del self._by_key[key]
            return None
        session.seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_key.pop(_key(token), None)

    def end_user(self, user: str, *, keep: Session | None = None) -> int:
        """End every session of ``user`` (but ``keep``); how many ended."""
        doomed = [k for k, s in self._by_key.items() if s.user == user and s is not keep]
        for key in doomed:
            del self._by_key[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._by_key)

    def _expire(self) -> None:
        now = time.monotonic()
        stale = [
            k
            for k, s in self._by_key.items()
            if now - s.created > self.lifetime or now - s.seen > self.idle
        ]
        for key in stale:
            del self._by_key[key]

"""The verified-credential cache: a repeat login skips argon2id, a wrong guess never does,
and a password change or a deleted account takes effect at the next login."""

from __future__ import annotations

import asyncio

from pillarbox.auth.cache import CredentialCache
from pillarbox.auth.passwords import hash_password, verify_password
from pillarbox.auth.sasl import Credentials
from pillarbox.auth.service import Authenticator
from pillarbox.config import LimitSettings

ALICE = "alice@example.test"


class Accounts:
    """A real argon2id hash per user, and a count of the hashes the Authenticator spent."""

    def __init__(self) -> None:
        self.hashes: dict[str, str] = {ALICE: hash_password("correct horse")}
        self.verified = 0

    def verify(self, stored: str | None, password: str) -> bool:
        self.verified += 1
        return verify_password(stored, password)


def _auth(accounts: Accounts, cache: CredentialCache | None = None) -> Authenticator:
    limits = LimitSettings(auth_failure_delay=0)
    return Authenticator(accounts.hashes.get, limits, verify=accounts.verify, cache=cache)


def _login(auth: Authenticator, password: str) -> str | None:
    return asyncio.run(auth.authenticate(Credentials(ALICE, password), "192.0.2.7"))


def test_a_repeat_login_skips_the_hash_and_a_wrong_guess_never_does() -> None:
    accounts = Accounts()
    auth = _auth(accounts)
    assert _login(auth, "correct horse") == ALICE
    assert _login(auth, "correct horse") == ALICE
    assert accounts.verified == 1
    for _ in range(3):
        assert _login(auth, "wrong horse") is None
    assert accounts.verified == 4  # every guess pays argon2id


def test_a_password_change_or_deletion_invalidates_the_entry() -> None:
    accounts = Accounts()
    auth = _auth(accounts)
    assert _login(auth, "correct horse") == ALICE
    accounts.hashes[ALICE] = hash_password("battery staple")
    assert _login(auth, "correct horse") is None  # the old password is refused at once
    assert _login(auth, "battery staple") == ALICE
    del accounts.hashes[ALICE]
    assert _login(auth, "battery staple") is None


def test_entries_expire_after_the_ttl_and_the_table_is_bounded() -> None:
    now = [0.0]
    cache = CredentialCache(ttl=60, max_entries=2, clock=lambda: now[0])
    cache.put("a@x.test", "pw", "h1")
    assert cache.hit("a@x.test", "pw", "h1")
    assert not cache.hit("a@x.test", "pw2", "h1")
    assert not cache.hit("b@x.test", "pw", "h1")
    now[0] = 61.0
    assert not cache.hit("a@x.test", "pw", "h1") and len(cache) == 0
    for user in ("a@x.test", "b@x.test", "c@x.test"):
        cache.put(user, "pw", "h")
    assert len(cache) == 2 and not cache.hit("a@x.test", "pw", "h")
    assert not CredentialCache(ttl=0).hit("a@x.test", "pw", "h")

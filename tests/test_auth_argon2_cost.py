"""The argon2id cost in the config: new hashes use it, old hashes still verify, logins work."""

from __future__ import annotations

import imaplib
import subprocess
import sys
import tomllib
from pathlib import Path

import argon2
import pytest

from pillarbox import config
from pillarbox.auth import passwords
from pillarbox.config import Settings
from pillarbox.store.accounts import Accounts
from tests import pbserver
from tests.imaphelp import TIMEOUT, tls_context

CHEAP = {"argon2_time_cost": 2, "argon2_memory_kib": 19456, "argon2_parallelism": 1}


def _user_add(settings: Settings, address: str) -> None:
    assert settings.source is not None
    run = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source),
         "user", "add", address, "--password-stdin"],
        input=pbserver.PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


def _with_limits(settings: Settings, limits: dict[str, int]) -> Settings:
    """The same data dir with ``limits`` merged into its config file."""
    assert settings.source is not None
    raw = pbserver.merge(tomllib.loads(settings.source.read_text()), {"limits": limits})
    settings.source.write_text(pbserver.dump_toml(raw))
    return config.load(settings.source)


def _stored_hash(settings: Settings, address: str) -> str:
    accounts = Accounts(settings.database_path, settings.domains)
    try:
        stored = accounts.password_hash(address)
    finally:
        accounts.close()
    assert stored is not None
    return stored


def _imap_login(server: pbserver.RunningServer, address: str) -> str:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=tls_context(server.settings),
        timeout=TIMEOUT,
    )  # fmt: skip
    try:
        typ, _ = client.login(address, pbserver.PASSWORD)
        return str(typ)
    finally:
        client.logout()


def test_new_hashes_use_the_configured_cost_and_old_ones_still_verify(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    _user_add(settings, "old@example.test")  # made with the default cost
    assert "$m=65536,t=3,p=4$" in _stored_hash(settings, "old@example.test")

    settings = _with_limits(settings, CHEAP)
    _user_add(settings, "new@example.test")
    assert "$m=19456,t=2,p=1$" in _stored_hash(settings, "new@example.test")

    with pbserver.RunningServer(settings) as server:
        assert _imap_login(server, "new@example.test") == "OK"
        assert _imap_login(server, "old@example.test") == "OK"
        # The server hashes with the configured cost too (an unknown user is timed with
        # a dummy hash of that cost, so "no such user" takes as long as a wrong password).
        assert passwords.current_cost() == passwords.Argon2Cost(2, 19456, 1)


def test_configure_changes_the_dummy_hash_cost() -> None:
    before = passwords.current_cost()
    try:
        passwords.configure(passwords.Argon2Cost(1, 19456, 1))
        assert not passwords.verify_password(None, "anything")
        assert "$m=19456,t=1,p=1$" in passwords._dummy_hash
        # Written, not hashed (no argon2 run to make it), and a hash argon2 accepts as such:
        # verifying against it is one full run with the configured parameters.
        params = argon2.extract_parameters(passwords._dummy_hash)
        assert (params.type, params.time_cost, params.memory_cost) == (argon2.Type.ID, 1, 19456)
        assert (params.parallelism, params.salt_len, params.hash_len) == (1, 16, 32)
        with pytest.raises(argon2.exceptions.VerifyMismatchError):
            argon2.PasswordHasher().verify(passwords._dummy_hash, "anything")
        assert "$m=19456,t=1,p=1$" in passwords.hash_password("long enough password")
    finally:
        passwords.configure(before)

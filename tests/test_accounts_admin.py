"""The admin flag of the web admin: the CLI (`user add --admin`, `user admin`, `user list`)
and the migration that adds it to an accounts database made before it existed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.store import accounts as accounts_module
from pillarbox.store.accounts import AccountError, Accounts
from pillarbox.store.db import connect, migrate
from tests import pbserver
from tests.test_foundation_cli import pillarbox


@pytest.fixture
def cfg(tmp_path: Path) -> tuple[str, str]:
    settings = pbserver.make_settings(tmp_path / "data")
    return ("--config", str(settings.source))


def test_admin_flag_round_trip_through_the_cli(cfg: tuple[str, str]) -> None:
    pw = "s3cret-password\n"
    added = pillarbox(
        *cfg, "user", "add", "boss@example.test", "--admin", "--password-stdin", stdin=pw
    )
    assert added.returncode == 0, added.stderr
    assert "admin" in added.stdout
    assert (
        pillarbox(*cfg, "user", "add", "bob@example.test", "--password-stdin", stdin=pw).returncode
        == 0
    )
    listed = pillarbox(*cfg, "user", "list").stdout.splitlines()
    assert listed == ["bob@example.test", "boss@example.test\tadmin"]

    assert pillarbox(*cfg, "user", "admin", "bob@example.test", "on").returncode == 0
    assert pillarbox(*cfg, "user", "admin", "boss@example.test", "off").returncode == 0
    listed = pillarbox(*cfg, "user", "list").stdout.splitlines()
    assert listed == ["bob@example.test\tadmin", "boss@example.test"]

    missing = pillarbox(*cfg, "user", "admin", "nobody@example.test", "on")
    assert missing.returncode == 1 and "no such user" in missing.stderr
    assert pillarbox(*cfg, "user", "admin", "bob@example.test", "maybe").returncode == 2


def test_an_accounts_database_from_before_the_flag_gains_it(tmp_path: Path) -> None:
    db = tmp_path / "pillarbox.db"
    old = connect(db)
    migrate(old, "accounts", accounts_module.MIGRATIONS)  # the schema before the flag
    old.execute(
        "INSERT INTO users(address, domain, password_hash, created) VALUES(?,?,?,?)",
        ("old@example.test", "example.test", hash_password("an old password"), 1.0),
    )
    old.close()

    accounts = Accounts(db, ["example.test"])
    try:
        assert [(u.address, u.admin) for u in accounts.user_details()] == [
            ("old@example.test", False)
        ]
        accounts.set_admin("old@example.test", True)
        assert accounts.is_admin("old@example.test")
        version = accounts.conn.execute(
            "SELECT version FROM schema_versions WHERE component = 'accounts.admin'"
        ).fetchone()[0]
        assert version == len(accounts_module.ADMIN_MIGRATIONS)
        with pytest.raises(AccountError):
            accounts.set_admin("nobody@example.test", True)
        # Deleting the user takes the flag with it: a new user of that name is no admin.
        accounts.delete_user("old@example.test")
        accounts.add_user("old@example.test", hash_password("a new password"))
        assert not accounts.is_admin("old@example.test")
    finally:
        accounts.close()

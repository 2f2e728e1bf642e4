"""The server remembers found recipients for a few seconds (Accounts.resolve); changes
made with the CLI beside the running server still count at once."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.store import accounts as accounts_module
from pillarbox.store.accounts import Accounts
from tests import pbserver

DOMAIN = pbserver.DOMAIN


def rcpt(port: int, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("sender.test")
        client.mail("someone@sender.test")
        code, _ = client.rcpt(address)
        client.rset()
        return code


def cli(settings: Settings, *argv: str) -> int:
    assert settings.source is not None
    return main(["--config", str(settings.source), *argv])


def test_cli_changes_count_at_once_for_a_running_server(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    bob, carol = f"bob@{DOMAIN}", f"carol@{DOMAIN}"
    pbserver.add_user(settings, bob)
    with pbserver.SubprocessServer(settings) as server:
        port = server.port("smtp")
        assert rcpt(port, bob) == 250  # found: now remembered by the server
        assert rcpt(port, carol) == 550
        pbserver.add_user(settings, carol)  # not found is never remembered
        assert rcpt(port, carol) == 250
        assert cli(settings, "user", "del", bob) == 0
        assert rcpt(port, bob) == 550  # the CLI told the server to forget
        assert cli(settings, "alias", "add", f"sales@{DOMAIN}", carol) == 0
        assert rcpt(port, f"sales@{DOMAIN}") == 250
        assert cli(settings, "alias", "del", f"sales@{DOMAIN}") == 0
        assert rcpt(port, f"sales@{DOMAIN}") == 550


def test_remembered_resolutions_expire_and_writes_forget_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    here = Accounts(settings.database_path, settings.domains)
    other = Accounts(settings.database_path, settings.domains)  # another process, say
    try:
        here.add_user(f"dave@{DOMAIN}", "x")
        assert here.resolve(f"dave+tag@{DOMAIN}", "+").local_users == (f"dave@{DOMAIN}",)
        other.delete_user(f"dave@{DOMAIN}")
        # Remembered: `here` has not been told (the CLI would tell the server).
        assert here.resolve(f"dave+tag@{DOMAIN}", "+").found
        here.forget_cached()
        assert not here.resolve(f"dave+tag@{DOMAIN}", "+").found
        # A change through the same object forgets at once.
        here.add_user(f"erin@{DOMAIN}", "x")
        assert here.resolve(f"erin@{DOMAIN}", "+").found
        here.delete_user(f"erin@{DOMAIN}")
        assert not here.resolve(f"erin@{DOMAIN}", "+").found
        # And nothing is remembered past the TTL.
        monkeypatch.setattr(accounts_module, "RESOLUTION_CACHE_SECONDS", 0.0)
        here.add_user(f"gina@{DOMAIN}", "x")
        assert here.resolve(f"gina@{DOMAIN}", "+").found
        other.delete_user(f"gina@{DOMAIN}")
        assert not here.resolve(f"gina@{DOMAIN}", "+").found
    finally:
        here.close()
        other.close()

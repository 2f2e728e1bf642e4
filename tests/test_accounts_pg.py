"""Accounts on both backends, and on PostgreSQL shared by nodes: `pillarbox user add` and
IMAP login against the database, a password changed on node A refused at once on node
B, a user added on A receiving mail on B. Real server processes, real IMAP (imaplib) and
SMTP (smtplib) clients, the real PostgreSQL of tests/pg.py."""

from __future__ import annotations

import imaplib
import io
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from pillarbox import cli
from pillarbox.config import Settings
from pillarbox.store.accounts import AccountError, Accounts, open_accounts
from tests import pbserver
from tests.ports import free_port

DOMAIN = pbserver.DOMAIN
ALICE = f"alice@{DOMAIN}"


def run_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, stdin: str, *argv: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(["--config", str(settings.source), *argv])


def imap_login(settings: Settings, port: int, user: str, password: str) -> bool:
    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=10) as client:
        try:
            client.login(user, password)
        except imaplib.IMAP4.error:
            return False
        client.logout()
        return True


def rcpt(port: int, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("sender.test")
        client.mail("someone@sender.test")
        code, _ = client.rcpt(address)
        return code


def node_settings(tmp_path: Path, name: str, store: dict[str, str]) -> Settings:
    return pbserver.make_settings(tmp_path / name, {"store": store})


def test_the_accounts_contract_holds_on_both_backends(
    tmp_path: Path, store_backend: dict[str, str]
) -> None:
    settings = node_settings(tmp_path, "a", store_backend)
    accounts = open_accounts(settings)
    try:
        bob = f"bob@{DOMAIN}"
        assert accounts.add_user(f"alice@{DOMAIN.upper()}", "hash-a") == ALICE
        accounts.add_user(bob, "hash-b", admin=True)
        with pytest.raises(AccountError, match="already exists"):
            accounts.add_user(ALICE, "x")
        with pytest.raises(AccountError, match="not one of this server's domains"):
            accounts.add_user("eve@elsewhere.test", "x")
        assert accounts.list_users() == [ALICE, bob]
        assert accounts.is_admin(bob) and not accounts.is_admin(ALICE)
        accounts.set_quota(ALICE, 1000)
        assert accounts.quota_of(ALICE, 5) == 1000 and accounts.quota_of(bob, 5) == 5

        accounts.add_alias(f"team@{DOMAIN}", [ALICE, bob, "far@remote.test"])
        accounts.add_alias(f"@{DOMAIN}", [bob])
        team = accounts.resolve(f"team+x@{DOMAIN}", "+")
        assert team.local_users == (ALICE, bob) and team.remote == ("far@remote.test",)
        assert accounts.resolve(f"nobody@{DOMAIN}", "+").local_users == (bob,)
        assert accounts.owned_addresses(ALICE) == {ALICE, f"team@{DOMAIN}"}
        accounts.add_send_as(ALICE, "@other.test")
        assert accounts.may_send_as(ALICE, "x@other.test", "+")
        assert not accounts.may_send_as(bob, "x@other.test", "+")
        assert accounts.first_user("elsewhere.test") == ALICE

        accounts.set_password(ALICE, "new-hash")
        assert accounts.password_hash(ALICE) == "new-hash"
        accounts.delete_user(ALICE)
        assert not accounts.user_exists(ALICE) and accounts.password_hash(ALICE) is None
        assert accounts.list_aliases()[f"team@{DOMAIN}"] == [bob, "far@remote.test"]
        assert accounts.list_send_as(ALICE) == []
        with pytest.raises(AccountError, match="no such user"):
            accounts.set_password(ALICE, "x")
        accounts.delete_alias(f"@{DOMAIN}")
        assert not accounts.resolve(f"nobody2@{DOMAIN}", "+").found
    finally:
        accounts.close()


def test_user_add_on_postgresql_then_imap_login(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = node_settings(tmp_path, "a", {"backend": "postgresql", "dsn": pg_dsn})
    assert run_cli(settings, monkeypatch, "s3cret pass\n", "user", "add", ALICE,
                   "--password-stdin") == 0  # fmt: skip
    # Nothing of it went to the node's SQLite accounts.
    local = Accounts(settings.database_path, settings.domains)
    assert local.list_users() == []
    local.close()
    with pbserver.SubprocessServer(settings) as node:
        assert imap_login(settings, node.port("imaps"), ALICE, "s3cret pass")
        assert not imap_login(settings, node.port("imaps"), ALICE, "wrong")


def test_changes_on_node_a_are_seen_by_node_b(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {"backend": "postgresql", "dsn": pg_dsn}
    a, b = node_settings(tmp_path, "a", store), node_settings(tmp_path, "b", store)
    pbserver.add_user(a, ALICE, "first password")
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        assert imap_login(b, node_b.port("imaps"), ALICE, "first password")
        # Changed through node A's CLI: node B refuses the old password at once.
        assert run_cli(a, monkeypatch, "second password\n", "user", "passwd", ALICE,
                       "--password-stdin") == 0  # fmt: skip
        assert not imap_login(b, node_b.port("imaps"), ALICE, "first password")
        assert imap_login(b, node_b.port("imaps"), ALICE, "second password")
        assert imap_login(a, node_a.port("imaps"), ALICE, "second password")

        # A user added on A is a known recipient on B within a second (NOTIFY), though B
        # had just answered 550 for it.
        carol = f"carol@{DOMAIN}"
        assert rcpt(node_b.port("smtp"), carol) == 550
        assert run_cli(a, monkeypatch, "carol pw\n", "user", "add", carol,
                       "--password-stdin") == 0  # fmt: skip
        deadline = time.monotonic() + 1.0
        while rcpt(node_b.port("smtp"), carol) != 250:
            assert time.monotonic() < deadline, "node B did not see the new user within 1 s"
            time.sleep(0.05)
        assert run_cli(a, monkeypatch, "", "user", "del", carol) == 0
        deadline = time.monotonic() + 1.0
        while rcpt(node_b.port("smtp"), carol) != 550:
            assert time.monotonic() < deadline, "node B still takes mail for a deleted user"
            time.sleep(0.05)


def test_an_unreachable_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://pillarbox@127.0.0.1:{port}/mail"
    settings = node_settings(tmp_path, "a", {"backend": "postgresql", "dsn": dsn})
    started = time.monotonic()
    assert run_cli(settings, monkeypatch, "", "user", "list") == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "store.dsn" in err and "cannot connect to PostgreSQL" in err
    assert "Connection refused" in err

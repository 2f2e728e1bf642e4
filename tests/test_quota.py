"""Storage quota (RFC 9208) at every entry point built so far: the usage the index keeps,
its migration from the previous index layout, the config key, `pillarbox user quota`, and
IMAP GETQUOTA/GETQUOTAROOT/SETQUOTA, STATUS DELETED-STORAGE and [OVERQUOTA] at APPEND and
COPY (MOVE adds no bytes and stays allowed)."""

from __future__ import annotations

import smtplib
import sqlite3
from pathlib import Path

import pytest

from pillarbox import config
from pillarbox.store import db
from pillarbox.store.accounts import Accounts
from pillarbox.store.index import INDEX_FILE, UserIndex
from pillarbox.store.types import MailboxError
from tests import pbserver
from tests.imaphelp import ALICE, Raw, login, message
from tests.test_foundation_cli import pillarbox

BODY = message("quota", "x" * 3000 + "\r\n")


def _sum_of_rows(ix: UserIndex) -> int:
    return int(ix.conn.execute("SELECT coalesce(sum(size), 0) FROM messages").fetchone()[0])


def test_usage_follows_every_change(tmp_path: Path) -> None:
    ix = UserIndex(tmp_path / "m")
    with ix.lock:
        assert ix.usage() == 0
        ix.append("INBOX", BODY, (), None)
        ix.append("INBOX", BODY, ("\\Deleted",), None)
        assert ix.usage() == 2 * len(BODY) == _sum_of_rows(ix)
        ix.copy("INBOX", [(1, 2)], "Trash", move=False)
        assert ix.usage() == 4 * len(BODY)
        ix.copy("INBOX", [(1, 1)], "Archive", move=True)
        assert ix.usage() == 4 * len(BODY) == _sum_of_rows(ix)
        assert ix.status("INBOX").deleted_storage == len(BODY)
        ix.expunge("INBOX", None)
        ix.delete("Trash")
        assert ix.usage() == len(BODY) == _sum_of_rows(ix)
        # A re-index writes rows with INSERT OR REPLACE: a replaced row is not counted twice.
        row = ix.conn.execute("SELECT * FROM messages").fetchone()
        with db.Transaction(ix.conn):
            ix.conn.execute(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(row)
            )
        assert ix.usage() == _sum_of_rows(ix) == len(BODY)
    ix.close()


def test_delivered_but_unindexed_mail_counts(tmp_path: Path) -> None:
    ix = UserIndex(tmp_path / "m")
    (ix.root / "new" / "1.M1P1.host,S=5000").write_bytes(b"x" * 10)  # the name's size counts
    (ix.root / "new" / "2.M2P2.host").write_bytes(b"y" * 700)  # no S=: stat'ed
    with ix.lock:
        assert ix.usage() == 5700
    ix.close()


def test_overquota_refuses_append_and_copy_writes_nothing(tmp_path: Path) -> None:
    ix = UserIndex(tmp_path / "m")
    limit = 2 * len(BODY)
    with ix.lock:
        ix.append("INBOX", BODY, (), None, limit)
        ix.append("INBOX", BODY, (), None, limit)  # exactly at the limit: taken
        with pytest.raises(MailboxError) as refused:
            ix.append("INBOX", BODY, (), None, limit)
        assert refused.value.code == "OVERQUOTA"
        with pytest.raises(MailboxError) as refused:
            ix.copy("INBOX", [(1, 1)], "Archive", move=False, limit=limit)
        assert refused.value.code == "OVERQUOTA"
        assert ix.status("Archive").messages == 0
        assert not list((ix.root / ".Archive" / "cur").iterdir())
        ix.copy("INBOX", [(1, 1)], "Trash", move=True, limit=limit)  # no new bytes
        assert ix.status("Trash").messages == 1
        assert ix.usage() == limit
    ix.close()


def test_migration_from_the_previous_index_layout(tmp_path: Path) -> None:
    root = tmp_path / "m"
    ix = UserIndex(root)
    with ix.lock:
        for _ in range(3):
            ix.append("INBOX", BODY, (), None)
    ix.close()
    # The layout before this release: no usage table, no triggers, no version row.
    conn = db.connect(root / INDEX_FILE)
    for name in ("mailbox_usage_insert", "mailbox_usage_delete", "mailbox_usage_resize",
                 "mailbox_usage_drop"):  # fmt: skip
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE mailbox_usage")
    conn.execute("DELETE FROM schema_versions WHERE component = 'mailindex.quota'")
    conn.close()
    ix = UserIndex(root)
    with ix.lock:
        assert ix.usage() == 3 * len(BODY)
        ix.append("INBOX", BODY, (), None)
        assert ix.usage() == 4 * len(BODY)
    ix.close()


def test_accounts_quota_migrates_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "pillarbox.db"
    old = db.connect(path)
    from pillarbox.store.accounts import ADMIN_MIGRATIONS, MIGRATIONS

    db.migrate(old, "accounts", MIGRATIONS)
    db.migrate(old, "accounts.admin", ADMIN_MIGRATIONS)
    old.execute("INSERT INTO users VALUES ('bob@example.test', 'example.test', 'h', 0, 0)")
    old.close()
    accounts = Accounts(path, ["example.test"])
    assert accounts.own_quota("bob@example.test") is None
    assert accounts.quota_of("bob@example.test", 123) == 123
    accounts.set_quota("bob@example.test", 0)
    assert accounts.quota_of("bob@example.test", 123) == 0  # own 0: no limit
    accounts.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute(
            "SELECT version FROM schema_versions WHERE component = 'accounts.quota'"
        ).fetchone() == (1,)


def test_config_quota_sizes(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "a", {"store": {"quota": "500M"}})
    assert settings.store.quota == 500 * 1024 * 1024
    with pytest.raises(config.ConfigError, match=r"store\.quota"):
        pbserver.make_settings(tmp_path / "b", {"store": {"quota": "lots"}})


def test_cli_user_quota(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    cfg = str(settings.source)
    shown = pillarbox("--config", cfg, "user", "quota", ALICE)
    assert shown.returncode == 0 and "no limit (the default" in shown.stdout
    assert "2G (own)" in pillarbox("--config", cfg, "user", "quota", ALICE, "2G").stdout
    bad = pillarbox("--config", cfg, "user", "quota", ALICE, "lots")
    assert bad.returncode == 1 and "SIZE" in bad.stderr
    unknown = pillarbox("--config", cfg, "user", "quota", "nobody@example.test", "1M")
    assert unknown.returncode == 1 and "no such user" in unknown.stderr
    accounts = Accounts(settings.database_path, settings.domains)
    assert accounts.own_quota(ALICE) == 2 << 30
    accounts.close()
    ix = UserIndex(settings.mail_dir / "example.test" / "alice")
    with ix.lock:
        ix.append("INBOX", BODY, (), None)
    ix.close()
    shown = pillarbox("--config", cfg, "user", "quota", ALICE)
    assert shown.stdout.rstrip().endswith(f"({len(BODY)} bytes)"), shown.stdout


def _append(raw: Raw, tag: bytes, box: bytes, msg: bytes) -> list[bytes]:
    raw.send(b"%s APPEND %s {%d+}\r\n" % (tag, box, len(msg)) + msg + b"\r\n")
    return raw.until(tag)


def test_imap_quota_transcript(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"store": {"quota": "8K"}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        raw = Raw(server)
        try:
            raw.login()
            caps = raw.cmd(b"c", b"CAPABILITY")[0]
            assert b" QUOTA " in caps and b"QUOTA=RES-STORAGE" in caps
            assert b"QUOTASET" not in caps
            assert raw.cmd(b"q1", b"GETQUOTAROOT INBOX")[:2] == [
                b'* QUOTAROOT "INBOX" ""\r\n',
                b'* QUOTA "" (STORAGE 0 8)\r\n',
            ]
            assert _append(raw, b"a1", b"INBOX", BODY)[-1].startswith(b"a1 OK")
            assert _append(raw, b"a2", b"INBOX", BODY)[-1].startswith(b"a2 OK")
            kib = (2 * len(BODY) + 1023) // 1024
            assert raw.cmd(b"q2", b'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE %d 8)\r\n' % kib
            assert _append(raw, b"a3", b"INBOX", BODY)[-1].startswith(b"a3 NO [OVERQUOTA]")
            raw.cmd(b"s", b"SELECT INBOX")
            assert raw.cmd(b"cp", b"COPY 1 Archive")[-1].startswith(b"cp NO [OVERQUOTA]")
            assert raw.cmd(b"mv", b"MOVE 1 Trash")[-1].startswith(b"mv OK")
            raw.cmd(b"st", b"STORE 1 +FLAGS (\\Deleted)")
            status = raw.cmd(b"ds", b"STATUS INBOX (DELETED DELETED-STORAGE)")[0]
            assert status == b'* STATUS "INBOX" (DELETED 1 DELETED-STORAGE %d)\r\n' % len(BODY)
            assert raw.cmd(b"sq", b'SETQUOTA "" (STORAGE 99999)')[-1].startswith(b"sq NO [NOPERM]")
            assert raw.cmd(b"gq", b'GETQUOTA "other"')[-1].startswith(b"gq NO [NONEXISTENT]")
            assert raw.cmd(b"nr", b"GETQUOTAROOT Nowhere")[-1].startswith(b"nr NO")
        finally:
            raw.close()
        # The user's own "no limit" beats the default: no quota root at all. Set with the
        # CLI, which tells the running server (it remembers quotas as it does recipients).
        pillarbox("--config", str(settings.source), "user", "quota", ALICE, "0")
        raw = Raw(server)
        try:
            raw.login()
            assert raw.cmd(b"q", b"GETQUOTAROOT INBOX")[0] == b'* QUOTAROOT "INBOX"\r\n'
            assert _append(raw, b"a4", b"INBOX", BODY)[-1].startswith(b"a4 OK")
        finally:
            raw.close()


def test_smtp_full_mailbox_is_a_temporary_failure(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"store": {"quota": "8K"}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
            for _ in range(2):  # about 6.5 KiB stored with the trace fields
                smtp.sendmail("bob@example.org", [ALICE], BODY)
            # smtplib announces SIZE= (RFC 1870): the RCPT is refused, temporarily.
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail("bob@example.org", [ALICE], BODY)
            assert refused.value.recipients[ALICE][0] == 452
            assert refused.value.recipients[ALICE][1].startswith(b"4.2.2")
            # Without SIZE= the RCPT passes and the end of DATA says it.
            smtp.rset()
            assert smtp.mail("bob@example.org")[0] == 250
            assert smtp.rcpt(ALICE)[0] == 250
            code, text = smtp.data(BODY)
            assert (code, text[:5]) == (452, b"4.2.2")
        # Nothing more was stored. Asked over IMAP, not of the Maildir files, so that the
        # check holds on every mail store (the memory store has no files to count).
        with login(server) as client:
            assert client.status("INBOX", "(MESSAGES)")[1] == [b'"INBOX" (MESSAGES 2)']

"""The mailbox index moves from SQLite to PostgreSQL (``pillarbox.pgmail.importer``) and a
client sees every mailbox as it was: built over IMAP on the Maildir + SQLite store,
compared over IMAP (imapclient) on the PostgreSQL store, mailbox by mailbox: names,
attributes, subscriptions, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, every message's UID,
flags, MODSEQ, internal date and bytes. Two ways in: `pillarbox store migrate` (then the
config's backend), and the first open of a user by a server whose index is in PostgreSQL
(an install that ran on PostgreSQL before the index moved there). After the move MODSEQs
and UIDs carry on above the old ones and QRESYNC still reports what was expunged before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from pillarbox import config
from pillarbox.config import Settings
from pillarbox.store.maildir import user_maildir
from tests import imaphelp, pbserver

ALICE = imaphelp.ALICE
pytestmark = pytest.mark.on_disk  # the "before" is the Maildir + SQLite store

Snapshot = dict[str, Any]


def imap(server: pbserver.RunningServer) -> IMAPClient:
    return imaphelp.imapclient_login(server)


def snapshot(server: pbserver.RunningServer) -> Snapshot:
    """Everything a client can cache of alice's mail, by mailbox."""
    client = imap(server)
    try:
        boxes: Snapshot = {}
        for flags, _, name in client.list_folders():
            status = client.folder_status(
                name, [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"HIGHESTMODSEQ"]
            )
            client.select_folder(name, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["FLAGS", "MODSEQ", "INTERNALDATE", "BODY.PEEK[]"])
            messages = {
                uid: (
                    sorted(f for f in fetched[uid][b"FLAGS"] if f != b"\\Recent"),
                    fetched[uid][b"MODSEQ"][0],
                    fetched[uid][b"INTERNALDATE"],
                    fetched[uid][b"BODY[]"],
                )
                for uid in sorted(fetched)
            }
            boxes[name] = {"attributes": sorted(flags), "status": status, "messages": messages}
        subscribed = sorted(name for _, _, name in client.list_sub_folders())
        return {"mailboxes": boxes, "subscribed": subscribed}
    finally:
        client.logout()


def build_mail(server: pbserver.RunningServer) -> None:
    """Folders (nested, non-ASCII), flags and keywords, a flag change, an expunge (a gap
    in the UIDs), a COPY, a delivery and changed subscriptions."""
    client = imap(server)
    try:
        for name in ("Projects", "Projects/2026", "Résumé"):
            client.create_folder(name)
        flag_sets: list[list[bytes]] = [
            [], [b"\\Seen"], [b"\\Flagged", b"$Work"], [b"$Label1"], [b"\\Seen", b"\\Answered"],
        ]  # fmt: skip
        for number, flags in enumerate(flag_sets):
            body = imaphelp.message(f"inbox {number}", body=f"Message {number}.\r\n")
            client.append("INBOX", body, flags=flags)
        for number in range(3):
            client.append("Projects/2026", imaphelp.message(f"plan {number}"), flags=[b"\\Draft"])
        client.append("Résumé", imaphelp.message("cv", body="Über alles.\r\n"))
        client.select_folder("INBOX")
        client.add_flags([2], [b"\\Deleted"])
        client.expunge()
        client.add_flags([3], [b"$Later"])
        client.copy([1, 3], "Projects")
        client.unsubscribe_folder("Archive")
        client.subscribe_folder("Projects/2026")
    finally:
        client.logout()
    server.deliver(ALICE, "INBOX", imaphelp.message("delivered", body="By the store.\r\n"))


def drop_unindexed_file(settings: Settings) -> None:
    """A message another program left in INBOX's new/ while the server was stopped."""
    new = user_maildir(settings.mail_dir, ALICE) / "new"
    name = f"1700000000.M1P{os.getpid()}.elsewhere"
    (new / name).write_bytes(imaphelp.message("stray", body="Left in new/.\r\n"))


def store_migrate(settings: Settings, dsn: str) -> Settings:
    done = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "store",
         "migrate", "--to", "postgresql", "--dsn", dsn],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "mailbox index: 1 users, 9 mailboxes, 12 messages" in done.stdout, done.stdout
    raw = tomllib.loads(settings.source.read_text())
    raw = pbserver.merge(raw, {"store": {"backend": "postgresql", "dsn": dsn}})
    settings.source.write_text(pbserver.dump_toml(raw))
    return config.load(settings.source)


@pytest.mark.parametrize("way", ["store migrate", "first open"])
def test_every_mailbox_looks_the_same_over_imap_after_the_move(
    tmp_path: Path, pg_dsn: str, way: str
) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings, mail_store="maildir") as server:
        build_mail(server)
        before = snapshot(server)
    drop_unindexed_file(settings)

    if way == "store migrate":
        settings = store_migrate(settings, pg_dsn)
        running = pbserver.RunningServer(settings, mail_store="maildir")  # as the config says
    else:
        running = pbserver.RunningServer(settings, mail_store="postgresql")
    with running as server:
        after = snapshot(server)
        check_same_with_the_stray(before, after)
        check_changes_carry_on(server, before["mailboxes"]["INBOX"]["status"])


def check_same_with_the_stray(before: Snapshot, after: Snapshot) -> None:
    """Identical, but for INBOX's file from new/: the next UID, under a new MODSEQ."""
    inbox_before, inbox_after = before["mailboxes"]["INBOX"], after["mailboxes"]["INBOX"]
    status = inbox_before["status"]
    stray = inbox_after["messages"].pop(status[b"UIDNEXT"])
    assert b"Subject: stray" in stray[3] and stray[1] == status[b"HIGHESTMODSEQ"] + 1
    assert inbox_after["status"] == {
        **status,
        b"MESSAGES": status[b"MESSAGES"] + 1,
        b"UIDNEXT": status[b"UIDNEXT"] + 1,
        b"HIGHESTMODSEQ": status[b"HIGHESTMODSEQ"] + 1,
    }
    inbox_after["status"] = status
    assert after == before
    assert len(before["mailboxes"]) == 9 and 2 not in inbox_before["messages"]


def check_changes_carry_on(server: pbserver.RunningServer, old: dict[bytes, int]) -> None:
    """New MODSEQs and UIDs above the migrated ones; the expunge of UID 2 still known."""
    client = imap(server)
    try:
        client.select_folder("INBOX")
        changed = client.add_flags([1], [b"$After"])
        assert changed[1] and b"$After" in changed[1]
        modseq = client.fetch([1], ["MODSEQ"])[1][b"MODSEQ"][0]
        assert modseq > old[b"HIGHESTMODSEQ"] + 1
        appended = client.append("INBOX", imaphelp.message("after the move"))
        assert f"{old[b'UIDVALIDITY']} {old[b'UIDNEXT'] + 1}".encode() in appended
    finally:
        client.logout()
    raw = imaphelp.Raw(server)
    try:
        raw.login()
        raw.send(b"a ENABLE QRESYNC\r\n")
        raw.until(b"a")
        raw.send(b"b SELECT INBOX (QRESYNC (%d 1))\r\n" % old[b"UIDVALIDITY"])
        lines = raw.until(b"b")
        assert b"* VANISHED (EARLIER) 2\r\n" in lines, lines
    finally:
        raw.close()

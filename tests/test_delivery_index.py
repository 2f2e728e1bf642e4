"""Delivery indexes what it stores (``MailStore.deliver``): the row is in the user's index
when SMTP says 250, IDLE sessions are told, a Sieve ``fileinto`` lands in the folder IMAP
uses for that name, and the queue's own fallback delivers like local delivery."""

from __future__ import annotations

import json
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.store.index import INDEX_FILE
from pillarbox.store.sieve_scripts import SieveScripts
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import ALICE, TIMEOUT, Raw, message
from tests.mailfiles import maildir
from tests.queuehelpers import enqueue, queue_settings, wait_for


@pytest.fixture
def mx(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "mailauth": {"verify_inbound": False},
        },
    )
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        yield server


def send(server: pbserver.RunningServer, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
        smtp.sendmail("bob@example.org", [ALICE], data)


def _indexed_yet(root: Path) -> list[tuple[str, str, dict[str, object]]]:
    """``indexed`` while the index may still be in the making: the file exists before its
    first migration has created the tables, and a reader in between sees none."""
    if not (root / INDEX_FILE).exists():
        return []
    try:
        return indexed(root)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def indexed(root: Path) -> list[tuple[str, str, dict[str, object]]]:
    """(mailbox, file name, envelope) of every message row, read straight from the user's
    index file, read-only, as another process would."""
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT b.name, m.fname, d.envelope FROM messages m"
            " JOIN message_data d USING (mailbox_id, uid)"
            " JOIN mailboxes b ON b.id = m.mailbox_id ORDER BY m.uid"
        ).fetchall()
    finally:
        conn.close()
    return [(name, fname, json.loads(envelope)) for name, fname, envelope in rows]


def test_delivered_mail_has_its_index_row_before_any_imap_session(
    mx: pbserver.RunningServer,
) -> None:
    send(mx, message("indexed at delivery"))
    root = maildir(mx.settings, ALICE)
    # No IMAP or POP3 session ever ran: the row was written by the delivery itself, with
    # the parsed envelope, and the file moved to cur/ under the name the row records.
    ((mailbox, fname, envelope),) = indexed(root)
    assert mailbox == "INBOX"
    assert "indexed at delivery" in json.dumps(envelope)
    assert list((root / "new").iterdir()) == []
    assert [p.name for p in (root / "cur").iterdir()] == [fname]
    raw = Raw(mx)
    try:
        raw.login()
        assert b"* 1 EXISTS\r\n" in raw.cmd(b"s", b"SELECT INBOX")
        (fetched, _) = raw.cmd(b"f", b"UID FETCH 1:* (ENVELOPE)")
        assert b"indexed at delivery" in fetched
    finally:
        raw.close()
    assert [r[1] for r in indexed(root)] == [fname]  # SELECT found nothing left to index


def test_a_message_over_a_mebibyte_is_left_to_the_next_sync(mx: pbserver.RunningServer) -> None:
    """Parsing reads the whole message: a big one is indexed by the first session's sync,
    not by delivery, so SMTP's memory does not grow with the mail."""
    big = message("big one", ("y" * 76 + "\r\n") * 15_000)  # about 1.1 MiB
    send(mx, big)
    root = maildir(mx.settings, ALICE)
    assert len(list((root / "new").iterdir())) == 1
    assert not (root / INDEX_FILE).exists() or indexed(root) == []
    raw = Raw(mx)
    try:
        raw.login()
        assert b"* 1 EXISTS\r\n" in raw.cmd(b"s", b"SELECT INBOX")
    finally:
        raw.close()
    ((_, fname, envelope),) = indexed(root)
    assert "big one" in json.dumps(envelope)
    assert [p.name for p in (root / "cur").iterdir()] == [fname]


def test_sieve_fileinto_an_odd_folder_name_reaches_the_idle_session_on_it(
    mx: pbserver.RunningServer,
) -> None:
    # "." and "\" are escaped in the folder's directory, "&" is modified UTF-7 on the wire:
    # delivery must pick the very directory the IMAP server made for this name.
    scripts = SieveScripts(mx.settings.database_path)
    try:
        scripts.put(ALICE, "main", 'require "fileinto";\r\nfileinto "Lists/R&D v1.2 \\\\ x";\r\n')
        scripts.set_active(ALICE, "main")
    finally:
        scripts.close()
    wire = b'"Lists/R&-D v1.2 \\\\ x"'
    raw = Raw(mx)
    try:
        raw.login()
        assert raw.cmd(b"c", b"CREATE " + wire)[-1].startswith(b"c OK")
        assert raw.cmd(b"s", b"SELECT " + wire)[-1].startswith(b"s OK")
        raw.send(b"i IDLE\r\n")
        assert raw.line().startswith(b"+ ")
        send(mx, message("filed by sieve"))
        assert raw.line() == b"* 1 EXISTS\r\n"  # told while IDLE, about this folder
        raw.send(b"DONE\r\n")
        assert raw.until(b"i")[-1].startswith(b"i OK")
        (fetched, _) = raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[])")
        assert b"Subject: filed by sieve" in fetched
        assert b"Return-Path: <bob@example.org>\r\nDelivered-To: alice@example.test\r\n" in fetched
        assert b"* 0 EXISTS" in b"".join(raw.cmd(b"s2", b"SELECT INBOX"))
    finally:
        raw.close()
    root = maildir(mx.settings, ALICE)
    folders = sorted(p.name for p in root.iterdir() if p.name.startswith(".Lists."))
    assert folders == [".Lists.R&-D v1\\2e2 \\5c x"]  # one directory: IMAP's and delivery's
    assert [r[0] for r in indexed(root)] == ["Lists/R&D v1.2 \\ x"]


def test_queue_fallback_delivers_with_trace_fields_and_imap_sees_it(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    """Without a delivery service (the queue alone), a bounce goes through the mail store
    like any local delivery: Return-Path: <>, Delivered-To, indexed, visible over IMAP."""
    dns_server.set_zone("remote.test", {"@": {"MX": ["0 ."]}})  # null MX: bounces at once
    settings = queue_settings(tmp_path, dns_server.address, 9)
    with pbserver.RunningServer(settings) as running:
        running.server.ctx.services.delivery = None
        enqueue(running, ["bob@remote.test"])
        root = maildir(settings, ALICE)
        wait_for(lambda: _indexed_yet(root), what="indexed bounce")
        raw = Raw(running)
        try:
            raw.login()
            assert b"* 1 EXISTS\r\n" in raw.cmd(b"s", b"SELECT INBOX")
            (fetched, _) = raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[HEADER])")
        finally:
            raw.close()
    head = fetched.split(b"}\r\n", 1)[1]
    assert head.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.test\r\n")
    assert b"multipart/report" in head

"""Delivery indexes what it stores (``MailStore.deliver``): the row is in the user's index
when SMTP says 250, IDLE sessions are told, a Sieve ``fileinto`` lands in the folder IMAP
uses for that name, and the queue's own fallback delivers like local delivery."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import smtplib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.store.index import INDEX_FILE
from pillarbox.store.mailbox import MailStore
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import ALICE, TIMEOUT, Raw, message
from tests.mailfiles import maildir
from tests.queuehelpers import enqueue, queue_settings, wait_for
from tests.sievehelp import activate_script


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


def send(server: pbserver.RunningServer | pbserver.SubprocessServer, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
        smtp.sendmail("bob@example.org", [ALICE], data)


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


def _pending(root: Path) -> list[tuple[int, int, int]]:
    """(uid, sized, size) of the messages indexed but not parsed yet (store.lazyparse)."""
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT p.uid, p.sized, m.size FROM parse_pending p JOIN messages m"
            " USING (mailbox_id, uid) ORDER BY p.uid"
        ).fetchall()
    finally:
        conn.close()


def test_delivery_writes_the_small_row_and_the_first_session_parses_it(
    mx: pbserver.RunningServer,
) -> None:
    """At delivery only the small row is written (UID, flags, the CRLF size delivery
    knew): the 250 waits for no parse. What reads parsed columns parses first; the user's
    session parses the rest in the background, full-text rows included."""
    store = mx.server.ctx.services.mail_store
    assert isinstance(store, MailStore)
    store.parse_in_background = False  # the small rows stay as delivery wrote them
    send(mx, message("first, into a new index"))  # a new mailbox: cur/ is listed
    for n in range(3):
        send(mx, message(f"burst {n}", f"line {n}\r\n" * (n + 1)))
    root = maildir(mx.settings, ALICE)
    files = {p.name: p.read_bytes() for p in (root / "cur").iterdir()}
    pending = _pending(root)
    assert [uid for uid, _, _ in pending] == [2, 3, 4]
    by_size = sorted(len(data) for name, data in files.items() if "first" not in data.decode())
    assert all(sized == 1 for _, sized, _ in pending)
    assert sorted(size for _, _, size in pending) == by_size  # the exact CRLF sizes
    store.parse_in_background = True  # from the session's start on
    raw = Raw(mx)
    try:
        raw.login()
        assert b"* 4 EXISTS\r\n" in raw.cmd(b"s", b"SELECT INBOX")
        fetched = b"".join(raw.cmd(b"f", b"FETCH 2:4 (ENVELOPE RFC822.SIZE)"))
        for n in range(3):
            assert b'"burst %d"' % n in fetched
        sizes = [int(s) for s in re.findall(rb"RFC822.SIZE (\d+)", fetched)]
        assert sorted(sizes) == by_size
        wait_for(lambda: _pending(root) == [], what="the background parse")
        found = raw.cmd(b"b", b'SEARCH BODY "line 2"')
        assert found[0] == b"* SEARCH 4\r\n"
    finally:
        raw.close()
    assert len(indexed(root)) == 4


def test_a_burst_of_deliveries_is_parsed_soon_after_without_any_session(
    mx: pbserver.RunningServer,
) -> None:
    """Delivery leaves its messages unparsed only while the burst lasts: a moment after the
    last one (``PARSE_QUIET``) the background parses them, full-text rows included, with
    no IMAP or POP3 session to start it, so the first FETCH ENVELOPE reads parsed rows."""
    send(mx, message("first, into a new index"))
    root = maildir(mx.settings, ALICE)
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as smtp:
        for n in range(40):
            smtp.sendmail("bob@example.org", [ALICE], message(f"burst {n}", f"word{n}\r\n"))
    wait_for(lambda: _pending(root) == [], what="the parse after the burst")
    assert len(indexed(root)) == 41  # every message has its parsed row
    assert _fts_pending(root) == 0
    raw = Raw(mx)
    try:
        raw.login()
        raw.cmd(b"s", b"EXAMINE INBOX")
        assert raw.cmd(b"b", b"SEARCH BODY word39")[0] == b"* SEARCH 41\r\n"
    finally:
        raw.close()


def _fts_pending(root: Path) -> int:
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0])
    finally:
        conn.close()


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
    script = 'require "fileinto";\r\nfileinto "Lists/R&D v1.2 \\\\ x";\r\n'
    activate_script(mx.settings, ALICE, script)
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
        wait_for(lambda: _indexed_once_ready(root), what="indexed bounce")
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


def test_kill_9_between_the_file_and_its_row_indexes_it_once_with_a_fresh_uid(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    """The Maildir file is the commit point (see ``IndexWriter.take_delivered``): a server
    killed after the file is durable and before its row commits leaves the file in ``new/``,
    and the next start indexes it exactly once, with a UID no message had before."""
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "mailauth": {"verify_inbound": False},
        },
    )
    pbserver.add_user(settings, ALICE)
    root = maildir(settings, ALICE)
    server = pbserver.SubprocessServer(settings)
    lock: sqlite3.Connection | None = None
    try:
        for n in range(2):
            send(server, message(f"before {n}"))
        raw = Raw(server)
        try:
            raw.login()
            raw.cmd(b"s", b"SELECT INBOX")
            raw.cmd(b"d", b"UID STORE 2 +FLAGS.SILENT (\\Deleted)")
            assert raw.cmd(b"e", b"EXPUNGE")[-1].startswith(b"e OK")  # UID 2 is spent
        finally:
            raw.close()
        # The controlled point: the index's write lock is ours, so the delivery's file is
        # durable in new/ while its row waits for the lock; then the server dies.
        lock = sqlite3.connect(root / INDEX_FILE, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        sender = threading.Thread(target=_send_quietly, args=(server, message("in between")))
        sender.start()
        wait_for(lambda: _in_new(root, b"Subject: in between"), what="the file in new/")
        assert [subject for _, _, subject in _subjects(root, lock)] == ["before 0"]
    finally:
        server.stop(signal.SIGKILL)
        if lock is not None:
            lock.rollback()
            lock.close()
    sender.join(TIMEOUT)
    server = _restart(settings)
    try:
        raw = Raw(server)
        try:
            raw.login()
            for _ in range(2):  # a second sync finds nothing more to index
                assert b"* 2 EXISTS\r\n" in raw.cmd(b"s", b"SELECT INBOX")
            fetched = b"".join(raw.cmd(b"f", b"UID FETCH 1:* (ENVELOPE)"))
        finally:
            raw.close()
    finally:
        server.stop()
    assert re.findall(rb"UID (\d+) ENVELOPE", fetched) == [b"1", b"3"]
    assert fetched.count(b'"in between"') == 1
    assert [p.name for p in (root / "new").iterdir()] == []
    uidlist = (root / "dovecot-uidlist").read_text().splitlines()[1:]
    assert [line.split()[0] for line in uidlist] == ["1", "3"]


def _indexed_once_ready(root: Path) -> list[tuple[str, str, dict[str, object]]]:
    """``indexed(root)``, or [] while the index file is missing or still being created (the
    server makes the file, then its tables: a reader in between finds no tables)."""
    if not (root / INDEX_FILE).exists():
        return []
    try:
        return indexed(root)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return []


def _send_quietly(server: pbserver.SubprocessServer, data: bytes) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):  # killed under us
        send(server, data)


def _in_new(root: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in (root / "new").iterdir())


def _subjects(root: Path, conn: sqlite3.Connection) -> list[tuple[str, int, str]]:
    rows = conn.execute(
        "SELECT b.name, m.uid, d.envelope FROM messages m JOIN message_data d"
        " USING (mailbox_id, uid) JOIN mailboxes b ON b.id = m.mailbox_id ORDER BY m.uid"
    ).fetchall()
    return [(name, uid, json.loads(envelope)[1]) for name, uid, envelope in rows]


def _restart(settings: pbserver.Settings) -> pbserver.SubprocessServer:
    """A new ``pillarbox serve`` on the same data dir (the old log moved aside: the new
    server's ports are read from its own log)."""
    log = settings.data_dir / "serve.log"
    if log.exists():
        log.rename(settings.data_dir / "serve.killed.log")
    return pbserver.SubprocessServer(settings)

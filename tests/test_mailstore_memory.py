"""The in-memory store behind the real server (issue 18): what IMAP stores, POP3 and IMAP
read back, and nothing reaches the Maildir. The IMAP and POP3 suites run on it in full with
``PILLARBOX_TEST_MAILSTORE=memory`` (scripts/test runs a subset); this checks, in every
run, that the switch really swaps the store."""

from __future__ import annotations

import poplib
import smtplib
import ssl
from pathlib import Path

import pytest

from pillarbox.memstore.store import MemoryStore
from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.imaphelp import ALICE, Raw, message

TIMEOUT = 10


def _files(settings: pbserver.Settings) -> list[Path]:
    root = user_maildir(settings.mail_dir, ALICE)
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]


@pytest.fixture
def memory_server(tmp_path: Path) -> pbserver.RunningServer:
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    pbserver.add_user(settings, ALICE)
    server = pbserver.RunningServer(settings, mail_store="memory")
    assert isinstance(server.server.ctx.services.mail_store, MemoryStore)
    return server


def test_imap_append_smtp_delivery_and_pop3_share_the_memory_store(
    memory_server: pbserver.RunningServer,
) -> None:
    with memory_server as server:
        raw = Raw(server)
        try:
            raw.login()
            data = message("kept in memory", body="first\r\n")
            raw.send(b"a APPEND INBOX (\\Flagged) {%d+}\r\n%s\r\n" % (len(data), data))
            assert b"[APPENDUID " in raw.until(b"a")[-1]
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
                smtp.sendmail("bob@example.org", [ALICE], message("delivered", body="second\r\n"))
            lines = raw.cmd(b"s", b"SELECT INBOX")
            assert b"* 2 EXISTS\r\n" in lines
            fetched = raw.cmd(b"f", b"UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert b"\\Flagged" in fetched[0] and b"Subject: kept in memory" in fetched[0]
            assert b"Subject: delivered" in b"".join(fetched[1:])
        finally:
            raw.close()
        context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
        pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=context, timeout=TIMEOUT)
        try:
            pop.user(ALICE)
            pop.pass_(pbserver.PASSWORD)
            assert pop.stat()[0] == 2
            body = b"\r\n".join(pop.retr(2)[1])
            assert b"Return-Path: <bob@example.org>" in body  # the final delivery's trace
            assert b"second" in body
        finally:
            pop.quit()
        assert _files(server.settings) == []  # nothing went to the Maildir


SEARCHES = [
    b"UID SEARCH ALL",
    b"UID SEARCH UNSEEN",
    b"UID SEARCH FLAGGED NOT DELETED",
    b"UID SEARCH KEYWORD $work",
    b"UID SEARCH UNKEYWORD $Work",
    b"UID SEARCH LARGER 300",
    b"UID SEARCH SMALLER 300",
    b"UID SEARCH SINCE 2-Jan-2020",
    b"UID SEARCH BEFORE 2-Jan-2020",
    b"UID SEARCH ON 1-Jan-2020",
    b"UID SEARCH SENTSINCE 7-Feb-1994",
    b"UID SEARCH NOT SENTBEFORE 8-Feb-1994",
    b"UID SEARCH NOT SENTON 8-Feb-1994",
    b"UID SEARCH SUBJECT beta",
    b"UID SEARCH FROM carol",
    b"UID SEARCH HEADER X-Custom special",
    b"UID SEARCH BODY needle",
    b"UID SEARCH OR SEEN SUBJECT gamma",
    b"UID SEARCH MODSEQ 3",
    b"UID SEARCH 2:3 UNSEEN",
    b"UID SORT (SUBJECT) UTF-8 ALL",
]


def _transcript(server: pbserver.RunningServer) -> list[bytes]:
    """What one session sees of the same mail and the same commands."""
    raw = Raw(server)
    out: list[bytes] = []
    try:
        raw.login()
        no_date = b"From: carol@example.org\r\n\r\nno date\r\n"
        mails = [
            (b"(\\Seen)", b"01-Jan-2020", message("alpha", body="x" * 400)),
            (b"(\\Flagged $Work)", b"02-Jan-2020", message("beta", body="a needle")),
            (b"()", b"03-Jan-2020", message("gamma", X_Custom="Special")),
            (b"(\\Deleted \\Flagged)", b"04-Jan-2020", no_date),
        ]
        for i, (flags, day, data) in enumerate(mails):
            when = b'"%s 10:00:00 +0000"' % day
            raw.send(b"a%d APPEND INBOX %s %s {%d+}\r\n%s\r\n" % (i, flags, when, len(data), data))
            raw.until(b"a%d" % i)
        raw.cmd(b"e", b"ENABLE CONDSTORE")
        raw.cmd(b"s", b"SELECT INBOX")
        raw.cmd(b"t", b"UID STORE 1 +FLAGS.SILENT (\\Answered)")
        for n, command in enumerate(SEARCHES):
            out += raw.cmd(b"q%d" % n, command)
    finally:
        raw.close()
    return out


def test_search_answers_as_the_sqlite_store(
    tmp_path: Path, memory_server: pbserver.RunningServer
) -> None:
    settings = pbserver.make_settings(tmp_path / "disk")
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings, mail_store="maildir") as disk:
        expected = _transcript(disk)
    with memory_server as memory:
        got = _transcript(memory)
    assert [line for line in expected if line.startswith(b"* ")] != []
    assert got == expected

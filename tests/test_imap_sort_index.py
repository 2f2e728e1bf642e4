"""SORT from the index's key columns, and ENVELOPE from its stored wire form (issue 17).

The SQLite store answers SORT with one ``ORDER BY`` over keys written when a message is
parsed (``store/sortkeys.py``) and FETCH ENVELOPE from bytes rendered then
(``mime/imapwire.py``); the in-memory store has neither, so the IMAP layer computes the
keys and renders the envelope itself, the way every SORT and FETCH did before. On one
varied mailbox (RFC 2047 and 8-bit subjects, Re:/Fwd:/[blob] leaders, groups, quoted
display names, missing and broken Date:/From:/To:/Cc:, ties in every key) the two stores
must give byte-identical answers to every sort key, with and without REVERSE, several keys
at once, under a search, over a mailbox with gaps; and an index made before the key columns
and the wire envelopes existed is upgraded to the same answers.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from pillarbox.store.index import INDEX_FILE
from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.imaphelp import ALICE, Raw

KEYS = ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"]

# (header lines, internal date) per message; bodies differ in length (sizes tie in pairs).
FIXTURE: list[tuple[list[str], str]] = [
    (["From: Zed <zed@example.org>", "To: Amy <amy@x>", "Subject: Meeting",
      "Date: Thu, 01 Jan 2026 10:00:00 +0000"], "01-Jan-2026 10:00:00 +0000"),
    (["From: bob@example.org", "To: ben@x", "Cc: Carl <carl@x>", "Subject: Re: Meeting",
      "Date: Thu, 01 Jan 2026 13:00:00 +0200"], "01-Jan-2026 10:00:00 +0000"),
    (['From: "Doe, John" <john@example.org>', "Subject: =?utf-8?q?Caf=C3=A9?= time",
      "Date: not a date"], "02-Jan-2026 09:00:00 +0000"),
    (["From: =?iso-8859-1?q?J=F6rg?= <jorg@example.org>", "To: Friends: a@x, b@x;",
      "Subject: [list] Fwd: Lunch (fwd)", "Date: Fri, 02 Jan 2026 00:00:00 -0500"],
     "02-Jan-2026 09:00:00 +0000"),
    (["To: nobody@x", "Subject: no sender", "Date: Fri, 02 Jan 2026 05:00:00 +0000"],
     "03-Jan-2026 09:00:00 +0100"),
    (["From: <angle@example.org>", "Subject: RE: re: Fwd: hello  world",
      "Date: Sat, 03 Jan 2026 10:00:00"], "03-Jan-2026 08:00:00 +0000"),
    (["From: Ann <ann@example.org>", "To: Zoe <zoe@x>, Al <al@x>", "Cc: dave@x",
      "Subject: [fwd: Re: Lunch]", "Date: Sat, 3 Jan 26 10:00:00 +0000"],
     "04-Jan-2026 10:00:00 +0000"),
    (["From: Bob <bob@example.org>", "Subject: ",
      "Date: Sun, 04 Jan 2026 10:00:00 +0000"], "04-Jan-2026 10:00:00 +0000"),
    (["From: bob@example.org", "Subject: caf\xe9 8-bit", "Cc: =?utf-8?b?w4lsaXNl?= <el@x>",
      "Date: Mon, 05 Jan 2026 10:00:00 +0000"], "05-Jan-2026 10:00:00 +0000"),
    (["From: carol@example.org", "Subject: quotes \"and\" back\\slash",
      "Date: Mon, 05 Jan 2026 10:00:00 +0000"], "05-Jan-2026 10:00:00 +0000"),
    (["From: @@@", "To: undisclosed-recipients:;", "Subject: [only a blob]",
      "Date: Tue, 06 Jan 2026 10:00:00 +0000"], "06-Jan-2026 10:00:00 +0000"),
    (["From: Zed <zed@example.org>", "To: amy@x", "Subject: Re[2]: status",
      "Date: Tue, 06 Jan 2026 10:00:00 +0000", "Message-ID: <k@x>"],
     "06-Jan-2026 10:00:00 +0000"),
    (["From: Eve\t<eve@example.org>", "To: \"Amy\" <amy@x>", "Subject: tab\there",
      "Date: Wed, 07 Jan 2026 23:59:59 -1200"], "07-Jan-2026 10:00:00 +0000"),
    (["From: bob@example.org", "Subject: Meeting", "Date: Thu, 08 Jan 2026 10:00:00 +0000"],
     "07-Jan-2026 10:00:00 +0000"),
    (["From: Amy <AMY@example.org>", "To: ben@x", "Cc: carl@x", "Subject: status",
      "Date: Thu, 08 Jan 2026 10:00:00 +0000"], "08-Jan-2026 10:00:00 +0000"),
    (["Subject: Lunch", "Date: Fri, 09 Jan 2026 10:00:00 +0000 (UTC)"],
     "08-Jan-2026 10:00:00 +0000"),
]  # fmt: skip

SEARCH_SORTS = [
    b"SORT (DATE) UTF-8 NOT SUBJECT lunch",
    b"UID SORT (SUBJECT REVERSE ARRIVAL) UTF-8 OR FROM bob SUBJECT lunch",
    b"SORT (REVERSE SIZE) US-ASCII 3:9",
    b"SORT (FROM) UTF-8 SUBJECT nothing-matches",
    b"SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
    b"SORT (FROM SIZE) UTF-8 ALL",
    b"UID SORT (REVERSE ARRIVAL CC) UTF-8 ALL",
    b"SORT (DISPLAYTO REVERSE DISPLAYFROM SUBJECT) UTF-8 ALL",
    b"SORT (TO REVERSE CC DATE) UTF-8 ALL",
]


def fixture_messages() -> list[tuple[bytes, bytes]]:
    """(APPEND date-time, message) of the fixture; 8-bit text goes as UTF-8."""
    out = []
    for i, (lines, when) in enumerate(FIXTURE):
        header = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        size = 300 + 100 * (i // 2)  # messages 1-2, 3-4, ... tie in size
        data = header + b"x" * (size - len(header) - 2) + b"\r\n"
        out.append((when.encode(), data))
    return out


def _fill(raw: Raw, copies: int = 1) -> None:
    n = 0
    for _ in range(copies):
        for when, data in fixture_messages():
            flags = b"(\\Seen)" if n % 3 == 0 else b"()"
            raw.send(
                b'a%d APPEND INBOX %s "%s" {%d+}\r\n%s\r\n' % (n, flags, when, len(data), data)
            )
            assert raw.until(b"a%d" % n)[-1].startswith(b"a%d OK" % n)
            n += 1


def sort_commands() -> list[bytes]:
    out = []
    for key in KEYS:
        out += [
            b"SORT (%s) UTF-8 ALL" % key.encode(),
            b"UID SORT (REVERSE %s) UTF-8 ALL" % key.encode(),
        ]
    return out + SEARCH_SORTS


FETCHES = [
    b"FETCH 1:* (ENVELOPE)",
    b"UID FETCH 1:* (UID ENVELOPE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])",
    b"FETCH 1:* (BODYSTRUCTURE ENVELOPE RFC822.SIZE)",
    b"FETCH 2 (BODY.PEEK[1] BODY.PEEK[HEADER] RFC822.HEADER BODY)",
]


def transcript(server: pbserver.RunningServer, *, fill: bool = True) -> list[bytes]:
    """Every SORT and ENVELOPE answer of the fixture mailbox, plain and with UTF8=ACCEPT."""
    out: list[bytes] = []
    for utf8 in (False, True):
        raw = Raw(server)
        try:
            raw.login()
            if fill and not utf8:
                _fill(raw)
            if utf8:
                assert raw.cmd(b"e", b"ENABLE UTF8=ACCEPT")[-1].startswith(b"e OK")
            assert raw.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
            for n, command in enumerate(sort_commands() + FETCHES):
                lines = raw.cmd(b"q%d" % n, command)
                assert lines[-1].startswith(b"q%d OK" % n), (command, lines)
                out += lines
        finally:
            raw.close()
    return out


@pytest.fixture
def disk_server(tmp_path: Path) -> pbserver.RunningServer:
    settings = pbserver.make_settings(tmp_path / "disk")
    pbserver.add_user(settings, ALICE)
    return pbserver.RunningServer(settings, mail_store="maildir")


@pytest.fixture
def memory_server(tmp_path: Path) -> pbserver.RunningServer:
    settings = pbserver.make_settings(tmp_path / "memory")
    pbserver.add_user(settings, ALICE)
    return pbserver.RunningServer(settings, mail_store="memory")


def _numbers(lines: list[bytes]) -> list[int]:
    assert lines[0].startswith(b"* SORT"), lines
    return [int(n) for n in lines[0].split()[2:]]


def test_index_order_is_the_computed_order(
    disk_server: pbserver.RunningServer, memory_server: pbserver.RunningServer
) -> None:
    with disk_server as disk:
        expected = transcript(disk)
    with memory_server as memory:
        got = transcript(memory)
    assert got == expected
    sorts = [line for line in expected if line.startswith(b"* SORT")]
    assert len(sorts) == 2 * len(sort_commands())
    assert len(set(sorts)) > len(KEYS)  # the keys order differently: the test can fail


def test_each_key_and_reverse(disk_server: pbserver.RunningServer) -> None:
    """Pinned answers (RFC 5256 §3: ties by sequence number, REVERSE only of its key)."""
    with disk_server as disk:
        raw = Raw(disk)
        try:
            raw.login()
            _fill(raw)
            raw.cmd(b"s", b"SELECT INBOX")
            sort = {k: _numbers(raw.cmd(b"t", b"SORT (%s) UTF-8 ALL" % k.encode())) for k in KEYS}
            rev = {
                k: _numbers(raw.cmd(b"r", b"SORT (REVERSE %s) UTF-8 ALL" % k.encode()))
                for k in KEYS
            }
        finally:
            raw.close()
    # INTERNALDATEs and sizes tie in pairs (5's "+0100" is 08:00 UTC, before 6's 08:00).
    pairs_reversed = [15, 16, 13, 14, 11, 12, 9, 10, 7, 8, 5, 6, 3, 4, 1, 2]
    assert sort["ARRIVAL"] == sort["SIZE"] == list(range(1, 17))
    assert rev["ARRIVAL"] == rev["SIZE"] == pairs_reversed
    # UTC: 2 is 11:00, 4 and 5 tie at 05:00, 3's bad Date: is its INTERNALDATE (09:00,
    # §2.2), 6 has no zone (UTC) and ties with 7 (a two-digit year), 13 is 11:59:59 next day.
    assert sort["DATE"] == [1, 2, 4, 5, 3, 6, 7, 8, 9, 10, 11, 12, 14, 15, 13, 16]
    assert rev["DATE"] == [16, 13, 14, 15, 11, 12, 9, 10, 8, 6, 7, 3, 4, 5, 2, 1]
    # Local parts: none (5, 16) and "@@@" (11) first, AMY, ANGLE, ANN, BOB x4, CAROL, EVE,
    # JOHN, JORG (RFC 2047 name, plain address), ZED x2.
    assert sort["FROM"] == [5, 11, 16, 15, 6, 7, 2, 8, 9, 14, 10, 13, 3, 4, 1, 12]
    assert rev["FROM"] == [1, 12, 4, 3, 13, 10, 2, 8, 9, 14, 7, 6, 15, 5, 11, 16]
    # Display names (RFC 5957): "Doe, John" is DOE, JOHN; bob@example.org has none.
    assert sort["DISPLAYFROM"][:8] == [5, 11, 16, 15, 6, 7, 8, 2]
    assert sort["SUBJECT"][0] == 8  # the empty base subject


def test_sort_over_gaps_and_new_mail(disk_server: pbserver.RunningServer) -> None:
    """Many UID runs (the store's span-and-filter path) and mail the session has not seen."""
    with disk_server as disk:
        raw = Raw(disk)
        try:
            raw.login()
            _fill(raw, copies=5)  # 80 messages
            raw.cmd(b"s", b"SELECT INBOX")
            odd = b",".join(b"%d" % n for n in range(2, 81, 2))
            assert raw.cmd(b"d", b"STORE " + odd + b" +FLAGS.SILENT (\\Deleted)")[-1].startswith(
                b"d OK"
            )
            assert raw.cmd(b"x", b"EXPUNGE")[-1].startswith(b"x OK")
            by_subject = _numbers(raw.cmd(b"t", b"UID SORT (SUBJECT) UTF-8 ALL"))
            assert sorted(by_subject) == list(range(1, 81, 2))  # 40 runs of one UID each
            some = b",".join(b"%d" % n for n in range(1, 41, 5))  # sequence numbers
            by_date = _numbers(raw.cmd(b"u", b"SORT (REVERSE DATE) UTF-8 " + some))
            assert sorted(by_date) == list(range(1, 41, 5))
            other = Raw(disk)
            try:
                other.login()
                when, data = fixture_messages()[0]
                other.send(b'n APPEND INBOX "%s" {%d+}\r\n%s\r\n' % (when, len(data), data))
                assert other.until(b"n")[-1].startswith(b"n OK")
            finally:
                other.close()
            assert b"* 41 EXISTS\r\n" in raw.cmd(b"o", b"NOOP")
            by_arrival = _numbers(raw.cmd(b"v", b"UID SORT (ARRIVAL) UTF-8 ALL"))
            uids = [*range(1, 81, 2), 81]  # 81 is a copy of the first fixture message
            assert by_arrival == sorted(uids, key=lambda uid: (_arrival(uid), uid))
        finally:
            raw.close()


def test_rfc822_text_alone(
    disk_server: pbserver.RunningServer, memory_server: pbserver.RunningServer
) -> None:
    """RFC822.TEXT needs where the body starts (the parsed structure) and nothing else."""
    answers = []
    for running in (disk_server, memory_server):
        with running as server:
            raw = Raw(server)
            try:
                raw.login()
                _fill(raw)
                raw.cmd(b"s", b"SELECT INBOX")
                lines = raw.cmd(b"t", b"FETCH 2:3 (RFC822.TEXT)")
                assert lines[-1].startswith(b"t OK"), lines
                answers.append(lines)
            finally:
                raw.close()
    assert answers[0] == answers[1]
    assert answers[0][0].startswith(b"* 2 FETCH (RFC822.TEXT {") and b"xxxx" in answers[0][0]


def _arrival(uid: int) -> dt.datetime:
    """The APPEND date-time UID ``uid`` of the repeated fixture got."""
    return dt.datetime.strptime(FIXTURE[(uid - 1) % len(FIXTURE)][1], "%d-%b-%Y %H:%M:%S %z")


def _downgrade(index: Path) -> None:
    """Make the index what the release before the key columns and wire envelopes wrote
    (the schema of store/index.py's first migration)."""
    conn = sqlite3.connect(index)
    try:
        conn.execute("DROP TRIGGER message_sort_removed")
        conn.execute("DROP TABLE message_sort")  # with its indexes
        for name in ("internal_date", "size"):
            conn.execute(f"DROP INDEX messages_{name}")
            conn.execute(f"DROP INDEX messages_{name}_desc")
        # The old layout: a WITHOUT ROWID table without the wire envelope.
        conn.execute(
            "CREATE TABLE old_data (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
            " envelope TEXT NOT NULL, structure TEXT NOT NULL, header BLOB NOT NULL,"
            " PRIMARY KEY (mailbox_id, uid)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO old_data SELECT mailbox_id, uid, envelope, structure, header"
            " FROM message_data"
        )
        conn.execute("DROP TABLE message_data")
        conn.execute("ALTER TABLE old_data RENAME TO message_data")
        conn.execute(
            "DELETE FROM schema_versions"
            " WHERE component IN ('mailindex.sortkeys', 'mailindex.rows')"
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.on_disk
def test_an_older_index_is_upgraded(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings, mail_store="maildir") as server:
        before = transcript(server)
    index = user_maildir(settings.mail_dir, ALICE) / INDEX_FILE
    _downgrade(index)
    with pbserver.RunningServer(settings, mail_store="maildir") as server:
        after = transcript(server, fill=False)
    assert after == before
    conn = sqlite3.connect(index)
    try:
        count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert count == len(FIXTURE)
        assert conn.execute("SELECT count(*) FROM message_sort").fetchone()[0] == count
        wire = conn.execute(
            "SELECT count(*) FROM message_data WHERE imap_envelope IS NOT NULL"
        ).fetchone()[0]
        assert 0 < wire < count  # the 8-bit ones are rendered per session
    finally:
        conn.close()

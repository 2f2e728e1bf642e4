"""The first SELECT of a Maildir copied in from elsewhere answers before its files are
parsed (store.lazyparse), and every later answer equals the one of a fully parsed index.

Alice and Bob get the same 3,000 files (same names, contents and mtimes, the same
``dovecot-uidlist``). Bob's index is built before the server starts the eager way (every
file parsed as the SELECT finds it); Alice's is built by the server at her first SELECT,
which inserts only the small rows. Both are then asked the same things over IMAP and POP3,
and the answers must be byte for byte the same.
"""

from __future__ import annotations

import os
import poplib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.store import lazyparse
from pillarbox.store.index import INDEX_FILE, UserIndex
from pillarbox.store.mailbox import MailStore
from tests import pbserver
from tests.imaphelp import ALICE, BOB, TIMEOUT, Raw, tls_context
from tests.mailfiles import maildir
from tests.queuehelpers import wait_for

# Maildir files copied in and the SQLite index read directly
pytestmark = pytest.mark.on_disk

COUNT = 3000
REUSED = 300  # files dovecot-uidlist gives UIDs (a Maildir with a past): kept on rebuild
UIDVALIDITY = 1234567


def _message(i: int) -> bytes:
    """Message ``i``, with LF line ends for half of them (as Dovecot and mutt write), and
    some whose header block is hard to find: longer than one read, or no body at all."""
    date = "" if i % 11 == 0 else f"Date: {1 + i % 28} Mar 2021 10:{i % 60:02d}:00 +0000\n"
    head = (
        f"From: Sender {i % 23} <sender{i % 23}@example.org>\nTo: {ALICE}\n"
        f"Subject: report {i % 97} number {i}\n{date}Message-ID: <m{i}@example.org>\n"
    )
    if i % 50 == 7:  # a header block over 8 KB (store.lazyparse reads 8 KB at a time)
        head += "References:" + "".join(f" <ref{n}.{i}@example.org>\n" for n in range(400))
    if i % 4 == 3:
        head += 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'
        body = f"--b\nContent-Type: text/plain\n\npart one {i}\n--b\nContent-Type: text/html\n\n"
        body += f"<p>part two {'x' * (i % 300)}</p>\n--b--\n"
    else:
        body = f"body of {i}\n" + "line of text\n" * (i % 40)
    data = (head if i % 50 == 13 else head + "\n" + body).encode()  # 13: all header
    return data if i % 4 in (0, 1) else data.replace(b"\n", b"\r\n")


def _copied_in(root: Path) -> None:
    """3,000 files: ``,S=`` and ``,W=`` names, ``,S=`` only (on LF files, so the size in
    the name is not RFC822.SIZE), names with no size; a tenth in ``new/``; flags."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    uidlist = [f"3 V{UIDVALIDITY} N{COUNT + 5000}"]
    for i in range(COUNT):
        data = _message(i)
        base = f"{1_600_000_000 + i}.M{i}P1.copied"
        if i % 4 == 0:
            crlf = data.replace(b"\n", b"\r\n")
            base += f",S={len(data)},W={len(crlf)}"
        elif i % 4 == 1:
            base += f",S={len(data)}"
        if i < REUSED:
            uidlist.append(f"{5000 + i} :{base}")
        path = root / "new" / base if i % 10 == 0 else root / "cur" / f"{base}:2,{'S' * (i % 2)}"
        path.write_bytes(data)
        os.utime(path, (1_600_000_000 + i * 7, 1_600_000_000 + i * 7))
    (root / "dovecot-uidlist").write_text("\n".join(uidlist) + "\n")


def _count(root: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def sources(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """The copied-in Maildir, and the same with its eagerly built index (made once)."""
    root = tmp_path_factory.mktemp("lazy")
    _copied_in(root / "plain")
    shutil.copytree(root / "plain", root / "eager")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lazyparse, "INLINE_MAX", COUNT * 2)  # every file parsed at the SELECT
        index = UserIndex(root / "eager")
        index.select("INBOX", True)  # read-only: \Recent is left for the server's session
        assert index.conn.execute("SELECT count(*) FROM message_data").fetchone()[0] == COUNT
        index.close()
    return root / "plain", root / "eager"


@pytest.fixture
def twins(
    tmp_path: Path, sources: tuple[Path, Path]
) -> Iterator[tuple[pbserver.RunningServer, Path]]:
    settings = pbserver.make_settings(tmp_path / "data")
    for user in (ALICE, BOB):
        pbserver.add_user(settings, user)
    for user, source in zip((ALICE, BOB), sources, strict=True):
        root = maildir(settings, user)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root)  # copy2: same names, bytes and mtimes
    with pbserver.RunningServer(settings) as server:
        yield server, maildir(settings, ALICE)


def _store(server: pbserver.RunningServer) -> MailStore:
    store = server.server.ctx.services.mail_store
    assert isinstance(store, MailStore)
    return store


ASKED = [
    b"FETCH 1:40 (UID ENVELOPE RFC822.SIZE)",
    b"UID FETCH 1:* (RFC822.SIZE INTERNALDATE FLAGS)",
    b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT DATE)])",
    b"UID FETCH 2000:* (BODY.PEEK[HEADER]) (CHANGEDSINCE 1)",
    b"UID SEARCH FROM sender3@example.org",
    b'UID SEARCH SUBJECT "report 5 " SENTSINCE 10-Mar-2021',
    b"UID SEARCH LARGER 600 NOT SMALLER 200",
    b"UID SEARCH SENTBEFORE 5-Mar-2021",
    b'UID SEARCH BODY "part two"',
    b"UID SORT (FROM REVERSE SIZE) UTF-8 ALL",
    b"UID SORT (DATE) UTF-8 UNSEEN",
    b"UID THREAD ORDEREDSUBJECT UTF-8 SUBJECT report",
    b"STATUS INBOX (MESSAGES SIZE UIDNEXT)",
    b"GETQUOTAROOT INBOX",
    b"UID SEARCH HEADER References ref399.7@",
    b"UID SEARCH NOT SUBJECT number OR SENTON 2-Mar-2021 HEADER Message-ID m13@",
]
# Searches that read only header columns and sizes: no message is parsed in full for them.
HEADER_QUICK = {c for c in ASKED if c.startswith(b"UID SEARCH") and b"BODY" not in c}


@pytest.mark.parametrize("command", ASKED, ids=lambda c: c.decode()[:40])
def test_first_select_answers_unparsed_and_a_read_parses_what_it_needs(
    twins: tuple[pbserver.RunningServer, Path], command: bytes
) -> None:
    server, alice_root = twins
    _store(server).parse_in_background = False  # only the readers parse: seen exactly
    alice, bob = Raw(server), Raw(server)
    try:
        alice.login(ALICE)
        bob.login(BOB)
        mine, theirs = alice.cmd(b"s", b"SELECT INBOX"), bob.cmd(b"s", b"SELECT INBOX")
        # The SELECT answered with every message listed and none parsed, with the UIDs and
        # UIDVALIDITY the eager index gave (dovecot-uidlist's where it had them).
        assert b"* %d EXISTS\r\n" % COUNT in mine
        assert _count(alice_root, "parse_pending") == COUNT
        assert _count(alice_root, "message_data") == 0
        assert mine == theirs
        assert alice.cmd(b"c", command) == bob.cmd(b"c", command)
        if command.startswith(b"FETCH 1:40"):
            assert _count(alice_root, "parse_pending") == COUNT - 40  # those it answered for
        if command in HEADER_QUICK:
            # Answered from the header blocks alone: nothing was parsed in full.
            assert _count(alice_root, "message_data") == 0
            assert _count(alice_root, "parse_pending") == COUNT
    finally:
        alice.close()
        bob.close()


def test_dovecot_uidlist_uids_are_kept(twins: tuple[pbserver.RunningServer, Path]) -> None:
    server, _ = twins
    alice = Raw(server)
    try:
        alice.login(ALICE)
        alice.cmd(b"s", b"EXAMINE INBOX")
        found = alice.cmd(b"u", b"UID SEARCH UID 5000:5299")[0]
        assert (
            found == b"* SEARCH " + b" ".join(b"%d" % (5000 + i) for i in range(REUSED)) + b"\r\n"
        )
    finally:
        alice.close()


def test_pop3_sizes_are_measured_without_a_parse(
    twins: tuple[pbserver.RunningServer, Path],
) -> None:
    server, alice_root = twins
    _store(server).parse_in_background = False
    listings = []
    for user in (ALICE, BOB):
        client = poplib.POP3_SSL(
            "127.0.0.1", server.port("pop3s"), timeout=TIMEOUT, context=tls_context(server.settings)
        )
        try:
            client.user(user)
            client.pass_(pbserver.PASSWORD)
            listings.append((client.stat(), client.list()[1], client.uidl()[1]))
        finally:
            client.quit()
    assert listings[0] == listings[1]
    assert listings[0][0][0] == COUNT
    # LIST needed sizes only: they were read, the rest is still to parse.
    assert _count(alice_root, "parse_pending") == COUNT
    assert _count(alice_root, "message_data") == 0


@pytest.mark.parametrize(
    "first", [None, b'UID SEARCH SUBJECT "number 1"'], ids=["select only", "header search first"]
)
def test_the_background_parse_builds_what_an_eager_index_has(
    twins: tuple[pbserver.RunningServer, Path], first: bytes | None
) -> None:
    server, alice_root = twins
    alice = Raw(server)
    try:
        alice.login(ALICE)
        assert b"* %d EXISTS\r\n" % COUNT in alice.cmd(b"s", b"SELECT INBOX")
        if first is not None:  # the quick header parse first, the full one after it
            alice.cmd(b"q", first)
        # No command needs a parsed column: the background job parses every message, and
        # writes its full-text row with it.
        wait_for(lambda: _count(alice_root, "parse_pending") == 0, what="the background parse")
        wait_for(lambda: _count(alice_root, "fts_pending") == 0, what="the full-text rows")
    finally:
        alice.close()
    bob_root = maildir(server.settings, BOB)
    for query in (
        "SELECT uid, flags, keywords, modseq, internal_date, size, sent_date, base, fname"
        " FROM messages ORDER BY uid",
        "SELECT uid, envelope, structure, header FROM message_data ORDER BY uid",
        "SELECT uid, text FROM message_search ORDER BY uid",
        "SELECT bytes, messages FROM mailbox_usage WHERE messages > 0",
    ):
        assert _rows(alice_root, query) == _rows(bob_root, query), query
    assert _count(alice_root, "message_fts") == COUNT


def _rows(root: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(query)]
    finally:
        conn.close()

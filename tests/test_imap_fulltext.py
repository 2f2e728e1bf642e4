"""SEARCH BODY/TEXT with the full-text index answers exactly what reading every message does.

The fixture has the encodings a user's mail has: quoted-printable and base64, UTF-8 and
ISO-8859-1, an HTML alternative, RFC 2047 header words, an attached message, a binary
attachment whose bytes must not match. Every search is run with the index complete, while it
is only partly built (the rest scanned), and without it; the answers must be the same, and
for the needles below they are also written out by hand.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import shutil
import smtplib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imapclient import IMAPClient

from pillarbox.imap.search import Context, matches, run_search
from pillarbox.imap.searchkeys import (
    AndKey,
    BodyKey,
    FlagKey,
    HeaderKey,
    NotKey,
    OrKey,
    SearchKey,
    TextKey,
)
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.store.index import INDEX_FILE, UserIndex
from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import ALICE, TIMEOUT, tls_context
from tests.test_imap_search_pushdown import AsyncIndex

HEAD = (
    "From: Bob <bob@example.org>\r\nTo: alice@example.test\r\n"
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
)

pytestmark = pytest.mark.on_disk  # the SQLite full-text index itself


def _msg(subject: str, rest: str) -> bytes:
    return (HEAD + f"Subject: {subject}\r\nMIME-Version: 1.0\r\n" + rest).encode("latin-1")


_B64 = base64.encodebytes("Grüße aus München: the quarterly REPORT.\n".encode()).decode()
_PDF = base64.encodebytes(b"%PDF-1.4 SECRETWORD hidden in a binary attachment").decode()
CORPUS: list[bytes] = [
    # 1: quoted-printable UTF-8 (RFC 2045 §6.7), a soft line break inside a word
    _msg(
        "menu",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        "\r\n\r\nCaf=C3=A9 cr=C3=A8me, Stra=C3=9Fe 12. Lunch at no=\r\non.\r\n",
    ),
    # 2: base64 UTF-8
    _msg(
        "greetings",
        "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + _B64.replace("\n", "\r\n"),
    ),
    # 3: ISO-8859-1, quoted-printable
    _msg(
        "hola",
        "Content-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        'Ol=E9 se=F1or, say "hi". Rate 5*3? [ok]\r\n',
    ),
    # 4: multipart/alternative, plain and HTML
    _msg(
        "newsletter",
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n--b1\r\n'
        "Content-Type: text/plain\r\n\r\nBold offer inside\r\n--b1\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n<p><b>Bold</b> offer &amp; more</p>\r\n"
        "--b1--\r\n",
    ),
    # 5: a text part and a base64 PDF whose bytes are not text
    _msg(
        "contract",
        'Content-Type: multipart/mixed; boundary="b2"\r\n\r\n--b2\r\n'
        "Content-Type: text/plain\r\n\r\nSee the attached contract.\r\n--b2\r\n"
        "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + _PDF.replace("\n", "\r\n")
        + "--b2--\r\n",
    ),
    # 6: an RFC 2047 subject (found by TEXT, not BODY)
    _msg("=?UTF-8?B?w5xiZXJ3ZWlzdW5n?= erhalten", "\r\nPlain body, nothing special.\r\n"),
    # 7: a forwarded message (its header is body text of the outer one)
    _msg(
        "Fwd: minutes",
        'Content-Type: multipart/mixed; boundary="b3"\r\n\r\n--b3\r\n'
        "Content-Type: text/plain\r\n\r\nForwarding this.\r\n--b3\r\n"
        "Content-Type: message/rfc822\r\n\r\nFrom: carol@example.net\r\n"
        "Subject: Board minutes Q3\r\n\r\nThe board met.\r\n--b3--\r\n",
    ),
    # 8: plain ASCII, no MIME header
    (HEAD + "Subject: ab\r\n\r\nab xy report of the day\r\n").encode(),
]
# needle -> (BODY matches, TEXT matches), 1-based positions in CORPUS, worked out by hand.
EXPECTED: dict[str, tuple[set[int], set[int]]] = {
    "café": ({1}, {1}),
    "CAFÉ CRÈME": ({1}, {1}),
    "strasse": ({1}, {1}),  # "Straße".casefold()
    "noon": ({1}, {1}),  # across the QP soft line break
    "grüße aus": ({2}, {2}),
    "münchen": ({2}, {2}),
    "report": ({2, 8}, {2, 8}),
    "olé señor": ({3}, {3}),
    '"hi"': ({3}, {3}),
    # GLOB's wildcards are plain characters in a needle
    "5*3?": ({3}, {3}),
    "*3? [": ({3}, {3}),
    "[ok]": ({3}, {3}),
    "5?3": (set(), set()),
    "[*]": (set(), set()),
    "<b>bold</b>": ({4}, {4}),
    "&amp;": ({4}, {4}),
    "bold": ({4}, {4}),
    "secretword": (set(), set()),
    "überweisung": (set(), {6}),
    "subject: menu": (set(), {1}),
    "board minutes": ({7}, {7}),
    "carol@example.net": ({7}, {7}),
    "bob@example.org": (set(), set(range(1, 9))),
    # Two characters, below the trigram index: scanned ("quoted-printable" in 1 and 3).
    "ab": ({8}, {1, 3, 8}),
    "é": ({1, 3}, {1, 3}),
    "": (set(range(1, 9)), set(range(1, 9))),
    "zzz-not-there": (set(), set()),
}


# --- the index and the scan agree (store level, random programs) -------------------------


def _fill(index: UserIndex) -> SelectedMailbox:
    for data in CORPUS:
        index.append("INBOX", data, (), None)
    return SelectedMailbox("INBOX", False, index.select("INBOX", False))


def _pending(index: UserIndex) -> int:
    return int(index.conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0])


class StoppedBeforeCatchUp(AsyncIndex):
    """The store as it is when the server stops before a search's catch-up could index
    anything (``MailStore.closing``): what is pending must then be read and scanned."""

    async def full_text_catch_up(self, name: str) -> None:
        return None


def _partly_built(path: Path) -> tuple[UserIndex, SelectedMailbox]:
    """An index made without full text (as before the migration, or switched off) has every
    message pending; re-opened with it, two backfill chunks leave half of them to do."""
    off = UserIndex(path, full_text=False)
    _fill(off)
    off.close()
    index = UserIndex(path)
    assert index.backfill_wanted and _pending(index) == len(CORPUS)
    cursor = index.backfill_full_text((0, 0), 2)
    index.backfill_full_text(cursor or (0, 0), 2)
    assert _pending(index) == len(CORPUS) - 4
    return index, SelectedMailbox("INBOX", False, index.select("INBOX", False))


State = tuple[UserIndex, SelectedMailbox, type[AsyncIndex]]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, State]:
    """The same mail with full text complete, partly built (scanned; or caught up by the
    first search), and switched off."""
    base = tmp_path_factory.mktemp("fts")
    full = UserIndex(base / "full")
    full_view = _fill(full)
    assert _pending(full) == 0  # APPEND indexes at once
    shutil.copytree(base / "full", base / "off")
    disabled = UserIndex(base / "off", full_text=False)
    off_view = SelectedMailbox("INBOX", False, disabled.select("INBOX", False))
    return {
        "complete": (full, full_view, AsyncIndex),
        "partial": (*_partly_built(base / "partial"), StoppedBeforeCatchUp),
        "caught-up": (*_partly_built(base / "caught-up"), AsyncIndex),
        "off": (disabled, off_view, AsyncIndex),
    }


def _scan(index: UserIndex, view: SelectedMailbox, key: SearchKey) -> list[int]:
    """Every message read and matched in Python: the reference answer."""
    ctx = Context(view, None, time.time())
    found = []
    for row in index.search_rows("INBOX", 1, 2**32 - 1, header=True, where=None):
        ctx.seq = view.seq_of(row[0]) or 0
        ctx.content = index.read_message("INBOX", row[0])
        ctx.texts = None
        if matches(key, row, ctx):
            found.append(row[0])
    return found


def _search(
    index: UserIndex,
    view: SelectedMailbox,
    key: SearchKey,
    store: type[AsyncIndex] = AsyncIndex,
) -> list[int]:
    uids, _, _ = asyncio.run(run_search(store(index), view, key, None))  # type: ignore[arg-type]
    return uids


@pytest.mark.parametrize("state", ["complete", "partial", "caught-up", "off"])
@pytest.mark.parametrize("needle", list(EXPECTED))
def test_body_and_text_match_the_hand_worked_answer(
    states: dict[str, State], state: str, needle: str
) -> None:
    index, view, store = states[state]
    body, text = EXPECTED[needle]
    assert set(_search(index, view, BodyKey(needle), store)) == body
    assert set(_search(index, view, TextKey(needle), store)) == text
    everything_else = sorted(set(range(1, 9)) - body)
    assert _search(index, view, NotKey(BodyKey(needle)), store) == everything_else


leaf: st.SearchStrategy[SearchKey] = st.one_of(
    st.builds(BodyKey, st.sampled_from(list(EXPECTED))),
    st.builds(TextKey, st.sampled_from(list(EXPECTED))),
    st.builds(HeaderKey, st.just("Subject"), st.sampled_from(["menu", "ab", "minutes"])),
    st.builds(FlagKey, st.just("\\Seen"), st.booleans()),
)
programs = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(NotKey, inner),
        st.builds(OrKey, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda k: AndKey(tuple(k))),
    ),
    max_leaves=5,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=programs)
def test_every_state_agrees_with_the_scan(states: dict[str, State], key: SearchKey) -> None:
    reference = _scan(*states["off"][:2], key)
    for index, view, store in states.values():
        assert _search(index, view, key, store) == reference


# --- over IMAP, against the real server ---------------------------------------------------


def _server_settings(path: Path, dns: DnsTestServer, full_text: bool) -> Any:
    settings = pbserver.make_settings(
        path,
        {
            "dns": {"nameservers": [dns.address], "timeout": 1.0},
            "mailauth": {"verify_inbound": False},
            "store": {"full_text_index": full_text},
        },
    )
    pbserver.add_user(settings, ALICE)
    return settings


def _client(server: pbserver.RunningServer) -> IMAPClient:
    client = IMAPClient(
        "127.0.0.1", server.port("imaps"), ssl_context=tls_context(server.settings),
        timeout=TIMEOUT,
    )  # fmt: skip
    client.login(ALICE, pbserver.PASSWORD)
    return client


def _sent_bare(needle: str) -> bool:
    """imapclient sends a needle without space or quote as an atom, and ``*``/``]`` are not
    atom characters (RFC 9051 §9): those needles go through imaplib, quoted, below."""
    return not any(c in needle for c in ' "\\') and any(c in needle for c in "*]")


def _answers(client: IMAPClient, folder: str) -> dict[tuple[str, str], list[int]]:
    client.select_folder(folder)
    out = {}
    for needle in filter(lambda n: not _sent_bare(n), EXPECTED):
        for key in ("BODY", "TEXT"):
            out[key, needle] = sorted(client.search([key, needle], charset="UTF-8"))
    return out


def _expected(uids: list[int]) -> dict[tuple[str, str], list[int]]:
    """EXPECTED in terms of the UIDs the corpus got (None for a message no longer there)."""
    out = {}
    for needle, (body, text) in EXPECTED.items():
        if _sent_bare(needle):
            continue
        for key, positions in (("BODY", body), ("TEXT", text)):
            out[key, needle] = sorted(uids[p - 1] for p in positions if uids[p - 1])
    return out


def _index_counts(settings: Any) -> tuple[int, int]:
    """(messages in the full-text index, messages pending) of alice, read from outside."""
    path = user_maildir(settings.mail_dir, ALICE) / INDEX_FILE
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        indexed = conn.execute("SELECT count(*) FROM message_fts").fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0]
        return int(indexed), int(pending)
    finally:
        conn.close()


@pytest.mark.parametrize("full_text", [True, False])
def test_imap_search_through_append_copy_move_expunge_restart_and_delivery(
    tmp_path: Path, dns_server: DnsTestServer, full_text: bool
) -> None:
    settings = _server_settings(tmp_path / "data", dns_server, full_text)
    with pbserver.RunningServer(settings) as server:
        client = _client(server)
        for data in CORPUS:
            client.append("INBOX", data)
        client.select_folder("INBOX")
        uids = sorted(client.search(["ALL"]))
        assert _answers(client, "INBOX") == _expected(uids)
        if full_text:
            assert _index_counts(settings) == (len(CORPUS), 0)
        client.create_folder("Work")
        client.copy(uids[:4], "Work")
        client.move(uids[4:6], "Work")
        moved = [*uids[:4], 0, 0, *uids[6:]]
        assert _answers(client, "INBOX") == _expected(moved)
        client.select_folder("Work")
        work_uids = sorted(client.search(["ALL"]))
        assert _answers(client, "Work") == _expected([*work_uids, 0, 0])
        client.select_folder("INBOX")
        client.delete_messages([uids[0], uids[7]])
        client.expunge()
        gone = [0, *uids[1:4], 0, 0, uids[6], 0]
        assert _answers(client, "INBOX") == _expected(gone)
        client.logout()
    if full_text:  # copies carry their text; expunged and moved-away ones left the index
        assert _index_counts(settings) == (len(CORPUS) + 2, 0)
    with pbserver.RunningServer(settings) as server:
        client = _client(server)
        assert _answers(client, "INBOX") == _expected(gone)
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
            smtp.sendmail("bob@example.org", [ALICE], CORPUS[0])
        client.select_folder("INBOX")
        delivered = max(client.search(["ALL"]))
        assert _answers(client, "INBOX") == _expected([delivered, *gone[1:]])
        client.logout()
    if full_text:  # delivery was indexed when the session picked it up
        assert _index_counts(settings) == (len(CORPUS) + 3, 0)


def test_a_copied_in_maildir_is_backfilled_and_exact_before_and_after(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    """A Maildir copied in (bigger than what is indexed inline) is answered exactly at once,
    by scanning what is not indexed yet, and by the index once the backfill is done."""
    settings = _server_settings(tmp_path / "data", dns_server, True)
    cur = user_maildir(settings.mail_dir, ALICE) / "cur"
    cur.mkdir(parents=True)
    copies = 150
    for i in range(copies):
        for j, data in enumerate(CORPUS):
            (cur / f"{1700000000 + i:010d}.M{j}P1.old:2,S").write_bytes(data)
    total = copies * len(CORPUS)
    with pbserver.RunningServer(settings) as server:
        client = _client(server)
        client.select_folder("INBOX")
        # The first search may overlap the backfill: whatever it finds must be exact.
        first = sorted(client.search(["BODY", "münchen"], charset="UTF-8"))
        every = sorted(client.search(["ALL"]))
        assert len(every) == total
        # Files sort by name: i-th copy, j-th message; UIDs follow that order.
        expected = [uid for n, uid in enumerate(every) if n % len(CORPUS) == 1]
        assert first == expected
        client.logout()  # the backfill goes on without a session
        deadline = time.monotonic() + 60
        while _index_counts(settings) != (total, 0):
            assert time.monotonic() < deadline, _index_counts(settings)
            time.sleep(0.2)
        client = _client(server)
        client.select_folder("INBOX")
        assert sorted(client.search(["BODY", "münchen"], charset="UTF-8")) == expected
        assert sorted(client.search(["TEXT", "überweisung"], charset="UTF-8")) == [
            uid for n, uid in enumerate(every) if n % len(CORPUS) == 5
        ]
        client.logout()


def test_imaplib_text_search_with_a_quote_in_the_needle(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    """The needle reaches SQLite as a GLOB pattern: its quotes, ``*``, ``?`` and ``[`` are
    plain characters."""
    settings = _server_settings(tmp_path / "data", dns_server, True)
    with pbserver.RunningServer(settings) as server:
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", server.port("imaps"), ssl_context=tls_context(settings), timeout=TIMEOUT
        )
        client.login(ALICE, pbserver.PASSWORD)
        client.append("INBOX", None, None, CORPUS[2])
        client.select("INBOX")
        typ, data = client.uid("SEARCH", "BODY", '"say \\"hi\\""')
        assert typ == "OK" and data == [b"1"]
        typ, data = client.uid("SEARCH", "BODY", '"\\"hi\\" ("')
        assert typ == "OK" and data == [b""]
        for needle, found in (("5*3? [ok]", b"1"), ("[ok]", b"1"), ("5?3", b""), ("[*]", b"")):
            typ, data = client.uid("SEARCH", "TEXT", f'"{needle}"')
            assert typ == "OK" and data == [found], needle
        client.logout()


def test_a_complete_index_answers_without_reading_files(tmp_path: Path) -> None:
    """Proof that the index, not a scan, answered: with the message file gone behind the
    index's back, the index still finds it and the scan cannot."""
    index = UserIndex(tmp_path / "u")
    view = _fill(index)
    for path in (tmp_path / "u" / "cur").iterdir():
        path.unlink()
    assert _search(index, view, BodyKey("münchen")) == [2]
    assert _search(index, view, TextKey("board minutes")) == [7]
    assert _search(index, view, BodyKey("ab")) == []  # short needle: scanned, files gone
    index.full_text = False
    assert _search(index, view, BodyKey("münchen")) == []


def test_an_index_from_before_full_text_is_migrated_and_backfilled(tmp_path: Path) -> None:
    """An index written by a release without full text gets the tables on open, with every
    message pending; searches are exact before, during and after the catch-up."""
    index = UserIndex(tmp_path / "u")
    _fill(index)
    with index.conn:
        for statement in (
            "DROP TRIGGER fts_message_added",
            "DROP TRIGGER fts_message_removed",
            "DROP TABLE message_fts",
            "DROP TABLE fts_pending",
            "DELETE FROM schema_versions WHERE component = 'mailindex.fts'",
        ):
            index.conn.execute(statement)
    index.close()
    index = UserIndex(tmp_path / "u")
    assert index.backfill_wanted and _pending(index) == len(CORPUS)
    view = SelectedMailbox("INBOX", False, index.select("INBOX", False))
    key = OrKey(BodyKey("münchen"), TextKey("überweisung"))
    assert _search(index, view, key, StoppedBeforeCatchUp) == [2, 6]  # all scanned
    assert _pending(index) == len(CORPUS)
    assert _search(index, view, key) == [2, 6]  # the search had the index caught up
    assert _pending(index) == 0
    index.full_text = False
    assert _search(index, view, key) == [2, 6]
    index.close()


def test_rename_keeps_and_delete_drops_the_indexed_text(tmp_path: Path) -> None:
    index = UserIndex(tmp_path / "u")
    _fill(index)
    index.create("Old")
    index.copy("INBOX", [(1, 8)], "Old", move=False)
    index.rename("Old", "New")
    view = SelectedMailbox("New", False, index.select("New", False))
    assert _search(index, view, BodyKey("münchen")) == [2]
    assert _pending(index) == 0
    fts_rows = "SELECT count(*) FROM message_fts"
    assert index.conn.execute(fts_rows).fetchone()[0] == 2 * len(CORPUS)
    index.delete("New")
    assert index.conn.execute(fts_rows).fetchone()[0] == len(CORPUS)
    index.rename("INBOX", "Moved")  # RFC 9051 §6.3.6: INBOX's mail moves, INBOX stays
    view = SelectedMailbox("Moved", False, index.select("Moved", False))
    assert _search(index, view, TextKey("überweisung")) == [6]
    assert index.conn.execute(fts_rows).fetchone()[0] == len(CORPUS)
    assert _pending(index) == 0
    index.close()


def test_the_backfill_finishes_after_the_last_session_is_gone(tmp_path: Path) -> None:
    """The store's background backfill keeps the index open: a user who logs out at once
    still gets the whole mailbox indexed, and the index closes when it is done."""
    from pillarbox.store.mailbox import MailStore

    root = user_maildir(tmp_path / "mail", ALICE)
    before = UserIndex(root, full_text=False)
    for _ in range(30):
        _fill(before)
    before.close()

    async def scenario() -> tuple[bool, bool]:
        store = MailStore(tmp_path / "mail")
        # No linger after the last session (it would keep the index open on its own): what
        # keeps it open here must be the backfill alone.
        store.session_linger = 0
        handle = await store.open(ALICE)  # starts the backfill (every message pending)
        index = handle._index
        await handle.release()  # the only session leaves before the backfill's first chunk
        closed_at_logout = index.closed
        if store._tasks:
            await asyncio.wait(list(store._tasks), timeout=60)
        closed_after = index.closed
        await store.close()
        return closed_at_logout, closed_after

    closed_at_logout, closed_after = asyncio.run(scenario())
    assert not closed_at_logout and closed_after
    after = UserIndex(root)
    assert _pending(after) == 0
    assert after.conn.execute("SELECT count(*) FROM message_fts").fetchone()[0] == 30 * 8
    after.close()

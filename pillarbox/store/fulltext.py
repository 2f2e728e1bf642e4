"""The full-text index behind SEARCH BODY and TEXT: SQLite FTS5 with the trigram tokenizer.

IMAP SEARCH BODY/TEXT is a case-insensitive *substring* match (RFC 9051 §6.4.4), not a
word match, so the index is FTS5's trigram tokenizer: every three-character window of the
text is a token. A search is ``body GLOB '*needle*'`` (wildcards in the needle escaped):
FTS5 looks the needle's trigrams up to find candidate rows and SQLite then checks the GLOB
against the stored text, so the answer is exact. We store the text already case-folded with
Python's ``str.casefold`` (``mime.text.search_texts``, the same function the scan uses) and
create the tokenizer ``case_sensitive 1`` (GLOB is case-sensitive): SQLite's own folding is
simpler than Unicode full case folding (``ß`` stays ``ß``), and the index must answer
exactly what the scan answers. An indexed answer is never re-checked against the message
file; only needles shorter than three characters and messages not yet indexed are scanned.

Size: ``detail=column`` keeps which column a trigram is in but not its positions (the GLOB
check on the stored text makes positions unnecessary): measured on 4 KB messages with
about 3 KB of text, 5.4 KB per message, against 9.9 KB with full positions.

Layout (component ``mailindex.fts`` of the index database, its own migration list so that
other features' steps never collide with it):

- ``message_fts(body, header)``: one row per message, rowid ``mailbox_id << 32 | uid``
  (UIDs are 32-bit, RFC 9051 §2.3.1.1), so a mailbox is one rowid range.
- ``fts_pending(mailbox_id, uid)``: messages not indexed yet. Triggers on ``messages`` add a
  row for every message inserted, by whatever path, and remove both rows when a message
  row goes (expunge, MOVE, mailbox deletion): the index can lag, never lie.

New mail (delivery picked up by a sync, APPEND, COPY/MOVE) is indexed in the transaction that
adds it; a large batch (a Maildir copied in, a rebuilt index, an index from before this
migration) is left pending for :func:`backfill`, which the store runs in the background,
a chunk at a time. A body search of a mailbox with pending messages first indexes them
(:func:`backfill` restricted to that mailbox: reading them for the search would cost as
much); anything still pending then (a file renamed behind the index's back, a server
stopping) passes the filter as "matches in the index or not yet indexed" and the IMAP side
reads and checks it, so the answer stays exact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from pillarbox import mime
from pillarbox.mime.text import search_texts
from pillarbox.store.names import BadMailboxName, folder_dir

COMPONENT: Final = "mailindex.fts"
INSERT_TRIGGER: Final = "fts_message_added"  # see pend_batch
MIN_NEEDLE: Final = 3  # the trigram tokenizer cannot look up anything shorter
INLINE_MAX: Final = 200  # a batch of new messages up to this size is indexed at once
UID_BITS: Final = 32

# rowid of the message row m (SQL); the same arithmetic as rowid() below.
ROWID_SQL: Final = "((m.mailbox_id << 32) | m.uid)"


def rowid(mailbox_id: int, uid: int) -> int:
    return (mailbox_id << UID_BITS) | uid


TRIGRAM_SINCE: Final = (3, 34, 0)  # the first SQLite with FTS5's trigram tokenizer


def available(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has FTS5 and its trigram tokenizer (Debian 12's 3.40 has both;
    a custom build may have neither): without them there is no index and SEARCH scans."""
    if sqlite3.sqlite_version_info < TRIGRAM_SINCE:
        return False
    return bool(conn.execute("SELECT sqlite_compileoption_used('ENABLE_FTS5')").fetchone()[0])


def _create(conn: sqlite3.Connection) -> None:
    """Step 1: the tables, the triggers that keep them honest, and every existing message
    marked pending for the backfill."""
    conn.execute(
        "CREATE VIRTUAL TABLE message_fts USING fts5("
        "body, header, tokenize = 'trigram case_sensitive 1', detail = column)"
    )
    conn.execute(
        "CREATE TABLE fts_pending (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
        " PRIMARY KEY (mailbox_id, uid)) WITHOUT ROWID"
    )
    conn.execute(
        f"CREATE TRIGGER {INSERT_TRIGGER} AFTER INSERT ON messages BEGIN"
        " INSERT OR IGNORE INTO fts_pending VALUES (new.mailbox_id, new.uid); END"
    )
    conn.execute(
        "CREATE TRIGGER fts_message_removed AFTER DELETE ON messages BEGIN"
        " DELETE FROM fts_pending WHERE mailbox_id = old.mailbox_id AND uid = old.uid;"
        " DELETE FROM message_fts WHERE rowid = ((old.mailbox_id << 32) | old.uid); END"
    )
    conn.execute("INSERT INTO fts_pending SELECT mailbox_id, uid FROM messages")


MIGRATIONS: Final = [_create]


def pend_batch(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> None:
    """What :data:`INSERT_TRIGGER` does per row, once for the rows of ``mailbox_id`` with
    ``modseq``: a batch inserted while the trigger was suspended (``store.bulkrows``)."""
    conn.execute(
        "INSERT OR IGNORE INTO fts_pending SELECT mailbox_id, uid FROM messages"
        " WHERE mailbox_id = ? AND modseq = ?",
        (mailbox_id, modseq),
    )


def glob_pattern(needle: str) -> str:
    """``*needle*`` for GLOB, the needle's own ``*``, ``?`` and ``[`` made literal (``[*]``)."""
    return "*" + "".join(f"[{ch}]" if ch in "*?[" else ch for ch in needle) + "*"


def searchable(needle: str) -> bool:
    """Can the index answer a search for this (case-folded) needle?"""
    return len(needle) >= MIN_NEEDLE


def add(conn: sqlite3.Connection, rows: Iterable[tuple[int, int, str, str]]) -> None:
    """Index ``(mailbox_id, uid, body, header)`` texts (inside the caller's transaction)."""
    for mailbox_id, uid, body, header in rows:
        conn.execute(
            "INSERT OR REPLACE INTO message_fts (rowid, body, header) VALUES (?, ?, ?)",
            (rowid(mailbox_id, uid), body, header),
        )
        conn.execute("DELETE FROM fts_pending WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid))


def copy(conn: sqlite3.Connection, pairs: Iterable[tuple[int, int, int, int]]) -> None:
    """COPY/MOVE ``(source mailbox, source UID, destination mailbox, new UID)``: the
    destination gets the source's indexed text (no file read); an unindexed source leaves
    the copy pending. Inside the caller's transaction, after the message rows are in."""
    for src_id, uid, dst_id, new in pairs:
        copied = conn.execute(
            "INSERT OR REPLACE INTO message_fts (rowid, body, header)"
            " SELECT ?, body, header FROM message_fts WHERE rowid = ?",
            (rowid(dst_id, new), rowid(src_id, uid)),
        ).rowcount
        if copied:
            conn.execute("DELETE FROM fts_pending WHERE mailbox_id = ? AND uid = ?", (dst_id, new))


def pending_count(conn: sqlite3.Connection, mailbox_id: int, max_uid: int) -> int:
    """Messages of the mailbox up to ``max_uid`` that are not indexed yet."""
    row = conn.execute(
        "SELECT count(*) FROM fts_pending WHERE mailbox_id = ? AND uid <= ?",
        (mailbox_id, max_uid),
    ).fetchone()
    return int(row[0])


def texts_of_file(path: Path) -> tuple[str, str] | None:
    """The index texts of a message file, or None if it is gone."""
    try:
        data = mime.to_crlf(path.read_bytes())
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    parsed = mime.parse(data)
    return search_texts(data, parsed.structure, parsed.header_end)


def backfill(
    conn: sqlite3.Connection,
    root: Path,
    after: tuple[int, int],
    limit: int,
    mailbox_id: int | None = None,
) -> tuple[int, int] | None:
    """Index up to ``limit`` pending messages after the cursor ``(mailbox_id, uid)`` (of one
    mailbox if given), in one transaction; returns the new cursor, or None when nothing is
    left after it.

    A message whose file cannot be read (renamed or removed by another program since the
    last sync) stays pending and is passed over; the cursor keeps one run from looping on it.
    """
    # One mailbox: its own primary-key range, so the scan never runs into the next ones.
    upto = (mailbox_id, 0xFFFFFFFF) if mailbox_id is not None else (1 << 62, 0)
    rows = conn.execute(
        "SELECT p.mailbox_id, p.uid, m.fname, b.name FROM fts_pending p"
        " JOIN messages m ON m.mailbox_id = p.mailbox_id AND m.uid = p.uid"
        " JOIN mailboxes b ON b.id = p.mailbox_id"
        " WHERE (p.mailbox_id, p.uid) > (?, ?) AND (p.mailbox_id, p.uid) <= (?, ?)"
        " ORDER BY p.mailbox_id, p.uid LIMIT ?",
        (*after, *upto, limit),
    ).fetchall()
    if not rows:
        return None
    done: list[tuple[int, int, str, str]] = []
    for mailbox_id, uid, fname, name in rows:
        try:
            directory = folder_dir(name)
        except BadMailboxName:
            continue
        texts = texts_of_file((root / directory if directory else root) / "cur" / fname)
        if texts is not None:
            done.append((mailbox_id, uid, *texts))
    conn.execute("BEGIN IMMEDIATE")
    try:
        add(conn, done)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return rows[-1][0], rows[-1][1]

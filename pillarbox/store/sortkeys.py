"""Sort keys as indexed columns: SORT (RFC 5256 §3, RFC 5957) as one ``ORDER BY``.

A message's keys are computed once, when its rows are written (``store.messagerows`` and
the lazy parse, ``store.lazyparse``), by ``pillarbox.mime.sortkeys`` — the same functions
the IMAP layer uses for a store without these columns, so both give the same order. A
SORT is then a query that streams UIDs in order, ties broken by UID (sequence numbers grow
with UIDs, RFC 5256 §3), instead of reading 50,000 header blocks into Python.

Layout (component ``mailindex.sortkeys`` of the index database):
``message_sort(mailbox_id, uid, date, subject, from_addr, to_addr, cc_addr, display_from,
display_to)``. ``date`` is the sent date in UTC epoch seconds, INTERNALDATE when Date: is
missing or unparseable (§2.2), filled in by the INSERT from the message's own row. A
message without a sort row (not parsed yet) is not sorted by a key that needs one, as the
IMAP layer skips a row without a header. A trigger drops the row with the message.
ARRIVAL and SIZE are the ``messages`` row's own columns. Text keys compare as BINARY (UTF-8
bytes), which is the code point order Python's ``sorted`` gives the same strings.
"""

from __future__ import annotations

import bisect
import sqlite3
from array import array
from collections.abc import Container, Iterable, Sequence
from typing import Final

from pillarbox.mime.sortkeys import sort_keys
from pillarbox.store import db

COMPONENT: Final = "mailindex.sortkeys"
FILL_CHUNK: Final = 2000  # header blocks read at a time by the migration
# Up to this many UID runs the WHERE clause lists them; beyond, the query takes the span
# and the UIDs outside the runs are dropped afterwards (one set lookup each).
MAX_RUNS: Final = 32
MAX_SET: Final = 1 << 20  # UIDs in the runs up to which membership is a set lookup

# The column each sort key (RFC 5256 §3, RFC 5957 §3) orders by; ``m.`` is ``messages``.
COLUMN: Final = {
    "ARRIVAL": "m.internal_date",
    "SIZE": "m.size",
    "DATE": "k.date",
    "SUBJECT": "k.subject",
    "FROM": "k.from_addr",
    "TO": "k.to_addr",
    "CC": "k.cc_addr",
    "DISPLAYFROM": "k.display_from",
    "DISPLAYTO": "k.display_to",
}

# What clients sort big mailboxes by (RFC 5256 keys DATE, SUBJECT, FROM, ARRIVAL, SIZE):
# these have indexes (store.sortkeys._index); the other keys are sorted by SQLite.
INDEXED: Final = (
    ("message_sort", "date"),
    ("message_sort", "subject"),
    ("message_sort", "from_addr"),
    ("messages", "internal_date"),
    ("messages", "size"),
)

# The sent date falls back to the message's INTERNALDATE (RFC 5256 §2.2), read from its row.
_INSERT: Final = (
    "INSERT OR REPLACE INTO message_sort VALUES (?1, ?2, coalesce(?3,"
    " (SELECT internal_date FROM messages WHERE mailbox_id = ?1 AND uid = ?2), 0),"
    " ?4, ?5, ?6, ?7, ?8, ?9)"
)

SortRow = tuple[int, int, int | None, str, str, str, str, str, str]


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE message_sort (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
        " date INTEGER NOT NULL, subject TEXT NOT NULL, from_addr TEXT NOT NULL,"
        " to_addr TEXT NOT NULL, cc_addr TEXT NOT NULL, display_from TEXT NOT NULL,"
        " display_to TEXT NOT NULL, PRIMARY KEY (mailbox_id, uid)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TRIGGER message_sort_removed AFTER DELETE ON messages BEGIN"
        " DELETE FROM message_sort WHERE mailbox_id = old.mailbox_id AND uid = old.uid; END"
    )
    _fill(conn)


def _fill(conn: sqlite3.Connection) -> None:
    """The keys of every message parsed before this table existed, from the header block
    its ``message_data`` row keeps (no message file is read)."""
    for rows in db.keyed_chunks(conn, "message_data", "uid, mailbox_id, header", FILL_CHUNK):
        insert(conn, (row(box_id, uid, header) for uid, box_id, header in rows))


def _index(conn: sqlite3.Connection) -> None:
    """An index per direction of the common keys: ``ORDER BY key [DESC], uid`` then reads
    one in order (the UID order within equal keys is the index's own) instead of sorting."""
    for table, column in INDEXED:
        for direction in ("", " DESC"):
            name = f"{table}_{column}{'_desc' if direction else ''}"
            conn.execute(f"CREATE INDEX {name} ON {table} (mailbox_id, {column}{direction}, uid)")


MIGRATIONS: Final[list[db.Migration]] = [_create, _index]


def prepare(conn: sqlite3.Connection) -> None:
    """Create or upgrade the table (an index made before it gets its rows filled)."""
    db.migrate(conn, COMPONENT, MIGRATIONS)


def row(mailbox_id: int, uid: int, header: bytes) -> SortRow:
    """The ``message_sort`` row of a message with this header block."""
    keys = sort_keys(header)
    return (
        mailbox_id,
        uid,
        keys.date,
        keys.subject,
        keys.from_,
        keys.to,
        keys.cc,
        keys.display_from,
        keys.display_to,
    )


def insert(conn: sqlite3.Connection, rows: Iterable[SortRow]) -> None:
    """Write sort rows (inside the caller's transaction, after the ``messages`` rows)."""
    conn.executemany(_INSERT, rows)


def copy(conn: sqlite3.Connection, pairs: Sequence[tuple[int, int, int, int]]) -> None:
    """COPY/MOVE: the rows of ``(source mailbox, uid, destination mailbox, new uid)``."""
    conn.executemany(
        "INSERT OR REPLACE INTO message_sort SELECT ?3, ?4, date, subject, from_addr, to_addr,"
        " cc_addr, display_from, display_to FROM message_sort WHERE mailbox_id = ?1 AND uid = ?2",
        pairs,
    )


def sort_uids(
    conn: sqlite3.Connection,
    mailbox_id: int,
    ranges: Sequence[tuple[int, int]],
    criteria: Sequence[tuple[str, bool]],
) -> array[int]:
    """The UIDs in ``ranges`` (sorted, disjoint) ordered by ``criteria`` ((key, reverse)
    pairs, most significant first), ties by UID: one query, its answer one string."""
    if not ranges:
        return array("I")
    order = [COLUMN[key] + (" DESC" if reverse else "") for key, reverse in criteria]
    needs_keys = any(COLUMN[key].startswith("k.") for key, _ in criteria)
    needs_row = any(COLUMN[key].startswith("m.") for key, _ in criteria)
    # Keys alone: the sort table is the whole query (its rows exist only for messages).
    table = "message_sort k" if needs_keys and not needs_row else "messages m"
    if needs_keys and needs_row:
        table += " JOIN message_sort k ON k.mailbox_id = m.mailbox_id AND k.uid = m.uid"
    alias = table.split()[1]
    order.append(f"{alias}.uid")
    spans = list(ranges) if len(ranges) <= MAX_RUNS else [(ranges[0][0], ranges[-1][1])]
    where = " OR ".join(f"{alias}.uid BETWEEN ? AND ?" for _ in spans)
    text = conn.execute(
        f"SELECT group_concat(uid) FROM (SELECT {alias}.uid FROM {table}"
        f" WHERE {alias}.mailbox_id = ? AND ({where}) ORDER BY {', '.join(order)})",
        (mailbox_id, *(bound for span in spans for bound in span)),
    ).fetchone()[0]
    uids = array("I", map(int, text.split(","))) if text else array("I")
    if len(spans) == len(ranges):
        return uids
    wanted = _members(ranges)
    return array("I", (uid for uid in uids if uid in wanted))


class _Runs(Container[int]):
    """Membership in sorted, disjoint UID runs, by bisection (for runs too big for a set)."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self.ranges = ranges

    def __contains__(self, uid: object) -> bool:
        assert isinstance(uid, int)
        i = bisect.bisect_right(self.ranges, (uid, 0xFFFFFFFF)) - 1
        return i >= 0 and self.ranges[i][0] <= uid <= self.ranges[i][1]


def _members(ranges: Sequence[tuple[int, int]]) -> Container[int]:
    if sum(hi - lo + 1 for lo, hi in ranges) > MAX_SET:
        return _Runs(ranges)
    wanted: set[int] = set()
    for lo, hi in ranges:
        wanted.update(range(lo, hi + 1))
    return wanted

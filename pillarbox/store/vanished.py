"""Tombstones of expunged messages, so "which UIDs vanished since MODSEQ m" has an answer.

QRESYNC (RFC 7162 §3.2.5, §3.2.6) lets a client that comes back with the HIGHESTMODSEQ it
last saw ask which of its UIDs were expunged since then. Every expunge (an IMAP EXPUNGE,
MOVE, CLOSE, or a file that vanished from the Maildir behind our back) bumps the mailbox's
HIGHESTMODSEQ (``MaildirSync.remove_rows``) and records here the UID ranges it removed under
that modseq, in the same transaction as the removal.

Growth is bounded: a mailbox keeps at most :data:`MAX_ROWS` tombstone rows. Past that the
oldest are dropped and the mailbox's *floor* rises to the newest modseq dropped. A question
about changes since a modseq at or above the floor is answered exactly; below it, every UID
below UIDNEXT that is not in the mailbox any more is reported. RFC 7162 §3.2.5.1 and
§3.2.6 allow that: a VANISHED (EARLIER) response may include UIDs that were expunged before
the client's modseq (or never existed); the client just forgets UIDs it does not have.

The schema is its own migration component, ``mailindex.vanished``, so it upgrades an index
created before it existed: mailboxes already there get their current HIGHESTMODSEQ as
floor, since their earlier expunges were never recorded.
"""

from __future__ import annotations

import bisect
import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from typing import Final

from pillarbox.store import db

COMPONENT: Final = "mailindex.vanished"
MAX_ROWS: Final = 2000  # tombstone rows kept per mailbox (a few tens of KB at most)
MIGRATIONS: Final[list[db.Migration]] = [
    """
    CREATE TABLE vanished (
        mailbox_id INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        uid_lo INTEGER NOT NULL,
        uid_hi INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, modseq, uid_lo)
    ) WITHOUT ROWID;
    CREATE TABLE vanished_floor (
        mailbox_id INTEGER PRIMARY KEY,
        modseq INTEGER NOT NULL
    );
    INSERT INTO vanished_floor SELECT id, highestmodseq FROM mailboxes
    """,
]

Ranges = list[tuple[int, int]]


def migrate(conn: sqlite3.Connection) -> None:
    db.migrate(conn, COMPONENT, MIGRATIONS)


def to_ranges(uids: Iterable[int]) -> Ranges:
    """Sorted UIDs (duplicates allowed) as merged inclusive ranges."""
    out: Ranges = []
    for uid in sorted(uids):
        if out and uid <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], uid))
        else:
            out.append((uid, uid))
    return out


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The intersection of two sorted, disjoint range lists."""
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def absent(present: Sequence[int], within: Ranges) -> Ranges:
    """The UIDs of ``within`` that are not in ``present`` (sorted), as ranges."""
    out: Ranges = []
    for lo, hi in within:
        start = bisect.bisect_left(present, lo)
        end = bisect.bisect_right(present, hi)
        cursor = lo
        for i in range(start, end):
            uid = present[i]
            if uid > cursor:
                out.append((cursor, uid - 1))
            cursor = uid + 1
        if cursor <= hi:
            out.append((cursor, hi))
    return out


def record(conn: sqlite3.Connection, mailbox_id: int, modseq: int, uids: Iterable[int]) -> None:
    """Remember that ``uids`` were expunged at ``modseq`` (inside the caller's transaction)."""
    ranges = to_ranges(uids)
    if len(ranges) > MAX_ROWS:
        # Too scattered to keep: everything up to now becomes "answer conservatively".
        _raise_floor(conn, mailbox_id, modseq)
        return
    conn.executemany(
        "INSERT OR REPLACE INTO vanished VALUES (?, ?, ?, ?)",
        [(mailbox_id, modseq, lo, hi) for lo, hi in ranges],
    )
    row = conn.execute(
        "SELECT modseq FROM vanished WHERE mailbox_id = ? ORDER BY modseq DESC LIMIT 1 OFFSET ?",
        (mailbox_id, MAX_ROWS),
    ).fetchone()
    if row is not None:
        # Keep about half: pruning then happens once per MAX_ROWS / 2 rows, not every time.
        cut = conn.execute(
            "SELECT modseq FROM vanished WHERE mailbox_id = ?"
            " ORDER BY modseq DESC LIMIT 1 OFFSET ?",
            (mailbox_id, MAX_ROWS // 2),
        ).fetchone()[0]
        _raise_floor(conn, mailbox_id, cut)


def history_unknown(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> None:
    """Expunges up to ``modseq`` were never recorded: answer conservatively below it."""
    _raise_floor(conn, mailbox_id, modseq)


def _raise_floor(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> None:
    conn.execute("DELETE FROM vanished WHERE mailbox_id = ? AND modseq <= ?", (mailbox_id, modseq))
    conn.execute(
        "INSERT INTO vanished_floor VALUES (?, ?) ON CONFLICT(mailbox_id)"
        " DO UPDATE SET modseq = max(modseq, excluded.modseq)",
        (mailbox_id, modseq),
    )


def forget(conn: sqlite3.Connection, mailbox_id: int) -> None:
    """Drop a deleted mailbox's tombstones (inside the caller's transaction)."""
    conn.execute("DELETE FROM vanished WHERE mailbox_id = ?", (mailbox_id,))
    conn.execute("DELETE FROM vanished_floor WHERE mailbox_id = ?", (mailbox_id,))


def floor(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = conn.execute(
        "SELECT modseq FROM vanished_floor WHERE mailbox_id = ?", (mailbox_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def since(
    conn: sqlite3.Connection,
    mailbox_id: int,
    modseq: int,
    within: Ranges,
    present: array[int],
    uidnext: int,
) -> Ranges:
    """UIDs of ``within`` (sorted, disjoint) expunged after ``modseq``; see the docstring.

    ``present`` is the mailbox's UIDs now; below the floor the answer is every UID of
    ``within`` under ``uidnext`` that is not present.
    """
    within = intersect(merge(within), [(1, uidnext - 1)]) if uidnext > 1 else []
    if not within:
        return []
    if modseq < floor(conn, mailbox_id):
        return absent(present, within)
    rows = conn.execute(
        "SELECT uid_lo, uid_hi FROM vanished WHERE mailbox_id = ? AND modseq > ?",
        (mailbox_id, modseq),
    ).fetchall()
    gone = merge((r[0], r[1]) for r in rows)
    # A UID reused by a rebuilt index (dovecot-uidlist) may exist again: never report it.
    return intersect(absent(present, gone), within) if gone else []

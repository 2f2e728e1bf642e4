"""Per-mailbox message counters for SELECT and STATUS without a scan of the mailbox.

STATUS (RFC 9051 §6.3.11) asks for MESSAGES, UNSEEN, SIZE, DELETED and DELETED-STORAGE
(RFC 9208 §5.4, RFC 9051 §7.5.2); SELECT for the first unseen message (RFC 3501 §7.1,
``[UNSEEN n]``). Counted over the rows, each is a scan of all 50,000 messages of a big
INBOX on every STATUS (~12 ms); here they are:

- ``mailbox_counts``: unseen and deleted messages and deleted bytes per mailbox, kept by
  triggers on ``messages`` in the transaction of every change (an INSERT adds, a DELETE
  subtracts, an UPDATE of flags, size or mailbox moves the difference), so they can never
  drift from the rows, whatever code path wrote them. MESSAGES and SIZE are the quota's
  ``mailbox_usage`` (``store/quota.py``), kept the same way. A REPLACE fires the DELETE
  trigger only with ``recursive_triggers``, which ``quota.prepare`` sets on the index's
  write connection.
- ``messages_unseen``: a partial index of the unseen messages by UID, so the first unseen
  is one index lookup, not a walk past every seen message.

Its own migration component (``mailindex.counts``): an index made before it is counted
once when the migration runs, and kept by the triggers after.
"""

from __future__ import annotations

import sqlite3
from typing import Final, NamedTuple

from pillarbox.mailstore.flags import DELETED, SEEN
from pillarbox.store import db

COMPONENT: Final = "mailindex.counts"
INSERT_TRIGGER: Final = "mailbox_counts_insert"  # see count_batch

# The flag bits are the one definition's (pillarbox.mailstore.flags), formatted in.
# The unseen messages, as the partial index says it: a query that wants the index must
# say it the same way (first_unseen).
_UNSEEN_WHERE: Final = f"flags & {SEEN} = 0"
_COUNTED: Final = SEEN | DELETED  # the bits whose change moves a counter


def _counted(row: str) -> tuple[str, str, str]:
    """What the row adds to the unseen, deleted and deleted-bytes counters: ``row`` is
    NEW or OLD in a trigger, "" for the row a query reads."""
    col = f"{row}." if row else ""
    return (
        f"({col}flags & {SEEN} = 0)",
        f"({col}flags & {DELETED} != 0)",
        f"(CASE WHEN {col}flags & {DELETED} != 0 THEN {col}size ELSE 0 END)",
    )


_ADDED: Final = """ON CONFLICT (mailbox_id) DO UPDATE SET
            unseen = unseen + excluded.unseen,
            deleted = deleted + excluded.deleted,
            deleted_bytes = deleted_bytes + excluded.deleted_bytes"""


def _add(row: str) -> str:
    unseen, deleted, deleted_bytes = _counted(row)
    return f"""INSERT INTO mailbox_counts (mailbox_id, unseen, deleted, deleted_bytes)
        VALUES ({row}.mailbox_id, {unseen}, {deleted}, {deleted_bytes}) {_ADDED};"""


def _subtract(row: str) -> str:
    unseen, deleted, deleted_bytes = _counted(row)
    return f"""UPDATE mailbox_counts SET
            unseen = unseen - {unseen},
            deleted = deleted - {deleted},
            deleted_bytes = deleted_bytes - {deleted_bytes}
        WHERE mailbox_id = {row}.mailbox_id;"""


_SCHEMA: Final = (
    """CREATE TABLE mailbox_counts (
        mailbox_id INTEGER PRIMARY KEY,
        unseen INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        deleted_bytes INTEGER NOT NULL DEFAULT 0
    )""",
    """INSERT INTO mailbox_counts (mailbox_id, unseen, deleted, deleted_bytes)
        SELECT mailbox_id, sum({}), sum({}), sum({}) FROM messages GROUP BY mailbox_id""".format(
        *_counted("")
    ),
    f"CREATE TRIGGER {INSERT_TRIGGER} AFTER INSERT ON messages BEGIN {_add('NEW')} END",
    f"CREATE TRIGGER mailbox_counts_delete AFTER DELETE ON messages BEGIN {_subtract('OLD')} END",
    # Only a change of \Seen or \Deleted (or of size or mailbox) moves a counter: a STORE of
    # \Flagged or of a keyword on 50,000 messages runs no trigger body.
    f"""CREATE TRIGGER mailbox_counts_update AFTER UPDATE OF flags, size, mailbox_id ON messages
        WHEN (OLD.flags & {_COUNTED}) != (NEW.flags & {_COUNTED}) OR OLD.size != NEW.size
            OR OLD.mailbox_id != NEW.mailbox_id
        BEGIN {_subtract("OLD")} {_add("NEW")} END""",
    """CREATE TRIGGER mailbox_counts_drop AFTER DELETE ON mailboxes BEGIN
        DELETE FROM mailbox_counts WHERE mailbox_id = OLD.id;
    END""",
    # The WHERE must be written the same way by the queries that want it (first_unseen).
    f"CREATE INDEX messages_unseen ON messages (mailbox_id, uid) WHERE {_UNSEEN_WHERE}",
)


def _add_counts(conn: sqlite3.Connection) -> None:
    # One statement at a time: a trigger body holds ";", which db.migrate's split would cut.
    for statement in _SCHEMA:
        conn.execute(statement)


MIGRATIONS: Final[list[db.Migration]] = [_add_counts]


def prepare(conn: sqlite3.Connection) -> None:
    """Migrate the index's write connection (after ``quota.prepare``)."""
    db.migrate(conn, COMPONENT, MIGRATIONS)


def count_batch(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> None:
    """What :data:`INSERT_TRIGGER` does per row, once for the rows of ``mailbox_id`` with
    ``modseq``: a batch inserted while the trigger was suspended (``store.bulkrows``)."""
    unseen, deleted, deleted_bytes = _counted("")
    conn.execute(
        f"""INSERT INTO mailbox_counts (mailbox_id, unseen, deleted, deleted_bytes)
        SELECT mailbox_id, sum({unseen}), sum({deleted}), sum({deleted_bytes}) FROM messages
        WHERE mailbox_id = ? AND modseq = ? GROUP BY mailbox_id {_ADDED}""",
        (mailbox_id, modseq),
    )


class Counts(NamedTuple):
    messages: int
    unseen: int
    deleted: int
    size: int
    deleted_bytes: int


def of_mailbox(conn: sqlite3.Connection, mailbox_id: int) -> Counts:
    """The counters of one mailbox: two primary-key lookups."""
    row = conn.execute(
        "SELECT coalesce(u.messages, 0), coalesce(c.unseen, 0), coalesce(c.deleted, 0),"
        " coalesce(u.bytes, 0), coalesce(c.deleted_bytes, 0)"
        " FROM (SELECT ? AS id) AS m"
        " LEFT JOIN mailbox_usage AS u ON u.mailbox_id = m.id"
        " LEFT JOIN mailbox_counts AS c ON c.mailbox_id = m.id",
        (mailbox_id,),
    ).fetchone()
    return Counts(*row)


def first_unseen(conn: sqlite3.Connection, mailbox_id: int) -> int | None:
    """The lowest UID without \\Seen, from the partial index ``messages_unseen``."""
    row = conn.execute(
        "SELECT uid FROM messages INDEXED BY messages_unseen"
        f" WHERE mailbox_id = ? AND {_UNSEEN_WHERE} ORDER BY uid LIMIT 1",
        (mailbox_id,),
    ).fetchone()
    return None if row is None else int(row[0])


def recent(conn: sqlite3.Connection, mailbox_id: int, recent_uid: int) -> int:
    """Messages at or above the first unclaimed UID: a primary-key range."""
    row = conn.execute(
        "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid >= ?",
        (mailbox_id, recent_uid),
    ).fetchone()
    return int(row[0])

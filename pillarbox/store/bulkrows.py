"""Many new ``messages`` rows at once, with the per-row insert triggers done once.

Three triggers follow every INSERT into ``messages``: the mailbox's counters
(``store.counts``), its quota usage (``store.quota``) and the full-text pending list
(``store.fulltext``). They keep those tables right whatever code path writes a row, at a
price per row: on the first SELECT of a 50,000-message Maildir copied in they were twice
the cost of the inserts themselves (issue 17). So a big batch (``store.sync``'s new files
past ``lazyparse.INLINE_MAX``) is inserted with them suspended, and each trigger's module
then does for the whole batch, in one statement, what its trigger does per row.

:func:`insert_triggers_suspended` drops the triggers and creates them again from their
own text in ``sqlite_master``, all inside the caller's transaction: SQLite's DDL is
transactional, so another connection (another process's delivery) only ever sees the
triggers in place, and a crash (kill -9) anywhere in between rolls back the rows, the
counters and the DROP together. Only triggers listed in :data:`BATCH_OF` are suspended: one
added later without a batch form keeps firing per row, slower but right.

A batch's rows are found by their MODSEQ: ``sync`` gives them one fresh MODSEQ
(HIGHESTMODSEQ + 1), which no other row of the mailbox can have yet.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from pillarbox.store import counts, fulltext, quota

# A trigger's name -> what it does for every row of (mailbox_id, modseq) at once.
BATCH_OF: Final[dict[str, Callable[[sqlite3.Connection, int, int], None]]] = {
    counts.INSERT_TRIGGER: counts.count_batch,
    quota.INSERT_TRIGGER: quota.count_batch,
    fulltext.INSERT_TRIGGER: fulltext.pend_batch,
}


@contextmanager
def insert_triggers_suspended(
    conn: sqlite3.Connection, mailbox_id: int, modseq: int
) -> Iterator[None]:
    """Inside a transaction: the block inserts rows of ``mailbox_id`` with ``modseq``
    without the triggers of :data:`BATCH_OF`; after it, their batch forms run and the
    triggers are back. On an exception the caller's rollback restores them."""
    if not conn.in_transaction:
        raise RuntimeError("insert_triggers_suspended needs the caller's transaction")
    suspended = [
        (name, sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'messages'"
        )
        if name in BATCH_OF
    ]
    for name, _ in suspended:
        conn.execute(f'DROP TRIGGER "{name}"')
    yield
    for name, sql in suspended:
        BATCH_OF[name](conn, mailbox_id, modseq)
        conn.execute(sql)

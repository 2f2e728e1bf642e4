"""The schema of a user's index database, and opening it.

One SQLite file per user (``<maildir>/pillarbox-index.sqlite``); why, and what the tables
hold, is in ``store.index``. Each concern owns its tables, triggers and migrations in its
own module and migration component (``db.migrate``); this module runs them all, in the
order they depend on each other, so every part of the index finds its tables in place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from pillarbox.store import counts, db, fulltext, lazyparse, messagerows, quota, sortkeys
from pillarbox.store import vanished as tombstones

INDEX_FILE: Final = "pillarbox-index.sqlite"

_MIGRATIONS: Final[list[db.Migration]] = [
    """
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        recent_uid INTEGER NOT NULL DEFAULT 1,
        special_use TEXT,
        cur_mtime INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE subscriptions (name TEXT PRIMARY KEY);
    CREATE TABLE messages (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        keywords TEXT NOT NULL DEFAULT '',
        modseq INTEGER NOT NULL,
        internal_date INTEGER NOT NULL,
        size INTEGER NOT NULL,
        sent_date INTEGER,
        base TEXT NOT NULL,
        fname TEXT NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
    CREATE TABLE message_data (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        envelope TEXT NOT NULL,
        structure TEXT NOT NULL,
        header BLOB NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE TABLE message_search (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID
    """,
]


def open_for_writing(root: Path) -> tuple[sqlite3.Connection, bool]:
    """The index's write connection, every migration applied; and whether SQLite has FTS5
    (then the full-text index's tables and triggers are there)."""
    conn = db.connect(root / INDEX_FILE)
    # The Maildir and dovecot-uidlist back the index up: a lost last transaction after a
    # power cut is repaired by the next sync, so WAL's NORMAL durability is enough.
    conn.execute("PRAGMA synchronous=NORMAL")
    db.migrate(conn, "mailindex", _MIGRATIONS)
    tombstones.migrate(conn)  # its own component: see store.vanished
    # The full-text index (store.fulltext) is migrated whenever SQLite has FTS5, so its
    # triggers track every message even while searching with it is switched off.
    has_fts = fulltext.available(conn)
    if has_fts:
        db.migrate(conn, fulltext.COMPONENT, fulltext.MIGRATIONS)
    quota.prepare(conn)  # the usage table and its triggers ("mailindex.quota")
    db.migrate(conn, lazyparse.COMPONENT, lazyparse.MIGRATIONS)  # messages not parsed yet
    counts.prepare(conn)  # unseen/deleted counters, first unseen ("mailindex.counts")
    messagerows.prepare(conn)  # the ENVELOPE's wire form ("mailindex.rows")
    sortkeys.prepare(conn)  # SORT's key columns ("mailindex.sortkeys")
    return conn, has_fts


def open_for_reading(root: Path) -> sqlite3.Connection:
    """A read-only connection (FETCH and SEARCH outside the write lock: store.reads)."""
    return db.connect(root / INDEX_FILE, readonly=True)

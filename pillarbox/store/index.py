"""The mailbox index of one user: SQLite over a Maildir++, and its repair from the Maildir.

One SQLite file per user (``<maildir>/pillarbox-index.sqlite``) rather than one shared
database: users never contend for the single SQLite writer lock, a user's index lives and
dies with their Maildir (backups, migrations and ``rm -r`` keep them together), a broken or
deleted index costs one user a rebuild, not everyone; and a PostgreSQL store for several
nodes replaces this module as a whole behind the same interface (``pillarbox.store.mailbox``).

The Maildir stays the truth about which messages exist and their flags (so mutt, Dovecot and
backups keep working); the index adds what a Maildir cannot hold (UIDs, MODSEQs, the parsed
ENVELOPE/BODYSTRUCTURE and header text for FETCH and SEARCH without reading files), and
``dovecot-uidlist`` / ``dovecot-keywords`` files keep UIDs and keyword letters across index
loss. The sync (``store.sync.MaildirSync``, behind :meth:`UserIndex.sync`) reconciles: files in
``new/`` are moved to ``cur/`` and get the next UIDs; ``cur/`` is listed only when its mtime
moved (foreign changes), then vanished files are expunged, renamed ones update flags and
unknown ones get new UIDs. UserIndex keeps the schema, the mailboxes (discovery, create,
rename, delete) and the read queries, and hands sync, changes and reads to their classes.

Everything here is blocking; ``pillarbox.store.mailbox`` runs it in worker threads, one
operation at a time per user (``UserIndex.lock``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from pillarbox.mailstore.filters import SearchFilter
from pillarbox.mailstore.rows import (
    ALL_PARTS,
    Appended,
    Copied,
    FetchRow,
    FlagBatch,
    FlagUpdate,
    Parts,
    SearchRow,
)
from pillarbox.store import counts, db, fulltext, lazyparse, messagerows, quota, sortkeys, uidlist
from pillarbox.store import flags as fl
from pillarbox.store import vanished as tombstones
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.lazyparse import Need
from pillarbox.store.maildir import ensure_maildir, fsync_dir
from pillarbox.store.names import INBOX, BadMailboxName, folder_dir, name_of_dir, parent_names
from pillarbox.store.reads import IndexReader
from pillarbox.store.sync import MaildirSync
from pillarbox.store.types import (
    ChangeSet,
    MailboxError,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)
from pillarbox.store.writes import IndexWriter

INDEX_FILE: Final = "pillarbox-index.sqlite"
SPECIAL_USE: Final = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
CHUNK: Final = 2000  # rows per batch for bulk work
READERS: Final = 2  # read-only connections per open user index

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


class UserIndex:
    """See the module docstring. Every public method expects ``lock`` to be held."""

    def __init__(self, root: Path, *, full_text: bool = True):
        self.root = root
        self.lock = threading.Lock()
        ensure_maildir(root)
        self.conn = db.connect(root / INDEX_FILE)
        # The Maildir and dovecot-uidlist back the index up: a lost last transaction after
        # a power cut is repaired by the next sync, so WAL's NORMAL durability is enough.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        db.migrate(self.conn, "mailindex", _MIGRATIONS)
        tombstones.migrate(self.conn)  # its own component: see store.vanished
        # The full-text index (store.fulltext) is migrated whenever SQLite has FTS5, so its
        # triggers track every message even while searching with it is switched off.
        has_fts = fulltext.available(self.conn)
        if has_fts:
            db.migrate(self.conn, fulltext.COMPONENT, fulltext.MIGRATIONS)
        self.full_text = full_text and has_fts
        self.closed = False
        # Set when messages were left for the background backfill (see store.mailbox).
        self.backfill_wanted = self.full_text and self._any_pending()
        quota.prepare(self.conn)  # the usage table and its triggers ("mailindex.quota")
        db.migrate(self.conn, lazyparse.COMPONENT, lazyparse.MIGRATIONS)
        # Messages indexed before being parsed (see store.lazyparse): ``unparsed`` tells the
        # readers to look (never False while one is pending), ``parse_wanted`` the background.
        self.unparsed = self.parse_wanted = lazyparse.any_pending(self.conn)
        counts.prepare(self.conn)  # unseen/deleted counters, first unseen ("mailindex.counts")
        messagerows.prepare(self.conn)  # the ENVELOPE's wire form ("mailindex.rows")
        sortkeys.prepare(self.conn)  # SORT's key columns ("mailindex.sortkeys")
        self._keywords: dict[int, list[str]] = {}
        self._mailboxes: dict[str, Mailbox] = {}
        # The last UID list per mailbox, shared by every session that selects it unchanged
        # (sessions never mutate it): N clients on one big INBOX cost one array, not N.
        self._uid_cache: dict[int, tuple[tuple[int, int], array[int]]] = {}
        self._generation: dict[int, int] = {}  # bumped whenever a mailbox's UID set changes
        self.syncer = MaildirSync(self)  # new/ and cur/ into the index (store.sync)
        # Keywords in use per mailbox and the HIGHESTMODSEQ they were read at: every change
        # of a row's keywords gives it a higher modseq, so SELECT reads only newer rows.
        self._used_keywords: dict[int, tuple[int, dict[str, None]]] = {}
        self.discover(initial=True)
        self.writer = IndexWriter(self)  # STORE, EXPUNGE, APPEND, COPY/MOVE, deliveries
        self.own_reader = IndexReader(self.conn, root)
        # Read-only connections for FETCH/SEARCH outside the write lock (see store.reads).
        self.readers: queue.SimpleQueue[IndexReader] = queue.SimpleQueue()
        self._reader_conns = [db.connect(root / INDEX_FILE, readonly=True) for _ in range(READERS)]
        for conn in self._reader_conns:
            self.readers.put(IndexReader(conn, root))

    def close(self) -> None:
        self.closed = True
        for conn in self._reader_conns:
            conn.close()
        self.conn.close()

    # --- mailboxes ---------------------------------------------------------------------
    def discover(self, *, initial: bool = False) -> list[str]:
        """Reconcile the mailbox table with the folders on disk; returns existing names."""
        on_disk = {INBOX: self.root}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    name = name_of_dir(entry.name)
                    if name is not None and name != INBOX:
                        on_disk[name] = Path(entry.path)
        rows = {r["name"]: r for r in self.conn.execute("SELECT * FROM mailboxes")}
        for name in set(rows) - set(on_disk):
            self._drop_row(rows[name]["id"])
            self._mailboxes.pop(name, None)
        fresh = not rows
        for name, path in on_disk.items():
            if name not in rows:
                self._add_row(name, path, SPECIAL_USE.get(name))
        if fresh and initial:
            self._create_defaults()
        return sorted(on_disk)

    def _create_defaults(self) -> None:
        """INBOX and the RFC 6154 special-use folders, subscribed, for a new user."""
        for name, use in SPECIAL_USE.items():
            if name not in self._names():
                self.create(name, use)
        with db.Transaction(self.conn):
            for name in [INBOX, *SPECIAL_USE]:
                self.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (name,))

    def _names(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM mailboxes")}

    def _add_row(self, name: str, path: Path, special_use: str | None) -> None:
        ensure_maildir(path)
        known = uidlist.read(path)
        uidvalidity = known.uidvalidity if known else self._new_uidvalidity()
        with db.Transaction(self.conn):
            cursor = self.conn.execute(
                "INSERT INTO mailboxes (name, uidvalidity, uidnext, highestmodseq, special_use)"
                " VALUES (?, ?, ?, 1, ?)",
                (name, uidvalidity, known.next_uid if known else 1, special_use),
            )
            if known is not None and known.next_uid > 1:
                # A Maildir with a past (a rebuilt index, Dovecot's): its expunges are unknown.
                tombstones.history_unknown(self.conn, int(cursor.lastrowid or 0), 1)
        if known is None:
            uidlist.write(path, uidvalidity, 1, [])

    def _new_uidvalidity(self) -> int:
        row = self.conn.execute("SELECT max(uidvalidity) FROM mailboxes").fetchone()
        return max(int(time.time()), (row[0] or 0) + 1) & 0xFFFFFFFF

    def _drop_row(self, mailbox_id: int) -> None:
        self._uid_cache.pop(mailbox_id, None)
        self._used_keywords.pop(mailbox_id, None)
        with db.Transaction(self.conn):
            self.conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
            self.conn.execute("DELETE FROM message_data WHERE mailbox_id = ?", (mailbox_id,))
            self.conn.execute("DELETE FROM message_search WHERE mailbox_id = ?", (mailbox_id,))
            self.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            tombstones.forget(self.conn, mailbox_id)
        self._keywords.pop(mailbox_id, None)

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name`` (row refreshed), or MailboxError NONEXISTENT."""
        try:
            directory = folder_dir(name)
        except BadMailboxName as exc:
            raise MailboxError("NONEXISTENT", str(exc)) from None
        row = self.conn.execute("SELECT * FROM mailboxes WHERE name = ?", (name,)).fetchone()
        path = self.root / directory if directory else self.root
        if directory and path.is_symlink():
            # Never follow a link out of the user's Maildir (only a local admin can make one).
            raise MailboxError("NONEXISTENT", f"no mailbox {name}")
        if row is None and directory and (path / "cur").is_dir():
            self._add_row(name, path, SPECIAL_USE.get(name))  # made by another tool
            row = self.conn.execute("SELECT * FROM mailboxes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MailboxError("NONEXISTENT", f"no mailbox {name}")
        if directory and not path.is_dir():
            self._drop_row(row["id"])
            raise MailboxError("NONEXISTENT", f"no mailbox {name}")
        return Mailbox(
            row["id"],
            name,
            path,
            row["uidvalidity"],
            row["uidnext"],
            row["highestmodseq"],
            row["recent_uid"],
            row["special_use"],
            row["cur_mtime"],
        )

    def list_mailboxes(self) -> list[MailboxInfo]:
        self.discover()
        subscribed = self.subscriptions()
        rows = self.conn.execute("SELECT name, special_use FROM mailboxes ORDER BY name")
        return [MailboxInfo(r[0], r[1], r[0] in subscribed) for r in rows]

    def subscriptions(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM subscriptions")}

    def subscribe(self, name: str, on: bool) -> None:
        if name != INBOX:
            try:
                folder_dir(name)  # only names that could exist can be subscribed
            except BadMailboxName as exc:
                raise MailboxError("CANNOT", str(exc)) from None
        with db.Transaction(self.conn):
            if on:
                self.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (name,))
            else:
                self.conn.execute("DELETE FROM subscriptions WHERE name = ?", (name,))

    def create(self, name: str, special_use: str | None = None) -> None:
        if name == INBOX:
            raise MailboxError("ALREADYEXISTS", "INBOX always exists")
        try:
            directory = folder_dir(name)
        except BadMailboxName as exc:
            raise MailboxError("CANNOT", str(exc)) from None
        if special_use is not None and special_use not in SPECIAL_USE.values():
            raise MailboxError("USEATTR", f"unsupported special use {special_use}")
        self.discover()
        names = self._names()
        if name in names:
            raise MailboxError("ALREADYEXISTS", f"mailbox {name} already exists")
        for parent in parent_names(name):
            if parent not in names and parent != INBOX:
                self.create(parent)
                names.add(parent)
        path = self.root / directory
        ensure_maildir(path)
        (path / "maildirfolder").touch()
        fsync_dir(self.root)
        self._add_row(name, path, special_use)

    def delete(self, name: str) -> None:
        if name == INBOX:
            raise MailboxError("CANNOT", "INBOX cannot be deleted")
        box = self.mailbox(name)
        self._drop_row(box.id)
        shutil.rmtree(box.path, ignore_errors=True)

    def rename(self, old: str, new: str) -> None:
        try:
            folder_dir(new)
        except BadMailboxName as exc:
            raise MailboxError("CANNOT", str(exc)) from None
        box = self.mailbox(old)
        self.discover()
        names = self._names()
        if new in names or new == INBOX:
            raise MailboxError("ALREADYEXISTS", f"mailbox {new} already exists")
        if new.startswith(old + "/"):
            raise MailboxError("CANNOT", "cannot move a mailbox into itself")
        if old == INBOX:
            # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves INBOX empty.
            self.create(new)
            uids = [
                r[0]
                for r in self.conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ?", (box.id,)
                )
            ]
            if uids:
                self.copy(INBOX, [(min(uids), max(uids))], new, move=True)
            return
        for parent in parent_names(new):
            if parent not in names and parent != INBOX:
                self.create(parent)
        moves = [
            (n, new + n[len(old) :]) for n in sorted(names) if n == old or n.startswith(old + "/")
        ]
        for src, dst in moves:
            src_path, dst_path = self.root / folder_dir(src), self.root / folder_dir(dst)
            if src_path.is_dir() and not dst_path.exists():
                os.rename(src_path, dst_path)
        with db.Transaction(self.conn):
            for src, dst in moves:
                self.conn.execute("UPDATE mailboxes SET name = ? WHERE name = ?", (dst, src))
                if self.conn.execute(
                    "DELETE FROM subscriptions WHERE name = ? RETURNING name", (src,)
                ).fetchone():
                    self.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (dst,))
        fsync_dir(self.root)

    # --- keywords ----------------------------------------------------------------------
    def keyword_names(self, box: Mailbox) -> list[str]:
        names = self._keywords.get(box.id)
        if names is None:
            names = self._keywords[box.id] = fl.read_keywords(box.path)
        return names

    # --- sync (pillarbox.store.sync) -------------------------------------------------------
    def sync(
        self,
        box: Mailbox,
        *,
        full: bool = False,
        full_text: bool = True,
        delivered: Mapping[str, int] | None = None,
    ) -> Mailbox:
        """Pick up new and foreign changes (see store.sync); returns fresh state."""
        return self.syncer.sync(box, full=full, full_text=full_text, delivered=delivered)

    # --- full-text index (store.fulltext) ------------------------------------------------
    def _any_pending(self) -> bool:
        return self.conn.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone() is not None

    def backfill_full_text(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        """Index one chunk of pending messages (see ``fulltext.backfill``); None: done, or
        the index was closed or switched off meanwhile."""
        if self.closed or not self.full_text:
            return None
        return fulltext.backfill(self.conn, self.root, after, limit)

    def catch_up_full_text(self, name: str, after: int, limit: int) -> int | None:
        """Index one chunk of the pending messages of mailbox ``name`` with UIDs above
        ``after``; the last UID done, or None when none is left."""
        if self.closed or not self.full_text:
            return None
        box = self.mailbox(name)
        cursor = fulltext.backfill(self.conn, self.root, (box.id, after), limit, box.id)
        return None if cursor is None else cursor[1]

    # --- messages not parsed yet (store.lazyparse) ----------------------------------------
    def parse_pending(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        *,
        need: Need = Need.PARSED,
        changed_since: int = 0,
        limit: int,
        full_text: bool = False,
    ) -> tuple[int, int] | None:
        """Give the first ``limit`` pending messages of mailbox ``name`` in ``ranges``
        (modseq above ``changed_since``) that lack it what ``need`` asks for: the full
        parse, or only the sizes or header columns (see store.lazyparse). Returns (the last
        UID looked at, how many), or None when none is left."""
        if self.closed:
            return None
        box = self.mailbox(name)
        found = lazyparse.pending_in(
            self.conn, box.id, ranges, need=need, changed_since=changed_since, limit=limit
        )
        if not found:
            return None
        if need is Need.SIZES:
            lazyparse.measure(self.conn, box.path, box.id, found)
        elif need is Need.PARSED:
            lazyparse.parse(
                self.conn, box.path, box.id, found, full_text=full_text and self.full_text
            )
        else:
            lazyparse.parse_heads(self.conn, box.path, box.id, found, sizes=need is Need.SEARCHED)
        return found[-1][0], len(found)

    def parse_backlog(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        """Parse one chunk of pending messages of any mailbox, with their full-text rows
        (see ``lazyparse.backlog``); None: done, or the index was closed meanwhile."""
        if self.closed:
            return None
        return lazyparse.backlog(self.conn, self.root, after, limit, full_text=self.full_text)

    def settle_parse(self) -> None:
        """After a background pass: the readers stop looking once nothing is pending."""
        if not self.closed:
            self.unparsed = lazyparse.any_pending(self.conn)

    def unsized_mailboxes(self) -> list[str]:
        """Names of the mailboxes with messages whose CRLF size is not known yet."""
        rows = self.conn.execute(
            "SELECT name FROM mailboxes WHERE id IN"
            " (SELECT mailbox_id FROM parse_pending WHERE sized = 0)"
        )
        return [r[0] for r in rows]

    def measure_sizes(self) -> None:
        """Give every pending message its CRLF size (what the usage sums)."""
        if not self.unparsed:
            return
        for name in self.unsized_mailboxes():
            after = 0
            while True:
                done = self.parse_pending(name, [(after + 1, 0xFFFFFFFF)], need=Need.SIZES,
                                          limit=CHUNK)  # fmt: skip
                if done is None:
                    break
                after = done[0]

    # --- reading -------------------------------------------------------------------------
    def status(self, name: str) -> StatusInfo:
        box = self.sync(self.mailbox(name))
        # Counters kept by triggers (store/counts.py), not a scan of the mailbox's rows.
        found = counts.of_mailbox(self.conn, box.id)
        return StatusInfo(
            messages=found.messages,
            recent=counts.recent(self.conn, box.id, box.recent_uid),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=found.unseen,
            deleted=found.deleted,
            size=found.size,
            highestmodseq=box.highestmodseq,
            deleted_storage=found.deleted_bytes,
        )

    def usage(self) -> int:
        """Bytes of the user's mail in every folder, indexed or waiting in ``new/``
        (see ``store/quota.py``): what a quota limits."""
        self.measure_sizes()
        folders = [self.root]
        for (name,) in self.conn.execute("SELECT name FROM mailboxes WHERE name != ?", (INBOX,)):
            with contextlib.suppress(BadMailboxName):
                folders.append(self.root / folder_dir(name))
        return quota.indexed_bytes(self.conn) + quota.pending_bytes(folders)

    def uids(self, box: Mailbox, max_uid: int | None = None) -> array[int]:
        """The mailbox's UIDs in order, as a compact array.

        One ``group_concat`` row instead of a Python row per message: for 100,000 messages
        this is several times faster than fetching rows (and allocates no per-row tuples).
        """
        result = array("I")
        start = 0
        while True:
            row = self.conn.execute(
                "SELECT group_concat(uid), max(uid) FROM (SELECT uid FROM messages"
                " WHERE mailbox_id = ? AND uid > ? AND uid <= ? ORDER BY uid LIMIT ?)",
                (box.id, start, 0xFFFFFFFF if max_uid is None else max_uid, CHUNK * 50),
            ).fetchone()
            if row[0] is None:
                return result
            result.extend(map(int, row[0].split(",")))
            start = row[1]

    def _cached_uids(self, box: Mailbox) -> array[int]:
        key = (box.uidnext, self._generation.get(box.id, 0))
        cached = self._uid_cache.get(box.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        uids = self.uids(box)
        self._uid_cache[box.id] = (key, uids)
        return uids

    def select(self, name: str, readonly: bool) -> SelectInfo:
        box = self.sync(self.mailbox(name))
        uids = self._cached_uids(box)
        unseen = counts.first_unseen(self.conn, box.id)
        recent_from = box.recent_uid
        if not readonly:
            self._claim_recent(box, box.uidnext)
        return SelectInfo(
            name=name,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highestmodseq=box.highestmodseq,
            uids=uids,
            recent_from_uid=recent_from,
            first_unseen_uid=unseen,
            keywords=self.mailbox_keywords(box),
        )

    def _claim_recent(self, box: Mailbox, upto: int) -> None:
        """RFC 3501 §2.3.2: \\Recent goes to the first session told about a message."""
        if box.recent_uid >= upto:
            return  # all claimed already: a warm SELECT writes nothing
        box.recent_uid = upto
        with db.Transaction(self.conn):
            self.conn.execute(
                "UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id = ?",
                (upto, box.id),
            )

    def mailbox_keywords(self, box: Mailbox) -> tuple[str, ...]:
        """The keywords of dovecot-keywords, then any other keyword a message carries.

        A keyword no message carries any more may stay listed (as in dovecot-keywords):
        FLAGS may name keywords not in use (RFC 9051 §7.3.5)."""
        found = dict.fromkeys(n for n in self.keyword_names(box) if n)
        found.update(self._keywords_in_use(box))
        return tuple(found)

    def _keywords_in_use(self, box: Mailbox) -> dict[str, None]:
        cached = self._used_keywords.get(box.id)
        if cached is not None and cached[0] == box.highestmodseq:
            return cached[1]
        if cached is None:
            used: dict[str, None] = {}
            rows = self.conn.execute(
                "SELECT DISTINCT keywords FROM messages WHERE mailbox_id = ? AND keywords != ''",
                (box.id,),
            )
        else:  # only the rows changed since (the index on modseq)
            used = dict(cached[1])
            rows = self.conn.execute(
                "SELECT DISTINCT keywords FROM messages"
                " WHERE mailbox_id = ? AND modseq > ? AND keywords != ''",
                (box.id, cached[0]),
            )
        for (text,) in rows:
            used.update(dict.fromkeys(text.split()))
        self._used_keywords[box.id] = (box.highestmodseq, used)
        return used

    def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        box = self.sync(self.mailbox(name))
        present = None
        if with_expunges:
            count = self.conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid <= ?",
                (box.id, known_max),
            ).fetchone()[0]
            if count < known_count:
                present = self.uids(box, known_max)
        new = array(
            "I",
            (
                r[0]
                for r in self.conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ? AND uid > ? ORDER BY uid",
                    (box.id, known_max),
                )
            ),
        )
        updates: list[FlagUpdate] = []
        if since_modseq < box.highestmodseq:
            # tuple.__new__ skips NamedTuple's Python-level __new__: a third of the cost of
            # a change set after another session's STORE 1:* on a big mailbox.
            make = tuple.__new__
            updates = [
                make(FlagUpdate, (uid, fl.flags_text(mask, keywords), modseq))
                for uid, mask, keywords, modseq in self.conn.execute(
                    "SELECT uid, flags, keywords, modseq FROM messages"
                    " WHERE mailbox_id = ? AND modseq > ? AND uid <= ? ORDER BY uid",
                    (box.id, since_modseq, known_max),
                )
            ]
        recent_from = box.recent_uid
        if claim_recent and len(new):
            self._claim_recent(box, new[-1] + 1)
        return ChangeSet(present, new, updates, box.highestmodseq, box.uidnext, recent_from)

    def vanished(
        self, name: str, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """UID ranges within ``ranges`` expunged after ``since_modseq`` (QRESYNC).

        Exact while the tombstones reach back that far, else a superset (see store.vanished).
        """
        box = self.mailbox(name)
        present = self._cached_uids(box)
        return tombstones.since(self.conn, box.id, since_modseq, ranges, present, box.uidnext)

    # --- reading (pillarbox.store.reads, on this index's own connection) -------------------
    def fetch(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        *,
        data: bool,
        limit: int = CHUNK,
        changed_since: int = 0,
        parts: Parts = ALL_PARTS,
    ) -> list[FetchRow]:
        return self.own_reader.fetch(
            name, ranges, data=data, limit=limit, changed_since=changed_since, parts=parts
        )

    def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]:
        return self.own_reader.search_uids(name, where)

    def fetch_flags(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        limit: int = CHUNK * 5,
        modseqs: bool = True,
    ) -> FlagBatch:
        return self.own_reader.fetch_flags(name, ranges, limit, modseqs)

    def search_rows(
        self,
        name: str,
        lo: int,
        hi: int,
        *,
        header: bool,
        where: SearchFilter | None = None,  # None: every message
        limit: int = CHUNK * 5,
    ) -> list[SearchRow]:
        return self.own_reader.search_rows(name, lo, hi, header=header, where=where, limit=limit)

    def read_message(self, name: str, uid: int) -> bytes | None:
        return self.own_reader.read_message(name, uid)

    # --- writing -------------------------------------------------------------------------
    def _rows_in(
        self, box: Mailbox, ranges: Iterable[tuple[int, int]], columns: str
    ) -> Iterator[sqlite3.Row]:
        for lo, hi in ranges:
            yield from self.conn.execute(
                f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
                " ORDER BY uid",
                (box.id, lo, hi),
            ).fetchall()

    # --- the interface IndexWriter uses (store.writes.WritableIndex) ----------------------
    def rows_in(
        self, box: Mailbox, ranges: Iterable[tuple[int, int]], columns: str
    ) -> Iterator[sqlite3.Row]:
        return self._rows_in(box, ranges, columns)

    def add_files(self, box: Mailbox, fnames: list[str]) -> list[int]:
        """Index files already in ``cur/`` (APPEND's, an import's), with new UIDs."""
        return self.syncer.add_files(box, fnames, rebuild=False)

    def remove_rows(self, box: Mailbox, uids: list[int]) -> None:
        self.syncer.remove_rows(box, uids)

    def rewrite_uidlist(self, box: Mailbox) -> None:
        self.syncer.rewrite_uidlist(box)

    def set_cur_mtime(self, box: Mailbox, mtime: int) -> None:
        self.syncer.set_cur_mtime(box, mtime)

    def next_modseq(self, box: Mailbox) -> int:
        return self.syncer.next_modseq(box)

    # --- the interface MaildirSync uses (store.sync.SyncedIndex) --------------------------
    def forget_keywords(self, box: Mailbox) -> None:
        """Read ``dovecot-keywords`` again next time (another writer may have added one)."""
        self._keywords.pop(box.id, None)

    def uids_changed(self, box: Mailbox) -> None:
        """The mailbox's UID set changes: a cached UID list of it is stale."""
        self._generation[box.id] = self._generation.get(box.id, 0) + 1

    # --- writing (pillarbox.store.writes) ----------------------------------------------------
    def store(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        return self.writer.store_flags(name, ranges, mode, flags, unchanged_since)

    def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]:
        return self.writer.expunge(name, ranges)

    def append(
        self,
        name: str,
        data: bytes,
        flags: tuple[str, ...],
        internal_date: float | None,
        limit: int = 0,
    ) -> Appended:
        return self.writer.append(name, data, flags, internal_date, limit=limit)

    def take_delivered(self, names: list[str], sizes: Mapping[str, int]) -> None:
        self.writer.take_delivered(names, sizes)

    def copy(
        self,
        src_name: str,
        ranges: list[tuple[int, int]],
        dst_name: str,
        *,
        move: bool,
        limit: int = 0,
    ) -> Copied:
        return self.writer.copy(src_name, ranges, dst_name, move=move, limit=limit)

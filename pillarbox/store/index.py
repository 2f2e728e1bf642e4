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
loss.

:class:`UserIndex` is the one object the store holds per user; it does no work of its own
but hands each call to the part whose job it is, and each part is a class of its own
module that knows only what it is given (no part reaches into another):

- ``store.indexschema``: the database file and every migration (``open_for_writing``);
- ``store.folders.Folders``: which mailboxes exist (discovery), create, rename, delete,
  subscriptions, keyword files;
- ``store.sync.MaildirSync``: new and foreign files into the index (``new/`` to ``cur/``,
  UIDs, expunges, renamed flags), before every answer that depends on them;
- ``store.views.MailboxViews``: STATUS, SELECT, changes since a session last looked, VANISHED;
- ``store.reads.IndexReader``: FETCH and SEARCH rows, here and on read-only connections;
- ``store.writes.IndexWriter``: STORE, EXPUNGE, APPEND, COPY/MOVE and delivered mail;
- ``store.repair.IndexRepair``: the work left for later (lazy parse, full-text backfill).

Everything here is blocking; ``pillarbox.store.mailbox`` runs it in worker threads, one
operation at a time per user (``UserIndex.lock``).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from pillarbox.mailstore.filters import SearchFilter
from pillarbox.mailstore.rows import (
    ALL_PARTS,
    Appended,
    Copied,
    FetchRow,
    FlagBatch,
    Parts,
    SearchRow,
)
from pillarbox.store import indexschema, lazyparse, quota
from pillarbox.store.boxstate import IndexState, Mailbox
from pillarbox.store.folders import Folders
from pillarbox.store.indexschema import INDEX_FILE as INDEX_FILE
from pillarbox.store.lazyparse import Need
from pillarbox.store.maildir import ensure_maildir
from pillarbox.store.names import INBOX, BadMailboxName, folder_dir
from pillarbox.store.reads import IndexReader
from pillarbox.store.repair import IndexRepair
from pillarbox.store.sync import MaildirSync
from pillarbox.store.types import (
    ChangeSet,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)
from pillarbox.store.views import MailboxViews
from pillarbox.store.writes import IndexWriter

CHUNK: Final = 2000  # rows per batch for bulk work
READERS: Final = 2  # read-only connections per open user index


class UserIndex:
    """See the module docstring. Every public method expects ``lock`` to be held."""

    def __init__(self, root: Path, *, full_text: bool = True):
        self.root = root
        self.lock = threading.Lock()
        ensure_maildir(root)
        self.conn, has_fts = indexschema.open_for_writing(root)
        self.state = IndexState(
            full_text=full_text and has_fts,
            # Messages indexed before being parsed (store.lazyparse): ``unparsed`` tells the
            # readers to look, ``parse_wanted`` the background.
            unparsed=lazyparse.any_pending(self.conn),
            parse_wanted=False,
            backfill_wanted=False,
        )
        self.state.parse_wanted = self.state.unparsed
        dropped: list[Callable[[int], None]] = []
        self.folders = Folders(self.conn, root, dropped)
        self.views = MailboxViews(self.conn, self.folders.keyword_names)
        dropped.append(self.views.forget)
        self.repair = IndexRepair(self.conn, root, self.state, self.folders.mailbox)
        # Set when messages were left for the background backfill (see store.mailbox).
        self.state.backfill_wanted = self.state.full_text and self.repair.full_text_pending()
        self.syncer = MaildirSync(self)  # new/ and cur/ into the index (store.sync)
        self.folders.discover(initial=True)
        self.writer = IndexWriter(self)  # STORE, EXPUNGE, APPEND, COPY/MOVE, deliveries
        self.own_reader = IndexReader(self.conn, root)
        # Read-only connections for FETCH/SEARCH outside the write lock (see store.reads).
        self.readers: queue.SimpleQueue[IndexReader] = queue.SimpleQueue()
        self._reader_conns = [indexschema.open_for_reading(root) for _ in range(READERS)]
        for conn in self._reader_conns:
            self.readers.put(IndexReader(conn, root))

    def close(self) -> None:
        self.state.closed = True
        for conn in self._reader_conns:
            conn.close()
        self.conn.close()

    # --- the shared state, as the store and the sync read and set it ----------------------
    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def full_text(self) -> bool:
        return self.state.full_text

    @full_text.setter
    def full_text(self, value: bool) -> None:
        self.state.full_text = value

    @property
    def unparsed(self) -> bool:
        return self.state.unparsed

    @unparsed.setter
    def unparsed(self, value: bool) -> None:
        self.state.unparsed = value

    @property
    def parse_wanted(self) -> bool:
        return self.state.parse_wanted

    @parse_wanted.setter
    def parse_wanted(self, value: bool) -> None:
        self.state.parse_wanted = value

    @property
    def backfill_wanted(self) -> bool:
        return self.state.backfill_wanted

    @backfill_wanted.setter
    def backfill_wanted(self, value: bool) -> None:
        self.state.backfill_wanted = value

    # --- folders (store.folders) -----------------------------------------------------------
    def discover(self, *, initial: bool = False) -> list[str]:
        return self.folders.discover(initial=initial)

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox ``name`` (row refreshed), or MailboxError NONEXISTENT."""
        return self.folders.mailbox(name)

    def list_mailboxes(self) -> list[MailboxInfo]:
        return self.folders.list_mailboxes()

    def subscriptions(self) -> set[str]:
        return self.folders.subscriptions()

    def subscribe(self, name: str, on: bool) -> None:
        self.folders.subscribe(name, on)

    def create(self, name: str, special_use: str | None = None) -> None:
        self.folders.create(name, special_use)

    def delete(self, name: str) -> None:
        self.folders.delete(name)

    def rename(self, old: str, new: str) -> None:
        inbox = self.folders.rename(old, new)
        if inbox is None:
            return
        # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves INBOX empty.
        uids = [
            r[0]
            for r in self.conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (inbox.id,))
        ]
        if uids:
            self.copy(INBOX, [(min(uids), max(uids))], new, move=True)

    def keyword_names(self, box: Mailbox) -> list[str]:
        return self.folders.keyword_names(box)

    # --- sync (store.sync) -----------------------------------------------------------------
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

    def _synced(self, name: str) -> Mailbox:
        return self.sync(self.folders.mailbox(name))

    # --- work left for later (store.repair) ------------------------------------------------
    def backfill_full_text(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        return self.repair.backfill_full_text(after, limit)

    def catch_up_full_text(self, name: str, after: int, limit: int) -> int | None:
        return self.repair.catch_up_full_text(name, after, limit)

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
        return self.repair.parse_pending(
            name, ranges, need=need, changed_since=changed_since, limit=limit,
            full_text=full_text,
        )  # fmt: skip

    def parse_backlog(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        return self.repair.parse_backlog(after, limit)

    def settle_parse(self) -> None:
        self.repair.settle_parse()

    def unsized_mailboxes(self) -> list[str]:
        return self.repair.unsized_mailboxes()

    def measure_sizes(self) -> None:
        self.repair.measure_sizes()

    # --- what sessions are told (store.views) ----------------------------------------------
    def status(self, name: str) -> StatusInfo:
        return self.views.status(self._synced(name))

    def usage(self) -> int:
        """Bytes of the user's mail in every folder, indexed or waiting in ``new/``
        (see ``store/quota.py``): what a quota limits."""
        self.repair.measure_sizes()
        folders = [self.root]
        for (name,) in self.conn.execute("SELECT name FROM mailboxes WHERE name != ?", (INBOX,)):
            with contextlib.suppress(BadMailboxName):
                folders.append(self.root / folder_dir(name))
        return quota.indexed_bytes(self.conn) + quota.pending_bytes(folders)

    def uids(self, box: Mailbox, max_uid: int | None = None) -> array[int]:
        return self.views.uids(box, max_uid)

    def select(self, name: str, readonly: bool) -> SelectInfo:
        return self.views.select(self._synced(name), readonly)

    def mailbox_keywords(self, box: Mailbox) -> tuple[str, ...]:
        return self.views.mailbox_keywords(box)

    def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        return self.views.changes(
            self._synced(name), known_max, known_count, since_modseq, with_expunges,
            claim_recent,
        )  # fmt: skip

    def vanished(
        self, name: str, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """UID ranges within ``ranges`` expunged after ``since_modseq`` (QRESYNC)."""
        return self.views.vanished(self.folders.mailbox(name), since_modseq, ranges)

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

    # --- the interface IndexWriter uses (store.writes.WritableIndex) ----------------------
    def rows_in(
        self, box: Mailbox, ranges: Iterable[tuple[int, int]], columns: str
    ) -> Iterator[sqlite3.Row]:
        for lo, hi in ranges:
            yield from self.conn.execute(
                f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
                " ORDER BY uid",
                (box.id, lo, hi),
            ).fetchall()

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
        self.folders.forget_keywords(box)

    def uids_changed(self, box: Mailbox) -> None:
        self.views.uids_changed(box)

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

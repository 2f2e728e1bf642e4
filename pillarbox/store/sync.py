"""The Maildir sync of one user's index: which files exist, their UIDs, MODSEQs and rows.

:class:`MaildirSync` reconciles a mailbox's index rows with its folder: files in ``new/``
are moved to ``cur/`` and get the next UIDs; ``cur/`` is listed only when its mtime moved
(a foreign change: mutt, Dovecot, a backup restore), and then vanished files are expunged,
renamed ones get their new flags and unknown ones get new UIDs (or, for a new or rebuilt
index, the UIDs ``dovecot-uidlist`` remembers). ``dovecot-uidlist`` is appended to as UIDs
are given and rewritten after expunges, so a lost index is rebuilt with the same UIDs.

It reaches the rest of the index only through :class:`SyncedIndex`, the small interface
``store.index.UserIndex`` offers it (the index imports this module, never the reverse), and
builds the rows of new messages with ``store.messagerows``. Everything here is blocking and
expects the index lock to be held.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final, Protocol

from pillarbox.store import bulkrows, db, fulltext, lazyparse, uidlist
from pillarbox.store import flags as fl
from pillarbox.store import vanished as tombstones
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.maildir import ensure_maildir
from pillarbox.store.messagerows import IndexRow, insert_rows, parsed_row

ROWS_PER_TRANSACTION: Final = 500


class SyncedIndex(Protocol):
    """What :class:`MaildirSync` uses of a user's index (``store.index.UserIndex``)."""

    conn: sqlite3.Connection

    @property
    def full_text(self) -> bool: ...

    backfill_wanted: bool
    unparsed: bool  # there may be messages not parsed yet (store.lazyparse)
    parse_wanted: bool  # the background parse has work

    def mailbox(self, name: str) -> Mailbox: ...

    def keyword_names(self, box: Mailbox) -> list[str]: ...

    def forget_keywords(self, box: Mailbox) -> None: ...

    def uids_changed(self, box: Mailbox) -> None: ...


class MaildirSync:
    """See the module docstring."""

    def __init__(self, index: SyncedIndex):
        self.index = index
        self.conn = index.conn

    def sync(
        self,
        box: Mailbox,
        *,
        full: bool = False,
        full_text: bool = True,
        delivered: Mapping[str, int] | None = None,
    ) -> Mailbox:
        """Pick up new and foreign changes; returns the mailbox's fresh state.
        ``full_text=False`` leaves the new messages' full-text rows to the backfill.
        ``delivered`` (base name -> CRLF size, from delivery) makes the new files' rows
        small ones, parsed later (see ``add_files``)."""
        cur = box.path / "cur"
        try:
            before = os.stat(cur).st_mtime_ns
        except FileNotFoundError:
            ensure_maildir(box.path)
            before = os.stat(cur).st_mtime_ns
        moved = self.move_new(box)
        if moved:
            # Delivery may have given a new keyword a letter (a Sieve script's addflag):
            # read dovecot-keywords again before the new files' letters are decoded.
            self.index.forget_keywords(box)
        # The mtime to remember is the one taken before cur/ is listed (after our own moves):
        # a change during the listing then shows as a new mtime and is scanned next time.
        current = os.stat(cur).st_mtime_ns if moved else before
        if full or before != box.cur_mtime:
            self.scan_cur(box, current)  # foreign changes: indexed in full, as always
        elif moved:
            self.add_files(box, moved, rebuild=False, full_text=full_text, delivered=delivered)
            self.set_cur_mtime(box, current)
        return self.index.mailbox(box.name)

    def move_new(self, box: Mailbox) -> list[str]:
        """Move ``new/`` files to ``cur/`` (as Dovecot does once a client saw them)."""
        moved: list[str] = []
        new_dir, cur_dir = box.path / "new", box.path / "cur"
        try:
            names = sorted(n for n in os.listdir(new_dir) if not n.startswith("."))
        except FileNotFoundError:
            return moved
        if not names:
            return moved
        # Relative to the two directories' descriptors: no path walk per file (delivery
        # runs this for every message).
        new_fd = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            cur_fd = os.open(cur_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for fname in names:
                    base, info = fl.split_filename(fname)
                    target = f"{base}:2,{info}"
                    try:
                        os.rename(fname, target, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        continue
                    moved.append(target)
            finally:
                os.close(cur_fd)
        finally:
            os.close(new_fd)
        return moved

    def set_cur_mtime(self, box: Mailbox, mtime: int) -> None:
        """Remember ``cur/``'s mtime: a later different one means a foreign change."""
        with db.Transaction(self.conn):
            self.conn.execute("UPDATE mailboxes SET cur_mtime = ? WHERE id = ?", (mtime, box.id))
        box.cur_mtime = mtime

    def scan_cur(self, box: Mailbox, mtime: int) -> None:
        """List ``cur/`` and reconcile every row with it (foreign changes)."""
        on_disk: dict[str, str] = {}
        for fname in os.listdir(box.path / "cur"):
            if not fname.startswith("."):
                on_disk[fl.split_filename(fname)[0]] = fname
        gone: list[int] = []
        renamed: list[tuple[int, str]] = []
        for uid, base, fname in self.conn.execute(
            "SELECT uid, base, fname FROM messages WHERE mailbox_id = ?", (box.id,)
        ):
            current = on_disk.pop(base, None)
            if current is None:
                gone.append(uid)
            elif current != fname:
                renamed.append((uid, current))
        # Reuse dovecot-uidlist UIDs only for a mailbox the index has never seen change
        # (a new or rebuilt index); later, unknown files always get new, higher UIDs.
        rebuild = box.highestmodseq <= 1
        if gone:
            self.remove_rows(box, gone)
        if renamed:
            self.reflag(box, renamed)
        if on_disk:
            self.add_files(box, sorted(on_disk.values()), rebuild=rebuild)
        if gone:
            self.rewrite_uidlist(box)
        self.set_cur_mtime(box, mtime)

    def next_modseq(self, box: Mailbox) -> int:
        box.highestmodseq += 1
        return box.highestmodseq

    def remove_rows(self, box: Mailbox, uids: list[int]) -> None:
        """Drop the rows of ``uids`` (expunged), leaving tombstones for QRESYNC."""
        self.index.uids_changed(box)
        modseq = self.next_modseq(box)
        with db.Transaction(self.conn):
            for i in range(0, len(uids), ROWS_PER_TRANSACTION):
                chunk = uids[i : i + ROWS_PER_TRANSACTION]
                marks = ",".join("?" * len(chunk))
                self.conn.execute(
                    f"DELETE FROM messages WHERE mailbox_id = ? AND uid IN ({marks})",
                    (box.id, *chunk),
                )
                for table in ("message_data", "message_search"):
                    self.conn.execute(
                        f"DELETE FROM {table} WHERE mailbox_id = ? AND uid IN ({marks})",
                        (box.id, *chunk),
                    )
            # RFC 7162 §3.2.7: remember each expunged UID with the modseq of its expunge.
            tombstones.record(self.conn, box.id, modseq, uids)
            self.conn.execute(
                "UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id)
            )

    def reflag(self, box: Mailbox, renamed: list[tuple[int, str]]) -> None:
        """Files renamed by another program: their flags are what the new names say."""
        names = self.index.keyword_names(box)
        modseq = self.next_modseq(box)
        with db.Transaction(self.conn):
            for uid, fname in renamed:
                mask, keywords = fl.parse_info(fl.split_filename(fname)[1], names)
                self.conn.execute(
                    "UPDATE messages SET flags = ?, keywords = ?, fname = ?, modseq = ?"
                    " WHERE mailbox_id = ? AND uid = ?",
                    (mask, " ".join(keywords), fname, modseq, box.id, uid),
                )
            self.conn.execute(
                "UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id)
            )

    def add_files(
        self,
        box: Mailbox,
        fnames: list[str],
        *,
        rebuild: bool,
        full_text: bool = True,
        delivered: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Index files already in ``cur/``; ``rebuild`` reuses UIDs from dovecot-uidlist.
        Returns the UIDs of the files indexed (a file gone meanwhile is left out).

        Files that came with ``delivered`` (SMTP's, whose sizes delivery knew) get small
        rows: on delivery's path the parse would be most of the cost of indexing (it is
        SMTP's CPU, per message), and the user's next session parses them in the
        background, with their full-text rows, from one read of each file."""
        self.index.uids_changed(box)
        known = uidlist.read(box.path) if rebuild else None
        if known is not None and known.uidvalidity != box.uidvalidity:
            known = None
        assigned = self._assign_uids(box, fnames, known)
        modseq = self.next_modseq(box)
        # New mail is searchable at once; a big batch (a Maildir copied in) must not make
        # the first SELECT wait for its full-text index: the backfill does it later.
        texts = full_text and self.index.full_text and len(assigned) <= fulltext.INLINE_MAX
        if self.index.full_text and not texts and assigned:
            self.index.backfill_wanted = True
        names = self.index.keyword_names(box)
        # A big batch (a Maildir copied in, a rebuilt index) gets its small rows now and is
        # parsed later, so that the SELECT that found it answers at once (store.lazyparse).
        lazy = len(assigned) > lazyparse.INLINE_MAX or delivered is not None
        if lazy:
            self.index.unparsed = self.index.parse_wanted = True
        if len(assigned) > lazyparse.INLINE_MAX:
            added = self._insert_bulk(box, assigned, names, modseq, delivered)
        else:
            added = self._insert_batches(box, assigned, names, modseq, delivered, lazy, texts)
        with db.Transaction(self.conn):
            self.conn.execute(
                "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
                (box.uidnext, box.highestmodseq, box.id),
            )
        if known is None or not known.uids:  # new UIDs only, in order: lines to append
            uidlist.append(
                box.path,
                box.uidvalidity,
                box.uidnext,
                [(uid, fl.split_filename(f)[0]) for uid, f in assigned],
            )
        else:
            self.rewrite_uidlist(box)
        return added

    def _assign_uids(
        self, box: Mailbox, fnames: list[str], known: uidlist.UidList | None
    ) -> list[tuple[int, str]]:
        """(UID, file name) for each file: its uidlist UID if ``known`` has one not taken,
        else the next UIDs in order (``box.uidnext`` moves on)."""
        used: set[int] = set()
        if known is not None:
            used = {
                r[0]
                for r in self.conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ?", (box.id,)
                )
            }
            box.uidnext = max(box.uidnext, known.next_uid)
        if known is None or not known.uids:  # no UID to reuse: the next ones, in order
            first = box.uidnext
            box.uidnext += len(fnames)
            return list(zip(range(first, box.uidnext), fnames, strict=True))
        assigned: list[tuple[int, str]] = []
        fresh: list[str] = []
        for fname in fnames:
            base = fl.split_filename(fname)[0]
            uid = known.uids.get(base)
            if uid is not None and uid not in used:
                used.add(uid)
                assigned.append((uid, fname))
            else:
                fresh.append(fname)
        for fname in fresh:
            assigned.append((box.uidnext, fname))
            box.uidnext += 1
        return assigned

    def _insert_small(
        self,
        box: Mailbox,
        batch: list[tuple[int, str]],
        names: list[str],
        modseq: int,
        sizes: Mapping[str, int] | None,
    ) -> list[int]:
        rows = lazyparse.small_rows(box, batch, names, modseq, sizes)
        self._insert(box, partial(lazyparse.insert_small, self.conn, rows))
        return [r.message[1] for r in rows]

    def _insert_batches(
        self,
        box: Mailbox,
        assigned: list[tuple[int, str]],
        names: list[str],
        modseq: int,
        sizes: Mapping[str, int] | None,
        lazy: bool,
        texts: bool,
    ) -> list[int]:
        """Rows ``ROWS_PER_TRANSACTION`` at a time, the insert triggers firing per row:
        small ones when ``lazy``, else parsed ones (with their full-text rows if ``texts``)."""
        added: list[int] = []
        for start in range(0, len(assigned), ROWS_PER_TRANSACTION):
            batch = assigned[start : start + ROWS_PER_TRANSACTION]
            if lazy:
                added += self._insert_small(box, batch, names, modseq, sizes)
                continue
            rows: list[IndexRow] = []
            for uid, fname in batch:
                row = parsed_row(box, uid, fname, names, modseq, texts=texts)
                if row is not None:
                    rows.append(row)
            self._insert(box, partial(insert_rows, self.conn, rows))
            added += [r.message[1] for r in rows]
        return added

    def _insert_bulk(
        self,
        box: Mailbox,
        assigned: list[tuple[int, str]],
        names: list[str],
        modseq: int,
        sizes: Mapping[str, int] | None,
    ) -> list[int]:
        """A big batch of small rows in one transaction, the insert triggers done once for
        all of them (store.bulkrows): the first SELECT of a Maildir copied in waits for
        this. Built and written ``ROWS_PER_TRANSACTION`` at a time (memory stays flat)."""
        added: list[int] = []
        with db.Transaction(self.conn):
            with bulkrows.insert_triggers_suspended(self.conn, box.id, modseq):
                for start in range(0, len(assigned), ROWS_PER_TRANSACTION):
                    batch = assigned[start : start + ROWS_PER_TRANSACTION]
                    rows = lazyparse.small_rows(box, batch, names, modseq, sizes)
                    lazyparse.insert_small(self.conn, rows)
                    added += [r.message[1] for r in rows]
            self._commit_uidnext(box)
        return added

    def _insert(self, box: Mailbox, write: Callable[[], None]) -> None:
        with db.Transaction(self.conn):
            write()
            self._commit_uidnext(box)

    def _commit_uidnext(self, box: Mailbox) -> None:
        # UIDNEXT commits with the rows: were it a later transaction, a crash in between
        # would leave rows at or above UIDNEXT, whose UIDs the next message would take.
        self.conn.execute(
            "UPDATE mailboxes SET uidnext = max(uidnext, ?),"
            " highestmodseq = max(highestmodseq, ?) WHERE id = ?",
            (box.uidnext, box.highestmodseq, box.id),
        )

    def rewrite_uidlist(self, box: Mailbox) -> None:
        rows = self.conn.execute(
            "SELECT uid, base FROM messages WHERE mailbox_id = ? ORDER BY uid", (box.id,)
        )
        uidlist.write(box.path, box.uidvalidity, box.uidnext, ((r[0], r[1]) for r in rows))

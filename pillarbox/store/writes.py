"""Changing mail: flags (STORE), EXPUNGE, APPEND, COPY and MOVE, and indexing delivered
mail, on one user's index (:class:`IndexWriter`).

Each operation changes the Maildir first (rename, link, unlink, write) and then commits the
index; the Maildir stays authoritative, so a crash between the two is repaired by the next
sync. The writer reaches the index only through :class:`WritableIndex`, the public
interface ``store.index.UserIndex`` offers it (no private methods, and no import of the
index module: the index imports this one, never the other way round).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from pillarbox.mailstore.quota import refuse_over_quota
from pillarbox.mailstore.rows import Appended, Copied, FlagUpdate
from pillarbox.store import db, fulltext, lazyparse, sortkeys, uidlist
from pillarbox.store import flags as fl
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.maildir import deliver, unique_name
from pillarbox.store.types import MailboxError, StoreResult


class WritableIndex(Protocol):
    """What :class:`IndexWriter` uses of a user's index (``store.index.UserIndex``)."""

    conn: sqlite3.Connection

    @property
    def full_text(self) -> bool: ...

    def mailbox(self, name: str) -> Mailbox: ...

    def sync(
        self,
        box: Mailbox,
        *,
        full: bool = False,
        full_text: bool = True,
        delivered: Mapping[str, int] | None = None,
    ) -> Mailbox: ...

    def keyword_names(self, box: Mailbox) -> list[str]: ...

    def rows_in(
        self, box: Mailbox, ranges: Iterable[tuple[int, int]], columns: str
    ) -> Iterator[sqlite3.Row]: ...

    def add_files(self, box: Mailbox, fnames: list[str]) -> list[int]: ...

    def remove_rows(self, box: Mailbox, uids: list[int]) -> None: ...

    def rewrite_uidlist(self, box: Mailbox) -> None: ...

    def set_cur_mtime(self, box: Mailbox, mtime: int) -> None: ...

    def next_modseq(self, box: Mailbox) -> int: ...

    def usage(self) -> int: ...

    def measure_sizes(self) -> None: ...


class IndexWriter:
    """The changes of one user's index (see the module docstring); every method expects
    the index lock to be held, like the index methods that call it."""

    def __init__(self, index: WritableIndex):
        self.index = index

    def store_flags(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        """Change flags: ``mode`` is ``add``, ``remove`` or ``replace`` (RFC 3501 §6.4.6)."""
        box = self.index.mailbox(name)
        previous = box.highestmodseq
        mask, keywords = fl.split_flags(flags)
        names = self.index.keyword_names(box)
        if mode != "remove" and keywords:
            fl.ensure_keywords(box.path, names, keywords)
        cur = box.path / "cur"
        before = os.stat(cur).st_mtime_ns
        modseq = box.highestmodseq + 1
        updated: list[FlagUpdate] = []
        failed: list[int] = []
        changes: list[tuple[Any, ...]] = []
        # Info letters per (old letters, new mask, new keywords): a STORE 1:* meets a few.
        infos: dict[tuple[str, int, tuple[str, ...]], str] = {}
        # Renames relative to cur/'s descriptor: no path built and resolved per message
        # (a STORE 1:* renames every file of a 50,000-message mailbox, as Dovecot does).
        cur_fd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for row in self.index.rows_in(box, ranges, "uid, flags, keywords, fname, modseq"):
                uid, old_mask, old_kw_text, fname, old_modseq = row
                if unchanged_since is not None and old_modseq > unchanged_since:
                    failed.append(uid)
                    continue
                old_kw = old_kw_text.split() if old_kw_text else []
                if mode == "add":
                    # Keywords compare case-insensitively (as Dovecot does): no "$Work" and
                    # "$work".
                    have = {k.lower() for k in old_kw}
                    new_mask, new_kw = (
                        old_mask | mask,
                        old_kw + [k for k in keywords if k.lower() not in have],
                    )
                elif mode == "remove":
                    drop = {k.lower() for k in keywords}
                    new_mask = old_mask & ~mask
                    new_kw = [k for k in old_kw if k.lower() not in drop]
                else:
                    new_mask, new_kw = mask, list(keywords)
                if new_mask == old_mask and new_kw == old_kw:
                    updated.append(
                        FlagUpdate(uid, fl.flags_text(old_mask, old_kw_text), old_modseq)
                    )
                    continue
                base, info = fl.split_filename(fname)
                key = (info, new_mask, tuple(new_kw))
                new_info = infos.get(key)
                if new_info is None:
                    new_info = infos[key] = fl.make_info(info, new_mask, new_kw, names)
                new_fname = f"{base}:2,{new_info}"
                if new_fname != fname:
                    try:
                        os.rename(fname, new_fname, src_dir_fd=cur_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        continue  # gone under us: the next sync expunges it
                kw_text = " ".join(new_kw)
                changes.append((new_mask, kw_text, new_fname, modseq, box.id, uid))
                updated.append(FlagUpdate(uid, fl.flags_text(new_mask, kw_text), modseq))
        finally:
            os.close(cur_fd)
        if changes:
            with db.Transaction(self.index.conn):
                self.index.conn.executemany(
                    "UPDATE messages SET flags = ?, keywords = ?, fname = ?, modseq = ?"
                    " WHERE mailbox_id = ? AND uid = ?",
                    changes,
                )
                self.index.conn.execute(
                    "UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id)
                )
            box.highestmodseq = modseq
            if before == box.cur_mtime:
                self.index.set_cur_mtime(box, os.stat(cur).st_mtime_ns)
        return StoreResult(updated, failed, box.highestmodseq, previous)

    def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]:
        """Remove the ``\\Deleted`` messages (within ``ranges`` if given); their UIDs."""
        box = self.index.mailbox(name)
        ranges = ranges if ranges is not None else [(1, 0xFFFFFFFF)]
        victims = [
            (r[0], r[1])
            for r in self.index.rows_in(box, ranges, "uid, fname, flags")
            if r[2] & fl.DELETED
        ]
        return self.expunge_rows(box, victims)

    def expunge_rows(self, box: Mailbox, victims: list[tuple[int, str]]) -> list[int]:
        if not victims:
            return []
        cur = box.path / "cur"
        before = os.stat(cur).st_mtime_ns
        for _, fname in victims:
            try:
                os.unlink(cur / fname)
            except FileNotFoundError:
                pass
        uids = [uid for uid, _ in victims]
        self.index.remove_rows(box, uids)
        self.index.rewrite_uidlist(box)
        if before == box.cur_mtime:
            self.index.set_cur_mtime(box, os.stat(cur).st_mtime_ns)
        return uids

    def append(
        self,
        name: str,
        data: bytes,
        flags: tuple[str, ...],
        internal_date: float | None,
        *,
        limit: int = 0,
    ) -> Appended:
        """Store a message; returns (UIDVALIDITY, UID) for APPENDUID (RFC 4315). ``limit`` is
        the user's quota in bytes (0: none); a message that does not fit is refused."""
        try:
            box = self.index.mailbox(name)
        except MailboxError:
            raise MailboxError("TRYCREATE", f"no mailbox {name}") from None
        self.check_quota(len(data), limit)
        box = self.index.sync(box)  # index anything else first, so UIDs stay in arrival order
        mask, keywords = fl.split_flags(flags)
        names = self.index.keyword_names(box)
        fl.ensure_keywords(box.path, names, keywords)
        info = fl.make_info("", mask, keywords, names)
        cur = box.path / "cur"
        before = os.stat(cur).st_mtime_ns
        path = deliver(box.path, [data], subdir="cur", info=info)
        if internal_date is not None:
            os.utime(path, (internal_date, internal_date))
        added = self.index.add_files(box, [path.name])
        if before == box.cur_mtime:
            self.index.set_cur_mtime(box, os.stat(cur).st_mtime_ns)
        if not added:
            raise MailboxError("", "message vanished while being stored")
        return Appended(box.uidvalidity, added[0])

    def take_delivered(self, names: list[str], sizes: Mapping[str, int]) -> None:
        """Index the files delivery wrote into the ``new/`` of each mailbox in ``names``;
        ``sizes`` maps their base names to their CRLF sizes (delivery had the bytes).

        The sync does it as for any file found in ``new/``: it moves the file to ``cur/`` and
        gives it its UID, MODSEQ and index rows. That is also why a crash cannot lose or
        double a delivery: until the rename the file is only in ``new/``, which every sync
        lists; after the rename and before the row's commit, ``cur/``'s mtime differs from the
        one the index recorded, so the next sync lists ``cur/`` and adds the file it does not
        know; once the row is committed the file is known by its base name and never added
        again (a UID is never given twice: the rows and the mailbox's UIDNEXT commit together).
        """
        # One WAL commit for the whole batch (the sync's own transactions nest as savepoints):
        # this runs for every delivery, and a commit costs more than a message's rows.
        with db.Transaction(self.index.conn):
            for name in names:
                try:
                    box = self.index.mailbox(name)
                except MailboxError:
                    continue  # deleted meanwhile: nothing left to index
                # Small rows (store.lazyparse): the parse and the full-text rows are the
                # dearest part, and SMTP's CPU; the user's next session does them in the
                # background, and whatever reads a column they fill does them first.
                self.index.sync(box, full_text=False, delivered=sizes)

    def copy(
        self,
        src_name: str,
        ranges: list[tuple[int, int]],
        dst_name: str,
        *,
        move: bool,
        limit: int = 0,
    ) -> Copied:
        """COPY/MOVE; returns (destination UIDVALIDITY, source UIDs, destination UIDs).

        A COPY adds the copies' bytes to the usage and is refused whole when they do not fit
        in ``limit`` (RFC 9208 §4.3: nothing is copied). A MOVE adds nothing, every folder of a
        user being under one quota root, so it is never refused: a user over quota can still
        move mail to Trash to delete it."""
        src = self.index.mailbox(src_name)
        try:
            dst = self.index.mailbox(dst_name)
        except MailboxError:
            raise MailboxError("TRYCREATE", f"no mailbox {dst_name}") from None
        dst = self.index.sync(dst)
        if not move and limit > 0:
            self.index.measure_sizes()  # the sizes a quota adds up are CRLF sizes
        rows = list(self.index.rows_in(src, ranges, "uid, flags, keywords, fname, size"))
        if not move:
            self.check_quota(sum(r[4] for r in rows), limit)
        dst_names = self.index.keyword_names(dst)
        all_kw = sorted({k for r in rows for k in r[2].split()})
        fl.ensure_keywords(dst.path, dst_names, all_kw)
        dst_cur = dst.path / "cur"
        dst_before = os.stat(dst_cur).st_mtime_ns
        src_uids: list[int] = []
        dst_uids: list[int] = []
        moved: list[tuple[int, str]] = []
        modseq = self.index.next_modseq(dst)
        entries: list[tuple[int, str]] = []  # (destination UID, base name) for the uidlist
        pending: list[tuple[int, int, str, str]] = []  # (source UID, new UID, base, file name)
        for uid, mask, kw_text, fname, size in rows:
            base, info = fl.split_filename(fname)
            keep = "".join(ch for ch in info if not ("a" <= ch <= "z"))
            new_info = fl.make_info(keep, mask, kw_text.split(), dst_names)
            new_base = base if move else unique_name(size)
            new_fname = f"{new_base}:2,{new_info}"
            try:
                if move and src.path != dst.path:
                    os.rename(src.path / "cur" / fname, dst_cur / new_fname)
                else:
                    os.link(src.path / "cur" / fname, dst_cur / new_fname)
            except FileNotFoundError:
                continue
            pending.append((uid, dst.uidnext, new_base, new_fname))
            src_uids.append(uid)
            dst_uids.append(dst.uidnext)
            entries.append((dst.uidnext, new_base))
            moved.append((uid, fname))
            dst.uidnext += 1
            if len(pending) >= 500:
                self._copy_rows(src.id, dst.id, modseq, pending)
                pending = []
        self._copy_rows(src.id, dst.id, modseq, pending)
        with db.Transaction(self.index.conn):
            self.index.conn.execute(
                "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
                (dst.uidnext, dst.highestmodseq, dst.id),
            )
        uidlist.append(dst.path, dst.uidvalidity, dst.uidnext, entries)
        if dst_before == dst.cur_mtime:
            self.index.set_cur_mtime(dst, os.stat(dst_cur).st_mtime_ns)
        if move and moved:
            src = self.index.mailbox(src_name)
            src_before = os.stat(src.path / "cur").st_mtime_ns
            if src.path == dst.path:  # MOVE into the same mailbox: drop the old links
                for _, fname in moved:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(src.path / "cur" / fname)
            self.index.remove_rows(src, [u for u, _ in moved])
            self.index.rewrite_uidlist(src)
            if src_before == src.cur_mtime:
                self.index.set_cur_mtime(src, os.stat(src.path / "cur").st_mtime_ns)
        return Copied(dst.uidvalidity, src_uids, dst_uids)

    def check_quota(self, adding: int, limit: int) -> None:
        """MailboxError OVERQUOTA (RFC 9208 §4.3) when ``adding`` bytes do not fit."""
        if limit > 0:  # no limit: the usage is not even read
            refuse_over_quota(self.index.usage(), adding, limit)

    def _copy_rows(
        self, src_id: int, dst_id: int, modseq: int, batch: list[tuple[int, int, str, str]]
    ) -> None:
        """Copy the index rows of ``(source UID, new UID, base, file name)`` in one transaction."""
        if not batch:
            return
        with db.Transaction(self.index.conn):
            self.index.conn.executemany(
                "INSERT INTO messages SELECT ?, ?, flags, keywords, ?, internal_date, size,"
                " sent_date, ?, ? FROM messages WHERE mailbox_id = ? AND uid = ?",
                [
                    (dst_id, new, modseq, base, fname, src_id, uid)
                    for uid, new, base, fname in batch
                ],
            )
            for table, columns in (("message_data", "envelope, structure, header, imap_envelope"),
                                   ("message_search", "text")):  # fmt: skip
                self.index.conn.executemany(
                    f"INSERT INTO {table} (mailbox_id, uid, {columns}) SELECT ?, ?, {columns}"
                    f" FROM {table} WHERE mailbox_id = ? AND uid = ?",
                    [(dst_id, new, src_id, uid) for uid, new, _, _ in batch],
                )
            sortkeys.copy(self.index.conn, [(src_id, uid, dst_id, new) for uid, new, _, _ in batch])
            # A copy of a message not parsed yet is not parsed either (store.lazyparse).
            lazyparse.copy_pending(
                self.index.conn, [(src_id, uid, dst_id, new) for uid, new, _, _ in batch]
            )
            if self.index.full_text:
                fulltext.copy(
                    self.index.conn, [(src_id, uid, dst_id, new) for uid, new, _, _ in batch]
                )

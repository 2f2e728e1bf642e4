"""The folders of one user's index: which mailboxes exist, and making, renaming and
deleting them (Maildir++ folders on disk, rows in ``mailboxes``), with subscriptions.

The folders on disk are the truth (another tool may make or remove one): :meth:`Folders.
discover` reconciles the table with them, and :meth:`Folders.mailbox` looks at the disk
before it answers for a name. A new user gets INBOX and the RFC 6154 special-use folders.
Each mailbox keeps its UIDVALIDITY from ``dovecot-uidlist`` when it has one, so a rebuilt
index (or one built over Dovecot's Maildir) keeps the UIDs clients know.

Blocking, and expects the index lock to be held (see ``store.index``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pillarbox.mailstore.names import SPECIAL_USE
from pillarbox.store import db, uidlist
from pillarbox.store import flags as fl
from pillarbox.store import vanished as tombstones
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.maildir import ensure_maildir, fsync_dir
from pillarbox.store.names import INBOX, BadMailboxName, folder_dir, name_of_dir, parent_names
from pillarbox.store.types import MailboxError, MailboxInfo


class Folders:
    """See the module docstring. ``on_drop`` is told the id of every mailbox whose rows go
    (deleted, or vanished from disk), so caches keyed by it can forget it."""

    def __init__(self, conn: sqlite3.Connection, root: Path, on_drop: list[Callable[[int], None]]):
        self.conn = conn
        self.root = root
        self._on_drop = on_drop
        self._keywords: dict[int, list[str]] = {}  # dovecot-keywords per mailbox id

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
        for dropped in self._on_drop:
            dropped(mailbox_id)
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
        """Every folder, after a look at the disk (another tool may have made one)."""
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

    def rename(self, old: str, new: str) -> Mailbox | None:
        """Rename folder ``old`` and those below it. INBOX itself is never renamed: ``new``
        is made and INBOX returned, whose messages the caller moves there (RFC 3501
        §6.3.5; moving messages is the writer's job)."""
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
            return box
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
        return None

    def keyword_names(self, box: Mailbox) -> list[str]:
        names = self._keywords.get(box.id)
        if names is None:
            names = self._keywords[box.id] = fl.read_keywords(box.path)
        return names

    def forget_keywords(self, box: Mailbox) -> None:
        """Read ``dovecot-keywords`` again next time (another writer may have added one)."""
        self._keywords.pop(box.id, None)

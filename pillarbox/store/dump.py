"""Read a user's mail as it is stored, for exports and comparisons: read-only, any time.

Works on a read-only connection to the user's index, so it is safe while the server runs
(SQLite WAL: a consistent snapshot of committed state). A flag change may rename a message
file after the snapshot was read; :func:`read_message` then finds it by its base name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pillarbox.store import db
from pillarbox.store import flags as fl
from pillarbox.store.names import folder_dir


@dataclass(frozen=True, slots=True)
class StoredMailbox:
    name: str
    path: Path
    uidvalidity: int
    uidnext: int
    special_use: str | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    uid: int
    flags: tuple[str, ...]  # IMAP names: system flags then keywords
    internal_date: int
    base: str
    fname: str


class MailDump:
    """The mailboxes and messages of the user whose Maildir++ root is ``root``."""

    def __init__(self, root: Path):
        from pillarbox.store.index import INDEX_FILE

        self.root = root
        self.conn = db.connect(root / INDEX_FILE, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def mailboxes(self) -> list[StoredMailbox]:
        rows = self.conn.execute(
            "SELECT name, uidvalidity, uidnext, special_use FROM mailboxes ORDER BY name"
        ).fetchall()
        result = []
        for name, uidvalidity, uidnext, special_use in rows:
            directory = folder_dir(name)
            path = self.root / directory if directory else self.root
            result.append(StoredMailbox(name, path, uidvalidity, uidnext, special_use))
        return result

    def messages(self, box: StoredMailbox) -> Iterator[StoredMessage]:
        rows = self.conn.execute(
            "SELECT m.uid, m.flags, m.keywords, m.internal_date, m.base, m.fname"
            " FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
            " WHERE b.name = ? ORDER BY m.uid",
            (box.name,),
        )
        for uid, mask, keywords, internal_date, base, fname in rows:
            flags = tuple(fl.flags_text(mask, keywords).split())
            yield StoredMessage(uid, flags, internal_date, base, fname)

    def read_message(self, box: StoredMailbox, message: StoredMessage) -> bytes | None:
        """The file's bytes as stored (None if it was expunged since the snapshot)."""
        cur = box.path / "cur"
        try:
            return (cur / message.fname).read_bytes()
        except FileNotFoundError:
            pass
        prefix = message.base + ":"
        for name in os.listdir(cur):
            if name == message.base or name.startswith(prefix):
                try:
                    return (cur / name).read_bytes()
                except FileNotFoundError:
                    return None
        return None

"""Storage usage of one user's mail, for quotas (RFC 9208 STORAGE).

Usage is the bytes of every message in every folder of the user, read from the mail index
without touching the messages:

- Indexed messages: the ``mailbox_usage`` table holds bytes and messages per mailbox and is
  kept by triggers on ``messages`` (an INSERT adds, a DELETE subtracts, a size UPDATE
  moves the difference), so the total is one small query whatever the mailbox size, and it
  can never drift from the rows: the triggers run in the transaction of every change.
  A REPLACE of a row fires the DELETE trigger only with ``recursive_triggers`` on, which
  :func:`prepare` sets on the index's write connection.
- Delivered but not yet indexed: files in a folder's ``new/`` (SMTP delivery writes there
  and the index takes them at the next IMAP/POP3 sync). Their names carry the size
  (``,S=1234``, written by every Pillarbox writer and by Dovecot), so listing ``new/`` is
  enough; only a name without ``S=`` costs a ``stat``.

The migration is its own line in ``schema_versions`` (component ``mailindex.quota``), so it
never renumbers the index's other migrations; an index made before it is counted once,
when the migration runs, and kept by the triggers after.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from pillarbox.store import db

COMPONENT: Final = "mailindex.quota"
INSERT_TRIGGER: Final = "mailbox_usage_insert"  # see count_batch
_SIZE_IN_NAME: Final = re.compile(r",S=(\d+)")

_USAGE_SCHEMA: Final = (
    """CREATE TABLE mailbox_usage (
        mailbox_id INTEGER PRIMARY KEY,
        bytes INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0
    )""",
    """INSERT INTO mailbox_usage (mailbox_id, bytes, messages)
        SELECT mailbox_id, sum(size), count(*) FROM messages GROUP BY mailbox_id""",
    f"""CREATE TRIGGER {INSERT_TRIGGER} AFTER INSERT ON messages BEGIN
        INSERT INTO mailbox_usage (mailbox_id, bytes, messages) VALUES (NEW.mailbox_id, NEW.size, 1)
        ON CONFLICT (mailbox_id) DO UPDATE SET
            bytes = bytes + excluded.bytes, messages = messages + 1;
    END""",
    """CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON messages BEGIN
        UPDATE mailbox_usage SET bytes = bytes - OLD.size, messages = messages - 1
        WHERE mailbox_id = OLD.mailbox_id;
    END""",
    """CREATE TRIGGER mailbox_usage_resize AFTER UPDATE OF size, mailbox_id ON messages BEGIN
        UPDATE mailbox_usage SET bytes = bytes - OLD.size, messages = messages - 1
        WHERE mailbox_id = OLD.mailbox_id;
        INSERT INTO mailbox_usage (mailbox_id, bytes, messages) VALUES (NEW.mailbox_id, NEW.size, 1)
        ON CONFLICT (mailbox_id) DO UPDATE SET
            bytes = bytes + excluded.bytes, messages = messages + 1;
    END""",
    # A mailbox deleted with its rows leaves a zero row behind: drop it with the mailbox.
    """CREATE TRIGGER mailbox_usage_drop AFTER DELETE ON mailboxes BEGIN
        DELETE FROM mailbox_usage WHERE mailbox_id = OLD.id;
    END""",
)


def _add_usage(conn: sqlite3.Connection) -> None:
    # One statement at a time: a trigger body holds ";", which db.migrate's split would cut.
    for statement in _USAGE_SCHEMA:
        conn.execute(statement)


MIGRATIONS: Final[list[db.Migration]] = [_add_usage]


def count_batch(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> None:
    """What :data:`INSERT_TRIGGER` does per row, once for the rows of ``mailbox_id`` with
    ``modseq``: a batch inserted while the trigger was suspended (``store.bulkrows``)."""
    conn.execute(
        """INSERT INTO mailbox_usage (mailbox_id, bytes, messages)
        SELECT mailbox_id, sum(size), count(*) FROM messages
        WHERE mailbox_id = ? AND modseq = ? GROUP BY mailbox_id
        ON CONFLICT (mailbox_id) DO UPDATE SET
            bytes = bytes + excluded.bytes, messages = messages + excluded.messages""",
        (mailbox_id, modseq),
    )


def prepare(conn: sqlite3.Connection) -> None:
    """Migrate the index's write connection and make REPLACE keep the usage right."""
    conn.execute("PRAGMA recursive_triggers = ON")
    db.migrate(conn, COMPONENT, MIGRATIONS)


def indexed_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the indexed messages of every mailbox."""
    return int(conn.execute("SELECT coalesce(sum(bytes), 0) FROM mailbox_usage").fetchone()[0])


def pending_bytes(folders: Iterable[Path]) -> int:
    """Bytes of the files waiting in ``new/`` of ``folders`` (delivered, not yet indexed)."""
    total = 0
    for folder in folders:
        try:
            names = os.listdir(folder / "new")
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name.startswith("."):
                continue
            total += _file_size(folder / "new", name)
    return total


def _file_size(directory: Path, name: str) -> int:
    found = _SIZE_IN_NAME.search(name)
    if found is not None:
        return int(found.group(1))
    with contextlib.suppress(FileNotFoundError):  # taken into cur/ meanwhile
        return os.lstat(directory / name).st_size
    return 0


def read_usage(root: Path, index_file: str) -> int | None:
    """The usage of the Maildir at ``root`` read without opening it for writing (the CLI,
    beside a running server); None when its index has no usage table yet (never opened
    by this release: the next IMAP/POP3 login or delivery counts it)."""
    path = root / index_file
    if not path.exists():
        return None
    conn = db.connect(path, readonly=True)
    try:
        indexed = indexed_bytes(conn)
        folders = [root] + [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return indexed + pending_bytes(folders)

"""What an IMAP import has copied already: ``DATA_DIR/import-state.sqlite``.

A folder's messages are known by (UIDVALIDITY, UID) (RFC 3501 §2.3.1.1: the pair names one
message for ever). A re-run asks the server for the folder's UIDs and fetches only those not
recorded here, so it copies what is new and what an interrupted run missed. If the server
changed the folder's UIDVALIDITY nothing recorded applies; the folder is fetched again and
the store's content digests (``pillarbox.store.imports``) keep copies out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from pillarbox.store import db

FILENAME: Final = "import-state.sqlite"
_MIGRATIONS: Final[list[db.Migration]] = [
    """
    CREATE TABLE copied (
        source TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        PRIMARY KEY (source, folder, uidvalidity, uid)
    ) WITHOUT ROWID
    """,
]


class ImportState:
    def __init__(self, data_dir: Path):
        self.conn = db.connect(data_dir / FILENAME)
        db.migrate(self.conn, "imapimport", _MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    def copied(self, source: str, folder: str, uidvalidity: int) -> set[int]:
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT uid FROM copied WHERE source = ? AND folder = ? AND uidvalidity = ?",
                (source, folder, uidvalidity),
            )
        }

    def mark(self, source: str, folder: str, uidvalidity: int, uids: Iterable[int]) -> None:
        with db.Transaction(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO copied VALUES (?, ?, ?, ?)",
                [(source, folder, uidvalidity, uid) for uid in uids],
            )

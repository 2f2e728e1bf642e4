"""Read-only index queries (FETCH, SEARCH), on a connection of their own.

SQLite in WAL mode lets readers work on the last committed snapshot while the writer
commits, so FETCH and SEARCH of one session need not wait for another session's STORE or
APPEND of the same user: ``UserMailboxes`` runs these on a small pool of read-only
connections, outside the user's write lock. A file renamed by a flag change that is not
committed yet can make ``read_message`` miss; the caller then retries under the write lock.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from pathlib import Path
from typing import Any, Final

from pillarbox import mime
from pillarbox.store import flags as fl
from pillarbox.store import fulltext
from pillarbox.store.names import BadMailboxName, folder_dir
from pillarbox.store.query import compile_filter
from pillarbox.store.types import MailboxError

CHUNK: Final = 2000
# (UIDs "1,2,3", masks "1,0,5", modseqs "7,7,9", keyword lines "2 $Work\n3 a b", last UID)
FlagBatch = tuple[str, str, str, str, int]


class IndexReader:
    """Queries over one SQLite connection (used by one thread at a time)."""

    def __init__(self, conn: sqlite3.Connection, root: Path):
        self.conn = conn
        self.root = root

    def _box(self, name: str) -> tuple[int, Path]:
        try:
            directory = folder_dir(name)
        except BadMailboxName as exc:
            raise MailboxError("NONEXISTENT", str(exc)) from None
        row = self.conn.execute("SELECT id FROM mailboxes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MailboxError("NONEXISTENT", f"no mailbox {name}")
        return row[0], (self.root / directory if directory else self.root)

    def fetch(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        *,
        data: bool,
        limit: int = CHUNK,
        changed_since: int = 0,
    ) -> list[tuple[Any, ...]]:
        """Rows ``(uid, flags text, internal date, size, modseq[, envelope, structure,
        header])`` for UIDs in ``ranges`` (sorted, disjoint), at most ``limit``; only rows
        with a modseq above ``changed_since`` (CHANGEDSINCE, RFC 7162 §3.1.4.1)."""
        box_id = self._box(name)[0]
        out: list[tuple[Any, ...]] = []
        if data:
            sql = (
                "SELECT m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq,"
                " d.envelope, d.structure, d.header FROM messages m JOIN message_data d"
                " ON d.mailbox_id = m.mailbox_id AND d.uid = m.uid"
                " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? AND m.modseq > ?"
                " ORDER BY m.uid LIMIT ?"
            )
        else:
            sql = (
                "SELECT uid, flags, keywords, internal_date, size, modseq FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? AND modseq > ?"
                " ORDER BY uid LIMIT ?"
            )
        text = fl.flags_text
        for lo, hi in ranges:
            for r in self.conn.execute(sql, (box_id, lo, hi, changed_since, limit - len(out))):
                if data:
                    out.append(
                        (
                            r[0],
                            text(r[1], r[2]),
                            r[3],
                            r[4],
                            r[5],
                            json.loads(r[6]),
                            json.loads(r[7]),
                            r[8],
                        )
                    )
                else:
                    out.append((r[0], text(r[1], r[2]), r[3], r[4], r[5]))
            if len(out) >= limit:
                break
        return out

    def search_uids(self, name: str, where: Any) -> tuple[array[int], int]:
        """UIDs matching an exact filter, and the highest modseq among them (one row)."""
        box_id = self._box(name)[0]
        condition, params, needs_text = compile_filter(where)
        source = "messages m"
        if needs_text:
            source += " JOIN message_search d ON d.mailbox_id = m.mailbox_id AND d.uid = m.uid"
        row = self.conn.execute(
            f"SELECT group_concat(uid), max(modseq) FROM (SELECT m.uid, m.modseq FROM {source}"
            f" WHERE m.mailbox_id = ? AND {condition} ORDER BY m.uid)",
            (box_id, *params),
        ).fetchone()
        uids = array("I", map(int, row[0].split(","))) if row[0] else array("I")
        return uids, row[1] or 0

    def fetch_flags(
        self, name: str, ranges: list[tuple[int, int]], limit: int = CHUNK * 5
    ) -> FlagBatch:
        """The narrow FETCH FLAGS path for up to ``limit`` messages of the first non-empty
        range: UIDs, flag masks and modseqs as comma-separated columns, keywords as
        ``uid keywords`` lines (only messages that have any), and the last UID (0: none).

        Whole columns as single ``group_concat`` strings: turning 50,000 SQLite rows into
        Python tuples costs more than the whole rest of ``UID FETCH 1:* (FLAGS)``.
        """
        box_id = self._box(name)[0]
        for lo, hi in ranges:
            uids, masks, modseqs, last = self.conn.execute(
                "SELECT group_concat(uid), group_concat(flags), group_concat(modseq), max(uid)"
                " FROM (SELECT uid, flags, modseq FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid LIMIT ?)",
                (box_id, lo, hi, limit),
            ).fetchone()
            if uids is None:
                continue
            keywords = self.conn.execute(
                "SELECT group_concat(uid || ' ' || keywords, char(10)) FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? AND keywords != ''",
                (box_id, lo, last),
            ).fetchone()[0]
            return uids, masks, modseqs, keywords or "", last
        return "", "", "", "", 0

    def search_rows(
        self,
        name: str,
        lo: int,
        hi: int,
        *,
        header: bool,
        where: Any = None,
        limit: int = CHUNK * 5,
    ) -> list[tuple[Any, ...]]:
        """``(uid, flags mask, keywords, internal date, size, modseq, sent date[, search
        text])`` for UIDs lo..hi matching the filter ``where`` (see ``store.query``)."""
        box_id = self._box(name)[0]
        condition, params, needs_text = compile_filter(where or ("all",))
        columns = "m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq, m.sent_date"
        source = "messages m"
        if header or needs_text:
            columns += ", d.text"
            source += " JOIN message_search d ON d.mailbox_id = m.mailbox_id AND d.uid = m.uid"
        sql = (
            f"SELECT {columns} FROM {source} WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?"
            f" AND {condition} ORDER BY m.uid LIMIT ?"
        )
        return self.conn.execute(sql, (box_id, lo, hi, *params, limit)).fetchall()

    def full_text_pending(self, name: str, max_uid: int) -> int:
        """Messages up to ``max_uid`` not in the full-text index yet (see store.fulltext)."""
        return fulltext.pending_count(self.conn, self._box(name)[0], max_uid)

    def message_path(self, name: str, uid: int) -> Path | None:
        box_id, path = self._box(name)
        row = self.conn.execute(
            "SELECT fname FROM messages WHERE mailbox_id = ? AND uid = ?", (box_id, uid)
        ).fetchone()
        return None if row is None else path / "cur" / row[0]

    def read_message(self, name: str, uid: int) -> bytes | None:
        path = self.message_path(name, uid)
        if path is None:
            return None
        try:
            return mime.to_crlf(path.read_bytes())
        except FileNotFoundError:
            return None

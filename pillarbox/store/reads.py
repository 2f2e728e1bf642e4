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
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pillarbox import mime
from pillarbox.mailstore.filters import ALL, SearchFilter
from pillarbox.mailstore.rows import ALL_PARTS, EMPTY_FLAGS, FetchRow, FlagBatch, Parts, SearchRow
from pillarbox.store import flags as fl
from pillarbox.store import fulltext, lazyparse, sortkeys
from pillarbox.store.lazyparse import Need
from pillarbox.store.names import BadMailboxName, folder_dir
from pillarbox.store.query import compile_filter
from pillarbox.store.types import MailboxError

CHUNK: Final = 2000
# The message_data columns of each part of a fetch(data=True) row.
_PART_SQL: Final = (
    (Parts.ENVELOPE, ", coalesce(d.imap_envelope, d.envelope)"),
    (Parts.STRUCTURE, ", d.structure"),
    (Parts.HEADER, ", d.header"),
)


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
        parts: Parts = ALL_PARTS,
    ) -> list[FetchRow]:
        """Rows for UIDs in ``ranges`` (sorted, disjoint), at most ``limit``, with the
        ``parts`` of envelope, structure and header when ``data``; only rows with a modseq
        above ``changed_since`` (CHANGEDSINCE, RFC 7162 §3.1.4.1)."""
        box_id = self._box(name)[0]
        out: list[FetchRow] = []
        columns = "m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq"
        source = "messages m"
        if data:
            # Only what was asked for is read: a FETCH of ENVELOPE reads neither the
            # structure's JSON nor the header block (most of the row).
            columns += "".join(sql if part in parts else ", NULL" for part, sql in _PART_SQL)
            source += " JOIN message_data d ON d.mailbox_id = m.mailbox_id AND d.uid = m.uid"
        sql = (
            f"SELECT {columns} FROM {source}"
            " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? AND m.modseq > ?"
            " ORDER BY m.uid LIMIT ?"
        )
        text = fl.flags_text
        loads = json.loads
        for lo, hi in ranges:
            cursor = self.conn.execute(sql, (box_id, lo, hi, changed_since, limit - len(out)))
            if data:
                # The envelope comes in its wire form (bytes) unless it has to be rendered
                # per session: then it is the JSON text (see pillarbox.mime.imapwire).
                out += [
                    FetchRow(
                        uid, text(mask, kw), date, size, modseq,
                        e if e is None or type(e) is bytes else loads(e),
                        None if st is None else loads(st),
                        h,
                    )
                    for uid, mask, kw, date, size, modseq, e, st, h in cursor
                ]  # fmt: skip
            else:
                out += [
                    FetchRow(uid, text(mask, kw), date, size, modseq)
                    for uid, mask, kw, date, size, modseq in cursor
                ]
            if len(out) >= limit:
                break
        return out

    def sort_uids(
        self, name: str, ranges: list[tuple[int, int]], criteria: Sequence[tuple[str, bool]]
    ) -> array[int]:
        """The UIDs in ``ranges`` in SORT order (see store.sortkeys)."""
        return sortkeys.sort_uids(self.conn, self._box(name)[0], ranges, criteria)

    def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]:
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
        self,
        name: str,
        ranges: list[tuple[int, int]],
        limit: int = CHUNK * 5,
        modseqs: bool = True,
    ) -> FlagBatch:
        """The narrow FETCH FLAGS path for up to ``limit`` messages of the first non-empty
        range, as columns (see :class:`FlagBatch`); the modseq column only if ``modseqs``.

        SQLite hands each column over whole, as one JSON array the C JSON decoder turns into
        a list (turning 50,000 SQLite rows into Python tuples costs more than the whole rest
        of ``UID FETCH 1:* (FLAGS)``); UIDs without a gap (no expunge in the batch) need not
        be sent at all: they are a ``range``.
        """
        box_id = self._box(name)[0]
        modseq_column = "json_group_array(modseq)" if modseqs else "'[]'"
        for lo, hi in ranges:
            first, last, count, masks, modseq_list = self.conn.execute(
                "SELECT min(uid), max(uid), count(*), json_group_array(flags),"
                f" {modseq_column} FROM (SELECT uid, flags, modseq FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid LIMIT ?)",
                (box_id, lo, hi, limit),
            ).fetchone()
            if not count:
                continue
            keywords = self.conn.execute(
                "SELECT uid, keywords FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? AND keywords != ''",
                (box_id, lo, last),
            ).fetchall()
            return FlagBatch(
                self._batch_uids(box_id, first, last, count),
                bytes(json.loads(masks)),
                json.loads(modseq_list),
                {uid: tuple(words.split()) for uid, words in keywords},
                last,
            )
        return EMPTY_FLAGS

    def _batch_uids(self, box_id: int, first: int, last: int, count: int) -> Sequence[int]:
        if last - first + 1 == count:
            return range(first, last + 1)
        column = self.conn.execute(
            "SELECT json_group_array(uid) FROM (SELECT uid FROM messages"
            " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid)",
            (box_id, first, last),
        ).fetchone()[0]
        uids: list[int] = json.loads(column)
        return uids

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
        """The messages with UIDs lo..hi that pass the filter ``where`` (``store.query``);
        ``header`` text only when asked for or the filter needed it, else ""."""
        box_id = self._box(name)[0]
        condition, params, needs_text = compile_filter(where or ALL)
        columns = "m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq, m.sent_date"
        source = "messages m"
        if header or needs_text:
            columns += ", d.text"
            source += " JOIN message_search d ON d.mailbox_id = m.mailbox_id AND d.uid = m.uid"
        else:
            columns += ", ''"
        sql = (
            f"SELECT {columns} FROM {source} WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?"
            f" AND {condition} ORDER BY m.uid LIMIT ?"
        )
        cursor = self.conn.execute(sql, (box_id, lo, hi, *params, limit))
        return list(map(SearchRow._make, cursor))

    def unparsed_in(
        self, name: str, ranges: list[tuple[int, int]], *, need: Need = Need.PARSED
    ) -> bool:
        """Whether ``ranges`` hold a message not parsed yet that lacks what ``need`` asks
        for; see store.lazyparse."""
        return lazyparse.any_pending_in(self.conn, self._box(name)[0], ranges, need=need)

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

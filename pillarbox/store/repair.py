"""Work an index leaves for later, done a chunk at a time: the parse of messages indexed
by their names only (``store.lazyparse``), and the full-text rows of messages indexed
without them (``store.fulltext``).

Readers call :meth:`IndexRepair.parse_pending` for the messages they are about to read;
the background jobs of ``store.mailbox`` call :meth:`IndexRepair.parse_backlog` and
:meth:`IndexRepair.backfill_full_text` until nothing is left. Each call is one chunk and
one transaction, so the index lock is never held for long. Blocking, and expects that lock
to be held.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from pillarbox.store import fulltext, lazyparse
from pillarbox.store.boxstate import IndexState, Mailbox
from pillarbox.store.lazyparse import Need

CHUNK: Final = 2000  # messages measured per transaction by measure_sizes


class IndexRepair:
    """See the module docstring; ``mailbox`` looks a mailbox up by name (``Folders``)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        root: Path,
        state: IndexState,
        mailbox: Callable[[str], Mailbox],
    ):
        self.conn = conn
        self.root = root
        self.state = state
        self._mailbox = mailbox

    def full_text_pending(self) -> bool:
        """Whether any message waits for its full-text row."""
        return self.conn.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone() is not None

    def backfill_full_text(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        """Index one chunk of pending messages (see ``fulltext.backfill``); None: done, or
        the index was closed or switched off meanwhile."""
        if self.state.closed or not self.state.full_text:
            return None
        return fulltext.backfill(self.conn, self.root, after, limit)

    def catch_up_full_text(self, name: str, after: int, limit: int) -> int | None:
        """Index one chunk of the pending messages of mailbox ``name`` with UIDs above
        ``after``; the last UID done, or None when none is left."""
        if self.state.closed or not self.state.full_text:
            return None
        box = self._mailbox(name)
        cursor = fulltext.backfill(self.conn, self.root, (box.id, after), limit, box.id)
        return None if cursor is None else cursor[1]

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
        if self.state.closed:
            return None
        box = self._mailbox(name)
        found = lazyparse.pending_in(
            self.conn, box.id, ranges, need=need, changed_since=changed_since, limit=limit
        )
        if not found:
            return None
        if need is Need.SIZES:
            lazyparse.measure(self.conn, box.path, box.id, found)
        elif need is Need.PARSED:
            lazyparse.parse(
                self.conn, box.path, box.id, found, full_text=full_text and self.state.full_text
            )
        else:
            lazyparse.parse_heads(self.conn, box.path, box.id, found, sizes=need is Need.SEARCHED)
        return found[-1][0], len(found)

    def parse_backlog(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        """Parse one chunk of pending messages of any mailbox, with their full-text rows
        (see ``lazyparse.backlog``); None: done, or the index was closed meanwhile."""
        if self.state.closed:
            return None
        return lazyparse.backlog(self.conn, self.root, after, limit, full_text=self.state.full_text)

    def settle_parse(self) -> None:
        """After a background pass: the readers stop looking once nothing is pending."""
        if not self.state.closed:
            self.state.unparsed = lazyparse.any_pending(self.conn)

    def unsized_mailboxes(self) -> list[str]:
        """Names of the mailboxes with messages whose CRLF size is not known yet."""
        rows = self.conn.execute(
            "SELECT name FROM mailboxes WHERE id IN"
            " (SELECT mailbox_id FROM parse_pending WHERE sized = 0)"
        )
        return [r[0] for r in rows]

    def measure_sizes(self) -> None:
        """Give every pending message its CRLF size (what the usage sums)."""
        if not self.state.unparsed:
            return
        for name in self.unsized_mailboxes():
            after = 0
            while True:
                done = self.parse_pending(name, [(after + 1, 0xFFFFFFFF)], need=Need.SIZES,
                                          limit=CHUNK)  # fmt: skip
                if done is None:
                    break
                after = done[0]

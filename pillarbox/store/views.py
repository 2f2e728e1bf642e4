"""What a session is told of a mailbox: STATUS, SELECT, the changes since it last looked
(new UIDs, flag updates, expunges) and QRESYNC's VANISHED, from one user's index.

Every method takes a mailbox the caller has just synced (``store.index``) and reads its
rows; the counters come from ``store.counts`` (no scan of the rows). The last UID list of
each mailbox is kept and shared by every session that selects it unchanged (sessions never
mutate it): N clients on one big INBOX cost one array, not N. Blocking, and expects the
index lock to be held.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable
from typing import Final

from pillarbox.mailstore.rows import FlagUpdate
from pillarbox.store import counts, db
from pillarbox.store import flags as fl
from pillarbox.store import vanished as tombstones
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.types import ChangeSet, SelectInfo, StatusInfo

CHUNK: Final = 2000  # the UID list is read CHUNK * 50 UIDs at a time


class MailboxViews:
    """See the module docstring; ``keyword_names`` gives a mailbox's dovecot-keywords
    (``Folders.keyword_names``)."""

    def __init__(self, conn: sqlite3.Connection, keyword_names: Callable[[Mailbox], list[str]]):
        self.conn = conn
        self._keyword_names = keyword_names
        self._uid_cache: dict[int, tuple[tuple[int, int], array[int]]] = {}
        self._generation: dict[int, int] = {}  # bumped whenever a mailbox's UID set changes
        # Keywords in use per mailbox and the HIGHESTMODSEQ they were read at: every change
        # of a row's keywords gives it a higher modseq, so SELECT reads only newer rows.
        self._used_keywords: dict[int, tuple[int, dict[str, None]]] = {}

    def uids_changed(self, box: Mailbox) -> None:
        """The mailbox's UID set changes: a cached UID list of it is stale."""
        self._generation[box.id] = self._generation.get(box.id, 0) + 1

    def forget(self, mailbox_id: int) -> None:
        """The mailbox's rows are gone (deleted, or its folder vanished)."""
        self._uid_cache.pop(mailbox_id, None)
        self._used_keywords.pop(mailbox_id, None)

    def status(self, box: Mailbox) -> StatusInfo:
        # Counters kept by triggers (store/counts.py), not a scan of the mailbox's rows.
        found = counts.of_mailbox(self.conn, box.id)
        return StatusInfo(
            messages=found.messages,
            recent=counts.recent(self.conn, box.id, box.recent_uid),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=found.unseen,
            deleted=found.deleted,
            size=found.size,
            highestmodseq=box.highestmodseq,
            deleted_storage=found.deleted_bytes,
        )

    def uids(self, box: Mailbox, max_uid: int | None = None) -> array[int]:
        """The mailbox's UIDs in order, as a compact array.

        One ``group_concat`` row instead of a Python row per message: for 100,000 messages
        this is several times faster than fetching rows (and allocates no per-row tuples).
        """
        result = array("I")
        start = 0
        while True:
            row = self.conn.execute(
                "SELECT group_concat(uid), max(uid) FROM (SELECT uid FROM messages"
                " WHERE mailbox_id = ? AND uid > ? AND uid <= ? ORDER BY uid LIMIT ?)",
                (box.id, start, 0xFFFFFFFF if max_uid is None else max_uid, CHUNK * 50),
            ).fetchone()
            if row[0] is None:
                return result
            result.extend(map(int, row[0].split(",")))
            start = row[1]

    def _cached_uids(self, box: Mailbox) -> array[int]:
        key = (box.uidnext, self._generation.get(box.id, 0))
        cached = self._uid_cache.get(box.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        uids = self.uids(box)
        self._uid_cache[box.id] = (key, uids)
        return uids

    def select(self, box: Mailbox, readonly: bool) -> SelectInfo:
        uids = self._cached_uids(box)
        unseen = counts.first_unseen(self.conn, box.id)
        recent_from = box.recent_uid
        if not readonly:
            self._claim_recent(box, box.uidnext)
        return SelectInfo(
            name=box.name,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highestmodseq=box.highestmodseq,
            uids=uids,
            recent_from_uid=recent_from,
            first_unseen_uid=unseen,
            keywords=self.mailbox_keywords(box),
        )

    def _claim_recent(self, box: Mailbox, upto: int) -> None:
        """RFC 3501 §2.3.2: \\Recent goes to the first session told about a message."""
        if box.recent_uid >= upto:
            return  # all claimed already: a warm SELECT writes nothing
        box.recent_uid = upto
        with db.Transaction(self.conn):
            self.conn.execute(
                "UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id = ?",
                (upto, box.id),
            )

    def mailbox_keywords(self, box: Mailbox) -> tuple[str, ...]:
        """The keywords of dovecot-keywords, then any other keyword a message carries.

        A keyword no message carries any more may stay listed (as in dovecot-keywords):
        FLAGS may name keywords not in use (RFC 9051 §7.3.5)."""
        found = dict.fromkeys(n for n in self._keyword_names(box) if n)
        found.update(self._keywords_in_use(box))
        return tuple(found)

    def _keywords_in_use(self, box: Mailbox) -> dict[str, None]:
        cached = self._used_keywords.get(box.id)
        if cached is not None and cached[0] == box.highestmodseq:
            return cached[1]
        if cached is None:
            used: dict[str, None] = {}
            rows = self.conn.execute(
                "SELECT DISTINCT keywords FROM messages WHERE mailbox_id = ? AND keywords != ''",
                (box.id,),
            )
        else:  # only the rows changed since (the index on modseq)
            used = dict(cached[1])
            rows = self.conn.execute(
                "SELECT DISTINCT keywords FROM messages"
                " WHERE mailbox_id = ? AND modseq > ? AND keywords != ''",
                (box.id, cached[0]),
            )
        for (text,) in rows:
            used.update(dict.fromkeys(text.split()))
        self._used_keywords[box.id] = (box.highestmodseq, used)
        return used

    def changes(
        self,
        box: Mailbox,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        present = None
        if with_expunges:
            count = self.conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid <= ?",
                (box.id, known_max),
            ).fetchone()[0]
            if count < known_count:
                present = self.uids(box, known_max)
        new = array(
            "I",
            (
                r[0]
                for r in self.conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ? AND uid > ? ORDER BY uid",
                    (box.id, known_max),
                )
            ),
        )
        updates: list[FlagUpdate] = []
        if since_modseq < box.highestmodseq:
            # tuple.__new__ skips NamedTuple's Python-level __new__: a third of the cost of
            # a change set after another session's STORE 1:* on a big mailbox.
            make = tuple.__new__
            updates = [
                make(FlagUpdate, (uid, fl.flags_text(mask, keywords), modseq))
                for uid, mask, keywords, modseq in self.conn.execute(
                    "SELECT uid, flags, keywords, modseq FROM messages"
                    " WHERE mailbox_id = ? AND modseq > ? AND uid <= ? ORDER BY uid",
                    (box.id, since_modseq, known_max),
                )
            ]
        recent_from = box.recent_uid
        if claim_recent and len(new):
            self._claim_recent(box, new[-1] + 1)
        return ChangeSet(present, new, updates, box.highestmodseq, box.uidnext, recent_from)

    def vanished(
        self, box: Mailbox, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """UID ranges within ``ranges`` expunged after ``since_modseq`` (QRESYNC).

        Exact while the tombstones reach back that far, else a superset (see store.vanished).
        """
        present = self._cached_uids(box)
        return tombstones.since(self.conn, box.id, since_modseq, ranges, present, box.uidnext)

"""Every user's mailbox index in PostgreSQL: the blocking half of :mod:`pillarbox.pgmail`.

Each public method of :class:`MailIndex` is one transaction on a pooled connection, called
from the store's worker threads (never the event loop). Semantics are the other stores'
(``pillarbox.memstore.mailboxes`` states them in Python): UIDs ascend in commit order and
are never reused (RFC 9051 §2.3.1.1); each change takes the mailbox's next MODSEQ (RFC 7162
§3.1.1) and an expunge leaves tombstones for VANISHED (§3.2.5); ``\\Recent`` goes to the
first session told of a message (RFC 3501 §2.3.2); a keyword once stored stays in FLAGS.

Concurrency, across threads and nodes alike: a writer first locks the mailbox row
(``FOR UPDATE``), then allocates UIDs and MODSEQ with ``UPDATE ... RETURNING`` and writes
its message rows, in one transaction, so the next writer of that mailbox sees its UIDNEXT
only after it committed: UIDs strictly ascend with no duplicate. A read that must be one
picture (SELECT, a change set) locks the row ``FOR SHARE``, which waits for writers in
flight and keeps new ones out until it ends. Locks are taken user row first, then
mailbox rows in id order, so two transactions never wait for each other in a circle.

Message files: written durably by the caller (``store.maildir.MaildirWriter``) before the
transaction that indexes them; a COPY hard-links the file next to its source (each row
owns one file), a MOVE keeps it. Files of expunged rows are unlinked after the commit;
a crash in between leaves an unreferenced file, never a row without its file. Bodies in
a blob store (a ``path`` of ``blob:`` + key, ``pgmail.bodies``) are put before the
transaction too; a COPY shares the key (no request to the store), so a body is deleted
only once no row names it (:meth:`MailIndex.named`).
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, Final, NamedTuple

from psycopg.rows import tuple_row

from pillarbox import log
from pillarbox import postgres as pg
from pillarbox.mailstore.errors import (
    ALREADYEXISTS,
    CANNOT,
    NONEXISTENT,
    TRYCREATE,
    USEATTR,
    MailboxError,
)
from pillarbox.mailstore.filters import ALL, SearchFilter
from pillarbox.mailstore.flags import DELETED, SEEN, split_flags
from pillarbox.mailstore.names import INBOX, SPECIAL_USE, check_name, parent_names
from pillarbox.mailstore.quota import refuse_over_quota
from pillarbox.mailstore.results import (
    ChangeSet,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)
from pillarbox.mailstore.rows import (
    EMPTY_FLAGS,
    Copied,
    FetchRow,
    FlagBatch,
    FlagUpdate,
    SearchRow,
)
from pillarbox.pgmail import schema
from pillarbox.pgmail.bodies import BLOB
from pillarbox.pgmail.importer import has_sqlite_index, import_user
from pillarbox.pgmail.query import compile_filter, mentions_header
from pillarbox.pgmail.rows import (
    NewMessage,
    Ranges,
    changed_flags,
    flags_text,
    intersect,
    merge_ranges,
    merge_spans,
)
from pillarbox.store.maildir import fsync_dir, unique_name

ALL_UIDS: Final = 0xFFFFFFFF
_log = log.get("store")

_BOX_COLUMNS: Final = (
    "id, name, special_use, uidvalidity, uidnext, highestmodseq, recent_uid, keywords"
)
# The columns a new message row is written with, in NewMessage's order after the UID.
_NEW_COLUMNS: Final = (
    "mask, keywords, internal_date, size, sent_date, path, envelope, structure, header,"
    " search_text, body_text, header_text"
)
_COPY_COLUMNS: Final = (
    "mask, keywords, internal_date, size, sent_date, envelope, structure, header,"
    " search_text, body_text, header_text"
)


class Box(NamedTuple):
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int
    keywords: list[str]


_IN_RANGES: Final = (
    " JOIN unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) ON m.uid BETWEEN r.lo AND r.hi"
)


def _within(ranges: Ranges) -> tuple[str, list[Any]]:
    """What follows ``FROM mail_messages m`` to keep the UIDs in ``ranges``, up to and
    including ``WHERE`` and room for one more condition, with its parameters. One range
    (the common ``1:*``, ``n:*``) is a BETWEEN, which the primary key's index walks in UID
    order, so ``LIMIT`` stops it early; more are a join with the ranges as two arrays
    (one parameter pair, any number of ranges)."""
    if len(ranges) == 1:
        return " WHERE m.uid BETWEEN %s AND %s AND", [ranges[0][0], ranges[0][1]]
    return _IN_RANGES + " WHERE", [[lo for lo, _ in ranges], [hi for _, hi in ranges]]


def _fetch_row(
    uid: int, mask: int, keywords: list[str], internal_date: int, size: int, modseq: int,
    envelope: str, structure: str, header: bytes,
) -> FetchRow:  # fmt: skip
    """A FETCH row with data: the JSON the index keeps decoded."""
    flags = flags_text(mask, keywords)
    parsed = json.loads(envelope), json.loads(structure), bytes(header)
    return FetchRow(uid, flags, internal_date, size, modseq, *parsed)


class MailIndex:
    """See the module docstring. ``node`` marks this node's notifications, so that its
    own listener can skip what it already told its sessions."""

    def __init__(self, pool: pg.Pool, mail_dir: Path, node: str):
        self.pool = pool
        self.mail_dir = mail_dir
        self.node = node
        self._known_users: set[str] = set()

    # --- plumbing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[pg.Connection]:
        """A connection in a transaction (BEGIN ... COMMIT, or ROLLBACK on an exception)."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[pg.Connection]:
        """A connection for reads that need no single picture (the pool's connections
        autocommit: each statement is its own snapshot, without BEGIN/COMMIT trips)."""
        with self.pool.connection() as conn:
            yield conn

    def _notify(self, conn: pg.Connection, user: str, *mailboxes: str) -> None:
        for mailbox in dict.fromkeys(mailboxes):
            payload = json.dumps({"node": self.node, "user": user, "mailbox": mailbox})
            conn.execute("SELECT pg_notify(%s, %s)", (schema.CHANNEL, payload))

    @staticmethod
    def _rows(conn: pg.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _box(
        self, conn: pg.Connection, user: str, name: str, *, lock: str = "", missing: str = ""
    ) -> Box:
        """The mailbox row (``lock`` "UPDATE" or "SHARE" locks it); MailboxError
        ``missing`` (NONEXISTENT by default) when there is none."""
        suffix = f" FOR {lock}" if lock else ""
        rows = self._rows(
            conn,
            f"SELECT {_BOX_COLUMNS} FROM mail_mailboxes WHERE user_address = %s AND name = %s"
            + suffix,
            (user, name),
        )
        if not rows:
            raise MailboxError(missing or NONEXISTENT, f"no mailbox {name}")
        return Box(*rows[0])

    def _lock_user(self, conn: pg.Connection, user: str) -> None:
        conn.execute("SELECT 1 FROM mail_users WHERE user_address = %s FOR UPDATE", (user,))

    def _add_box(self, conn: pg.Connection, user: str, name: str, special_use: str | None) -> int:
        # A new UIDVALIDITY above every earlier one of the user (RFC 9051 §2.3.1.1).
        uidvalidity = pg.scalar(
            conn,
            "UPDATE mail_users SET last_uidvalidity = greatest(last_uidvalidity + 1,"
            " extract(epoch FROM now())::bigint) WHERE user_address = %s"
            " RETURNING last_uidvalidity",
            (user,),
        )
        return int(
            pg.scalar(
                conn,
                "INSERT INTO mail_mailboxes (user_address, name, special_use, uidvalidity)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (user, name, special_use, int(uidvalidity) & 0xFFFFFFFF),
            )
        )

    def _add_parents(self, conn: pg.Connection, user: str, name: str) -> None:
        for parent in parent_names(name):
            if parent != INBOX and not self._exists(conn, user, parent):
                self._add_box(conn, user, parent, None)

    def _exists(self, conn: pg.Connection, user: str, name: str) -> bool:
        return bool(
            self._rows(
                conn,
                "SELECT 1 FROM mail_mailboxes WHERE user_address = %s AND name = %s",
                (user, name),
            )
        )

    def knows(self, user: str) -> bool:
        """Whether ``ensure_user`` ran for ``user`` in this process (a quick set lookup)."""
        return user in self._known_users

    def ensure_user(self, user: str) -> None:
        """The user's row and default mailboxes, the first time (on any node: the insert
        of a second node waits for the first's commit and then does nothing); a user with
        an SQLite index in the mail directory gets its mailboxes from there instead
        (``pgmail.importer``), in the same transaction."""
        if user in self._known_users:
            return
        with self._transaction() as conn:
            created = self._rows(
                conn,
                "INSERT INTO mail_users (user_address) VALUES (%s)"
                " ON CONFLICT DO NOTHING RETURNING user_address",
                (user,),
            )
            if created and has_sqlite_index(self.mail_dir, user):
                done = import_user(conn, self.mail_dir, user)
                _log.info("mailbox index imported from SQLite", user=user, moved=str(done))
            elif created:
                self._add_box(conn, user, INBOX, None)
                for name, use in SPECIAL_USE.items():
                    self._add_box(conn, user, name, use)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO mail_subscriptions (user_address, name) VALUES (%s, %s)"
                        " ON CONFLICT DO NOTHING",
                        [(user, name) for name in [INBOX, *SPECIAL_USE]],
                    )
        self._known_users.add(user)

    # --- mailboxes ------------------------------------------------------------------------
    def list_mailboxes(self, user: str) -> list[MailboxInfo]:
        with self._reading() as conn:
            rows = self._rows(
                conn,
                "SELECT b.name, b.special_use, s.name IS NOT NULL FROM mail_mailboxes b"
                " LEFT JOIN mail_subscriptions s"
                " ON s.user_address = b.user_address AND s.name = b.name"
                " WHERE b.user_address = %s",
                (user,),
            )
        return [MailboxInfo(*row) for row in sorted(rows)]

    def subscriptions(self, user: str) -> set[str]:
        with self._reading() as conn:
            rows = self._rows(
                conn, "SELECT name FROM mail_subscriptions WHERE user_address = %s", (user,)
            )
        return {row[0] for row in rows}

    def create(self, user: str, name: str, special_use: str | None) -> None:
        if name == INBOX:
            raise MailboxError(ALREADYEXISTS, "INBOX always exists")
        check_name(name)
        if special_use is not None and special_use not in SPECIAL_USE.values():
            raise MailboxError(USEATTR, f"unsupported special use {special_use}")
        with self._transaction() as conn:
            self._lock_user(conn, user)
            if self._exists(conn, user, name):
                raise MailboxError(ALREADYEXISTS, f"mailbox {name} already exists")
            self._add_parents(conn, user, name)
            self._add_box(conn, user, name, special_use)

    def create_for_delivery(self, user: str, name: str) -> None:
        """The folder a delivery (a Sieve ``fileinto``) names, if it is missing, as the
        Maildir writer makes a missing folder's directory."""
        with self._transaction() as conn:
            self._lock_user(conn, user)
            if not self._exists(conn, user, name):
                self._add_parents(conn, user, name)
                self._add_box(conn, user, name, None)

    def delete(self, user: str, name: str) -> list[str]:
        """Delete the mailbox and its messages; the paths of the bodies to remove once
        committed."""
        if name == INBOX:
            raise MailboxError(CANNOT, "INBOX cannot be deleted")
        with self._transaction() as conn:
            self._lock_user(conn, user)
            box = self._box(conn, user, name, lock="UPDATE")
            paths = self._rows(
                conn, "SELECT path FROM mail_messages WHERE mailbox_id = %s", (box.id,)
            )
            conn.execute("DELETE FROM mail_mailboxes WHERE id = %s", (box.id,))
            self._notify(conn, user, name)
        return [row[0] for row in paths]

    def rename(self, user: str, old: str, new: str) -> None:
        check_name(new)
        with self._transaction() as conn:
            self._lock_user(conn, user)
            box = self._box(conn, user, old, lock="UPDATE")
            if new == INBOX or self._exists(conn, user, new):
                raise MailboxError(ALREADYEXISTS, f"mailbox {new} already exists")
            if new.startswith(old + "/"):
                raise MailboxError(CANNOT, "cannot move a mailbox into itself")
            self._add_parents(conn, user, new)
            if old == INBOX:
                # RFC 3501 §6.3.5: renaming INBOX moves its messages, INBOX stays, empty.
                target = self._add_box(conn, user, new, None)
                self._move_all(conn, box, target)
            else:
                for table in ("mail_mailboxes", "mail_subscriptions"):
                    conn.execute(
                        f"UPDATE {table} SET name = %s || substr(name, %s)"
                        " WHERE user_address = %s AND (name = %s OR left(name, %s) = %s)",
                        (new, len(old) + 1, user, old, len(old) + 1, old + "/"),
                    )
            self._notify(conn, user, old)

    def _move_all(self, conn: pg.Connection, src: Box, dst_id: int) -> None:
        """Every message of ``src`` into the new, empty mailbox ``dst_id`` (same UIDs:
        a new mailbox, a new UIDVALIDITY), leaving tombstones in ``src``."""
        modseq = self._next_modseq(conn, src.id)
        conn.execute(
            "UPDATE mail_messages SET mailbox_id = %s WHERE mailbox_id = %s", (dst_id, src.id)
        )
        moved = [row[0] for row in self._uids(conn, dst_id)]
        self._bury(conn, src.id, modseq, merge_ranges(moved))
        conn.execute(
            "UPDATE mail_mailboxes SET uidnext = %s, highestmodseq = %s WHERE id = %s",
            (src.uidnext, modseq, dst_id),
        )

    def subscribe(self, user: str, name: str, on: bool) -> None:
        if name != INBOX:
            try:
                check_name(name)
            except MailboxError as exc:
                raise MailboxError(CANNOT, exc.text) from None
        with self._reading() as conn:
            if on:
                conn.execute(
                    "INSERT INTO mail_subscriptions (user_address, name) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (user, name),
                )
            else:
                conn.execute(
                    "DELETE FROM mail_subscriptions WHERE user_address = %s AND name = %s",
                    (user, name),
                )

    def status(self, user: str, name: str) -> StatusInfo:
        with self._transaction() as conn:
            box = self._box(conn, user, name, lock="SHARE")
            row = self._rows(
                conn,
                "SELECT count(*), count(*) FILTER (WHERE uid >= %s),"
                " count(*) FILTER (WHERE mask & 1 = 0), count(*) FILTER (WHERE mask & 8 <> 0),"
                " coalesce(sum(size), 0), coalesce(sum(size) FILTER (WHERE mask & 8 <> 0), 0)"
                " FROM mail_messages WHERE mailbox_id = %s",
                (box.recent_uid, box.id),
            )[0]
        messages, recent, unseen, deleted, size, deleted_size = (int(v) for v in row)
        return StatusInfo(
            messages=messages,
            recent=recent,
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=unseen,
            deleted=deleted,
            size=size,
            highestmodseq=box.highestmodseq,
            deleted_storage=deleted_size,
        )

    # --- selected mailbox -----------------------------------------------------------------
    def select(self, user: str, name: str, readonly: bool) -> SelectInfo:
        with self._transaction() as conn:
            box = self._box(conn, user, name, lock="SHARE" if readonly else "UPDATE")
            uids = array("I", (row[0] for row in self._uids(conn, box.id)))
            unseen = pg.scalar(
                conn,
                "SELECT min(uid) FROM mail_messages WHERE mailbox_id = %s AND mask & %s = 0",
                (box.id, SEEN),
            )
            if not readonly and box.uidnext > box.recent_uid:  # RFC 3501 §2.3.2
                conn.execute(
                    "UPDATE mail_mailboxes SET recent_uid = %s WHERE id = %s",
                    (box.uidnext, box.id),
                )
        return SelectInfo(
            name=name,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highestmodseq=box.highestmodseq,
            uids=uids,
            recent_from_uid=box.recent_uid,
            first_unseen_uid=None if unseen is None else int(unseen),
            keywords=tuple(box.keywords),
        )

    def _uids(self, conn: pg.Connection, box_id: int, above: int = 0) -> list[tuple[Any, ...]]:
        return self._rows(
            conn,
            "SELECT uid FROM mail_messages WHERE mailbox_id = %s AND uid > %s ORDER BY uid",
            (box_id, above),
        )

    def changes(
        self,
        user: str,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        with self._transaction() as conn:
            box = self._box(conn, user, name, lock="UPDATE" if claim_recent else "SHARE")
            present = None
            if with_expunges:
                count = pg.scalar(
                    conn,
                    "SELECT count(*) FROM mail_messages WHERE mailbox_id = %s AND uid <= %s",
                    (box.id, known_max),
                )
                if int(count) < known_count:
                    present = array(
                        "I",
                        (
                            row[0]
                            for row in self._rows(
                                conn,
                                "SELECT uid FROM mail_messages WHERE mailbox_id = %s"
                                " AND uid <= %s ORDER BY uid",
                                (box.id, known_max),
                            )
                        ),
                    )
            new = array("I", (row[0] for row in self._uids(conn, box.id, known_max)))
            updates = [
                FlagUpdate(uid, flags_text(mask, keywords), modseq)
                for uid, mask, keywords, modseq in self._rows(
                    conn,
                    "SELECT uid, mask, keywords, modseq FROM mail_messages"
                    " WHERE mailbox_id = %s AND modseq > %s AND uid <= %s ORDER BY uid",
                    (box.id, since_modseq, known_max),
                )
            ]
            if claim_recent and len(new) and new[-1] + 1 > box.recent_uid:
                conn.execute(
                    "UPDATE mail_mailboxes SET recent_uid = %s WHERE id = %s",
                    (new[-1] + 1, box.id),
                )
        return ChangeSet(present, new, updates, box.highestmodseq, box.uidnext, box.recent_uid)

    def vanished(self, user: str, name: str, since_modseq: int, ranges: Ranges) -> Ranges:
        """UIDs of ``ranges`` expunged after ``since_modseq``, as sorted merged ranges
        (UIDs are never reused, so no tombstone names a present message)."""
        with self._reading() as conn:
            box = self._box(conn, user, name)
            gone = self._rows(
                conn,
                "SELECT uid_lo, uid_hi FROM mail_tombstones"
                " WHERE mailbox_id = %s AND modseq > %s ORDER BY uid_lo",
                (box.id, since_modseq),
            )
        return intersect(merge_spans(gone), ranges)

    def fetch(
        self, user: str, name: str, ranges: Ranges, data: bool, limit: int, changed_since: int
    ) -> list[FetchRow]:
        extra = ", m.envelope, m.structure, m.header" if data else ""
        with self._reading() as conn:
            box = self._box(conn, user, name)
            within, bounds = _within(ranges)
            rows = self._rows(
                conn,
                "SELECT m.uid, m.mask, m.keywords, m.internal_date, m.size, m.modseq"
                + extra + " FROM mail_messages m" + within
                + " m.mailbox_id = %s AND m.modseq > %s ORDER BY m.uid LIMIT %s",
                (*bounds, box.id, changed_since, limit),
            )  # fmt: skip
        if not data:
            return [
                FetchRow(uid, flags_text(mask, kw), idate, size, modseq)
                for uid, mask, kw, idate, size, modseq in rows
            ]
        return [_fetch_row(*row) for row in rows]

    def search_uids(self, user: str, name: str, where: SearchFilter) -> tuple[array[int], int]:
        condition, params = compile_filter(where)
        with self._reading() as conn:
            box = self._box(conn, user, name)
            rows = self._rows(
                conn,
                "SELECT m.uid, m.modseq FROM mail_messages m WHERE m.mailbox_id = %s AND "
                + condition
                + " ORDER BY m.uid",
                [box.id, *params],
            )
        return array("I", (row[0] for row in rows)), max((row[1] for row in rows), default=0)

    def fetch_flags(
        self, user: str, name: str, ranges: Ranges, limit: int, modseqs: bool
    ) -> FlagBatch:
        with self._reading() as conn:
            box = self._box(conn, user, name)
            within, bounds = _within(ranges)
            rows = self._rows(
                conn,
                "SELECT m.uid, m.mask, m.keywords, m.modseq FROM mail_messages m"
                + within + " m.mailbox_id = %s ORDER BY m.uid LIMIT %s",
                (*bounds, box.id, limit),
            )  # fmt: skip
        if not rows:
            return EMPTY_FLAGS
        # Only the first range with messages (the ranges are sorted and disjoint).
        end = next(hi for lo, hi in ranges if lo <= rows[0][0] <= hi)
        rows = [row for row in rows if row[0] <= end]
        return FlagBatch(
            [row[0] for row in rows],
            bytes(row[1] for row in rows),
            [row[3] for row in rows] if modseqs else [],
            {row[0]: tuple(row[2]) for row in rows if row[2]},
            rows[-1][0],
        )

    def search_rows(
        self, user: str, name: str, lo: int, hi: int, header: bool, where: SearchFilter,
        limit: int,
    ) -> list[SearchRow]:  # fmt: skip
        condition, params = compile_filter(where or ALL)
        text = "m.search_text" if header or mentions_header(where or ALL) else "''"
        with self._reading() as conn:
            box = self._box(conn, user, name)
            rows = self._rows(
                conn,
                "SELECT m.uid, m.mask, m.keywords, m.internal_date, m.size, m.modseq,"
                f" m.sent_date, {text} FROM mail_messages m WHERE m.mailbox_id = %s"
                " AND m.uid BETWEEN %s AND %s AND " + condition + " ORDER BY m.uid LIMIT %s",
                [box.id, lo, hi, *params, limit],
            )
        return [
            SearchRow(uid, mask, " ".join(kw), idate, size, modseq, sent, text)
            for uid, mask, kw, idate, size, modseq, sent, text in rows
        ]

    def message_path(self, user: str, name: str, uid: int) -> str | None:
        """The ``path`` of the message's body (a file under the mail directory, or a
        ``blob:`` key)."""
        with self._reading() as conn:
            box = self._box(conn, user, name)
            path = pg.scalar(
                conn,
                "SELECT path FROM mail_messages WHERE mailbox_id = %s AND uid = %s",
                (box.id, uid),
            )
        return None if path is None else str(path)

    def special_uses(self, user: str, *names: str) -> list[str | None]:
        with self._reading() as conn:
            rows = dict(
                self._rows(
                    conn,
                    "SELECT name, special_use FROM mail_mailboxes"
                    " WHERE user_address = %s AND name = ANY(%s)",
                    (user, list(names)),
                )
            )
        return [rows.get(name) for name in names]

    # --- changes --------------------------------------------------------------------------
    def _next_modseq(self, conn: pg.Connection, box_id: int) -> int:
        return int(
            pg.scalar(
                conn,
                "UPDATE mail_mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = %s"
                " RETURNING highestmodseq",
                (box_id,),
            )
        )

    def store(
        self,
        user: str,
        name: str,
        ranges: Ranges,
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        """STORE (RFC 3501 §6.4.6; UNCHANGEDSINCE, RFC 7162 §3.1.3): the changed
        messages take one new MODSEQ; the unchanged are reported with their own."""
        mask, keywords = split_flags(flags)
        with self._transaction() as conn:
            box = self._box(conn, user, name, lock="UPDATE")
            within, bounds = _within(ranges)
            rows = self._rows(
                conn,
                "SELECT m.uid, m.mask, m.keywords, m.modseq FROM mail_messages m" + within
                + " m.mailbox_id = %s ORDER BY m.uid",
                (*bounds, box.id),
            )  # fmt: skip
            modseq = box.highestmodseq + 1
            updated: list[FlagUpdate] = []
            failed: list[int] = []
            writes: list[tuple[int, list[str], int]] = []
            for uid, have_mask, have, have_modseq in rows:
                if unchanged_since is not None and have_modseq > unchanged_since:
                    failed.append(uid)
                    continue
                new_mask, new_kw = changed_flags(mode, mask, keywords, have_mask, list(have))
                if (new_mask, new_kw) != (have_mask, list(have)):
                    writes.append((new_mask, new_kw, uid))
                    updated.append(FlagUpdate(uid, flags_text(new_mask, new_kw), modseq))
                else:
                    updated.append(FlagUpdate(uid, flags_text(have_mask, have), have_modseq))
            highest = box.highestmodseq
            if writes:
                highest = self._next_modseq(conn, box.id)
                with conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE mail_messages SET mask = %s, keywords = %s, modseq = %s"
                        " WHERE mailbox_id = %s AND uid = %s",
                        [(m, kw, highest, box.id, uid) for m, kw, uid in writes],
                    )
                self._notify(conn, user, name)
            if mode != "remove":
                self._remember_keywords(conn, box, keywords)
        return StoreResult(updated, failed, highest, box.highestmodseq)

    def _remember_keywords(self, conn: pg.Connection, box: Box, keywords: Sequence[str]) -> None:
        """A keyword once stored stays in the mailbox's FLAGS list (the box is locked)."""
        missing = [k for k in dict.fromkeys(keywords) if k not in box.keywords]
        if missing:
            conn.execute(
                "UPDATE mail_mailboxes SET keywords = keywords || %s::text[] WHERE id = %s",
                (missing, box.id),
            )

    def expunge(self, user: str, name: str, ranges: Ranges | None) -> tuple[list[int], list[str]]:
        """The expunged UIDs and the paths of the bodies to remove once committed."""
        with self._transaction() as conn:
            box = self._box(conn, user, name, lock="UPDATE")
            within, bounds = _within(ranges if ranges is not None else [(1, ALL_UIDS)])
            doomed = self._rows(
                conn,
                "SELECT m.uid, m.path FROM mail_messages m" + within
                + " m.mailbox_id = %s AND m.mask & %s <> 0 ORDER BY m.uid",
                (*bounds, box.id, DELETED),
            )  # fmt: skip
            uids = [row[0] for row in doomed]
            self._remove(conn, box.id, uids)
            if uids:
                self._notify(conn, user, name)
        return uids, [row[1] for row in doomed]

    def _remove(self, conn: pg.Connection, box_id: int, uids: list[int]) -> None:
        """Delete ``uids`` under one new MODSEQ, leaving tombstones (RFC 7162 §3.2.7)."""
        if not uids:
            return
        modseq = self._next_modseq(conn, box_id)
        conn.execute(
            "DELETE FROM mail_messages WHERE mailbox_id = %s AND uid = ANY(%s)", (box_id, uids)
        )
        self._bury(conn, box_id, modseq, merge_ranges(sorted(uids)))

    @staticmethod
    def _bury(conn: pg.Connection, box_id: int, modseq: int, ranges: Ranges) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO mail_tombstones (mailbox_id, modseq, uid_lo, uid_hi)"
                " VALUES (%s, %s, %s, %s)",
                [(box_id, modseq, lo, hi) for lo, hi in ranges],
            )

    def _check_quota(self, conn: pg.Connection, user: str, adding: int, limit: int) -> None:
        """RFC 9208 §4.3: refuse what would take the usage over ``limit`` (0: none). The
        caller holds the user row's lock, so two nodes cannot both pass the last bytes."""
        if limit > 0:
            refuse_over_quota(self._usage(conn, user), adding, limit)

    def _usage(self, conn: pg.Connection, user: str) -> int:
        return int(
            pg.scalar(
                conn,
                "SELECT coalesce(sum(m.size), 0) FROM mail_messages m"
                " JOIN mail_mailboxes b ON b.id = m.mailbox_id WHERE b.user_address = %s",
                (user,),
            )
        )

    def usage(self, user: str) -> int:
        with self._reading() as conn:
            return self._usage(conn, user)

    def add(
        self, user: str, name: str, messages: list[NewMessage], *, limit: int, missing: str
    ) -> tuple[int, list[int]]:
        """Index written files into mailbox ``name`` (APPEND: ``missing`` TRYCREATE);
        (UIDVALIDITY, their UIDs, ascending)."""
        with self._transaction() as conn:
            if limit > 0:
                self._lock_user(conn, user)
                self._check_quota(conn, user, sum(m.size for m in messages), limit)
            box = self._box(conn, user, name, lock="UPDATE", missing=missing)
            first, modseq = self._allocate(conn, box.id, len(messages))
            uids = list(range(first, first + len(messages)))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO mail_messages (mailbox_id, uid, modseq, " + _NEW_COLUMNS + ")"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (box.id, uid, modseq, *astuple(m))
                        for uid, m in zip(uids, messages, strict=True)
                    ],
                )
            self._remember_keywords(conn, box, [k for m in messages for k in m.keywords])
            self._notify(conn, user, name)
        return box.uidvalidity, uids

    def _allocate(self, conn: pg.Connection, box_id: int, count: int) -> tuple[int, int]:
        """``count`` UIDs and one MODSEQ of the locked mailbox: (first UID, MODSEQ)."""
        row = self._rows(
            conn,
            "UPDATE mail_mailboxes SET uidnext = uidnext + %s,"
            " highestmodseq = highestmodseq + 1 WHERE id = %s"
            " RETURNING uidnext - %s, highestmodseq",
            (count, box_id, count),
        )[0]
        return int(row[0]), int(row[1])

    def copy(
        self, user: str, src_name: str, ranges: Ranges, dst_name: str, *, move: bool, limit: int
    ) -> Copied:
        """COPY/MOVE (COPYUID, RFC 4315 §3). A COPY hard-links each file next to its
        source and is refused whole over quota; a MOVE keeps the files and adds nothing to
        the usage, so it never is (RFC 9208 §4.3)."""
        with self._transaction() as conn:
            if limit > 0 and not move:
                self._lock_user(conn, user)
            boxes = self._lock_boxes(conn, user, src_name, dst_name)
            src, dst = boxes[src_name], boxes[dst_name]
            within, bounds = _within(ranges)
            picked = self._rows(
                conn,
                "SELECT m.uid, m.path, m.size, m.keywords FROM mail_messages m" + within
                + " m.mailbox_id = %s ORDER BY m.uid",
                (*bounds, src.id),
            )  # fmt: skip
            if not picked:
                return Copied(dst.uidvalidity, [], [])
            if limit > 0 and not move:
                self._check_quota(conn, user, sum(row[2] for row in picked), limit)
            src_uids = [row[0] for row in picked]
            paths = [row[1] for row in picked] if move else self._link(row[1] for row in picked)
            first, modseq = self._allocate(conn, dst.id, len(picked))
            dst_uids = list(range(first, first + len(picked)))
            conn.execute(
                "INSERT INTO mail_messages (mailbox_id, uid, modseq, path, " + _COPY_COLUMNS
                + ") SELECT %s, c.new_uid, %s, c.new_path, "
                + ", ".join(f"m.{c.strip()}" for c in _COPY_COLUMNS.split(","))
                + " FROM mail_messages m JOIN unnest(%s::bigint[], %s::bigint[], %s::text[])"
                " AS c(src_uid, new_uid, new_path) ON m.uid = c.src_uid WHERE m.mailbox_id = %s",
                (dst.id, modseq, src_uids, dst_uids, paths, src.id),
            )  # fmt: skip
            self._remember_keywords(conn, dst, [k for row in picked for k in row[3]])
            if move:
                self._remove(conn, src.id, src_uids)
            self._notify(conn, user, dst_name, *([src_name] if move else []))
        return Copied(dst.uidvalidity, src_uids, dst_uids)

    def _lock_boxes(self, conn: pg.Connection, user: str, src: str, dst: str) -> dict[str, Box]:
        """Both mailboxes, locked in id order; NONEXISTENT for the source, TRYCREATE for the
        target (RFC 9051 §6.4.7)."""
        rows = self._rows(
            conn,
            f"SELECT {_BOX_COLUMNS} FROM mail_mailboxes WHERE user_address = %s"
            " AND name = ANY(%s) ORDER BY id FOR UPDATE",
            (user, [src, dst]),
        )
        boxes = {row[1]: Box(*row) for row in rows}
        if src not in boxes:
            raise MailboxError(NONEXISTENT, f"no mailbox {src}")
        if dst not in boxes:
            raise MailboxError(TRYCREATE, f"no mailbox {dst}")
        return boxes

    def _link(self, paths: Iterator[str] | Sequence[str]) -> list[str]:
        """A hard link of each file next to it (durable: the directories are fsynced
        before the rows that name the links commit); a blob's key is shared."""
        links: list[str] = []
        directories: set[Path] = set()
        for path in paths:
            if path.startswith(BLOB):
                links.append(path)
                continue
            source = self.mail_dir / path
            link = source.parent / unique_name()
            os.link(source, link)
            directories.add(link.parent)
            links.append(str(link.relative_to(self.mail_dir)))
        for directory in directories:
            fsync_dir(directory)
        return links

    # --- bodies in a blob store -----------------------------------------------------------
    def named(self, paths: Sequence[str]) -> set[str]:
        """Which of the ``blob:`` paths some row still names (a committed picture: a
        body is deleted only when this says no row does)."""
        if not paths:
            return set()
        with self._reading() as conn:
            rows = self._rows(
                conn,
                # The LIKE is the partial index's own condition (schema step 2), so that
                # the planner may use it.
                "SELECT DISTINCT path FROM mail_messages WHERE path LIKE 'blob:%%'"
                " AND path = ANY(%s)",
                (list(paths),),
            )
        return {row[0] for row in rows}

    def body_counts(self) -> tuple[int, int, int, int]:
        """(rows with a blob body, their bytes, rows with a file, their bytes)."""
        with self._reading() as conn:
            row = self._rows(
                conn,
                "SELECT count(*) FILTER (WHERE path LIKE 'blob:%%'),"
                " coalesce(sum(size) FILTER (WHERE path LIKE 'blob:%%'), 0),"
                " count(*) FILTER (WHERE path NOT LIKE 'blob:%%'),"
                " coalesce(sum(size) FILTER (WHERE path NOT LIKE 'blob:%%'), 0)"
                " FROM mail_messages",
                (),
            )[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def file_rows(self, after: tuple[int, int], limit: int) -> list[tuple[int, int, str]]:
        """(mailbox id, UID, path) of rows whose body is a file, after ``after`` in
        (mailbox id, UID) order: the copy to a blob store walks them in pages."""
        with self._reading() as conn:
            return [
                (int(box), int(uid), str(path))
                for box, uid, path in self._rows(
                    conn,
                    "SELECT mailbox_id, uid, path FROM mail_messages"
                    " WHERE path NOT LIKE 'blob:%%' AND (mailbox_id, uid) > (%s, %s)"
                    " ORDER BY mailbox_id, uid LIMIT %s",
                    (after[0], after[1], limit),
                )
            ]

    def users_of_boxes(self) -> dict[int, str]:
        """Mailbox id -> its user, for every mailbox."""
        with self._reading() as conn:
            rows = self._rows(conn, "SELECT id, user_address FROM mail_mailboxes", ())
        return {int(box): str(user) for box, user in rows}

    def repoint(self, moves: Sequence[tuple[int, int, str, str]]) -> list[str]:
        """Each (mailbox id, UID, old path, new path): the row, if it still names the old
        path (a file), now names the new one (a blob), in one transaction. The new paths
        of rows gone meanwhile (expunged, moved): nothing names those bodies."""
        unused: list[str] = []
        with self._transaction() as conn:
            for box_id, uid, old, new in moves:
                changed = conn.execute(
                    "UPDATE mail_messages SET path = %s"
                    " WHERE mailbox_id = %s AND uid = %s AND path = %s",
                    (new, box_id, uid, old),
                ).rowcount
                if not changed:
                    unused.append(new)
        return unused

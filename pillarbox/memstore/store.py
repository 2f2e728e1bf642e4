"""The in-memory mail store: the ``MailStore`` / ``UserMail`` Protocols of
``pillarbox.mailstore.api`` over :mod:`.mailboxes`, and the app component that provides it.

It exists to prove the seam (issue 18): IMAP and POP3 run their test suites against it
(``PILLARBOX_TEST_MAILSTORE=memory``, read by tests/pbserver.py only), so whatever they
need of a store is in the Protocols and not in SQLite or Maildir. Mail lives as long as the
process: no configuration value selects it, it is handed to ``app.Server`` by code.

Every operation is quick Python on the event loop without an await inside, so each is
atomic; watchers (IDLE sessions) are told after the change, as the SQLite store publishes
after its commit.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox.mailstore import api
from pillarbox.mailstore.api import Learner
from pillarbox.mailstore.component import MailStoreComponent, StoreContext
from pillarbox.mailstore.filters import ALL, SearchFilter
from pillarbox.mailstore.flags import DELETED, SEEN, split_flags
from pillarbox.mailstore.names import BadMailboxName, normalise, validate
from pillarbox.mailstore.results import (
    ChangeSet,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)
from pillarbox.mailstore.rows import (
    ALL_PARTS,
    EMPTY_FLAGS,
    Appended,
    Copied,
    Delivered,
    FetchRow,
    FlagBatch,
    FlagUpdate,
    ListChange,
    MailboxEvent,
    Parts,
    Quota,
    SearchRow,
)
from pillarbox.memstore.filter import passes
from pillarbox.memstore.mailboxes import (
    Mailbox,
    Message,
    UserBoxes,
    parse_message,
    vanished_since,
)

Watcher = Callable[[str], None]


class MemoryUserMail:
    """One user's mailboxes (``api.UserMail``); see the module docstring."""

    def __init__(self, store: MemoryStore, user: str, boxes: UserBoxes):
        self._store = store
        self.user = user
        self._boxes = boxes

    def _changed(self, mailbox: str) -> None:
        self._store.publish(self.user, mailbox)

    def watch(self, callback: Watcher) -> Callable[[], None]:
        return self._store.watch(self.user, callback)

    def watch_names(self, callback: Callable[[MailboxEvent], None]) -> Callable[[], None]:
        return self._store.watch_names(self.user, callback)

    def _list_changed(self, kind: ListChange, name: str, old: str | None = None) -> None:
        self._store.publish_name(self.user, MailboxEvent(kind, name, old))

    async def release(self) -> None:
        return None  # the mail stays: it lives as long as the store

    # --- mailboxes
    async def list_mailboxes(self) -> list[MailboxInfo]:
        subscribed = self._boxes.subscribed
        return [
            MailboxInfo(name, box.special_use, name in subscribed)
            for name, box in sorted(self._boxes.boxes.items())
        ]

    async def subscriptions(self) -> set[str]:
        return set(self._boxes.subscribed)

    async def create(self, name: str, special_use: str | None = None) -> None:
        self._boxes.create(name, special_use)
        self._list_changed(ListChange.CREATED, name)

    async def delete(self, name: str) -> None:
        self._boxes.delete(name)
        self._changed(name)
        self._list_changed(ListChange.DELETED, name)

    async def rename(self, old: str, new: str) -> None:
        self._boxes.rename(old, new)
        self._changed(old)
        self._list_changed(ListChange.RENAMED, new, old)

    async def subscribe(self, name: str, on: bool) -> None:
        self._boxes.subscribe(name, on)
        self._list_changed(ListChange.SUBSCRIBED if on else ListChange.UNSUBSCRIBED, name)

    async def status(self, name: str) -> StatusInfo:
        box = self._boxes.mailbox(name)
        messages = box.messages.values()
        return StatusInfo(
            messages=len(box.messages),
            recent=sum(1 for uid in box.messages if uid >= box.recent_uid),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            unseen=sum(1 for m in messages if not m.mask & SEEN),
            deleted=sum(1 for m in messages if m.mask & DELETED),
            size=sum(m.size for m in messages),
            highestmodseq=box.highestmodseq,
            deleted_storage=sum(m.size for m in messages if m.mask & DELETED),
        )

    # --- selected mailbox
    async def select(self, name: str, readonly: bool) -> SelectInfo:
        box = self._boxes.mailbox(name)
        unseen = next((m.uid for m in box.messages.values() if not m.mask & SEEN), None)
        recent_from = box.recent_uid
        if not readonly:
            box.recent_uid = max(box.recent_uid, box.uidnext)  # RFC 3501 §2.3.2
        keywords = dict(box.keywords)
        for message in box.messages.values():
            keywords.update(dict.fromkeys(message.keywords))
        return SelectInfo(
            name=name,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highestmodseq=box.highestmodseq,
            uids=array("I", box.messages),
            recent_from_uid=recent_from,
            first_unseen_uid=unseen,
            keywords=tuple(keywords),
        )

    async def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        box = self._boxes.mailbox(name)
        present = None
        if with_expunges:
            known = [uid for uid in box.messages if uid <= known_max]
            if len(known) < known_count:
                present = array("I", known)
        new = array("I", (uid for uid in box.messages if uid > known_max))
        updates = [
            FlagUpdate(m.uid, m.flags, m.modseq)
            for m in box.messages.values()
            if m.modseq > since_modseq and m.uid <= known_max
        ]
        recent_from = box.recent_uid
        if claim_recent and len(new):
            box.recent_uid = max(box.recent_uid, new[-1] + 1)
        return ChangeSet(present, new, updates, box.highestmodseq, box.uidnext, recent_from)

    async def vanished(
        self, name: str, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        return vanished_since(self._boxes.mailbox(name), since_modseq, ranges)

    async def fetch(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        data: bool,
        limit: int,
        changed_since: int = 0,
        parts: Parts = ALL_PARTS,  # all are at hand: nothing to save
    ) -> list[FetchRow]:
        rows: list[FetchRow] = []
        for m in self._boxes.mailbox(name).in_ranges(ranges):
            if len(rows) >= limit:
                break
            if m.modseq <= changed_since:
                continue
            if data:
                row = FetchRow(
                    m.uid, m.flags, m.internal_date, m.size, m.modseq,
                    m.envelope, m.structure, m.header,
                )  # fmt: skip
            else:
                row = FetchRow(m.uid, m.flags, m.internal_date, m.size, m.modseq)
            rows.append(row)
        return rows

    async def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]:
        found = [m for m in self._boxes.mailbox(name).messages.values() if passes(where, m)]
        return array("I", (m.uid for m in found)), max((m.modseq for m in found), default=0)

    async def fetch_flags(
        self, name: str, ranges: list[tuple[int, int]], limit: int, modseqs: bool = True
    ) -> FlagBatch:
        box = self._boxes.mailbox(name)
        for lo, hi in ranges:
            batch: list[Message] = []
            for m in box.in_ranges([(lo, hi)]):
                if len(batch) >= limit:
                    break
                batch.append(m)
            if batch:
                return FlagBatch(
                    [m.uid for m in batch],
                    bytes(m.mask for m in batch),
                    [m.modseq for m in batch] if modseqs else [],
                    {m.uid: tuple(m.keywords) for m in batch if m.keywords},
                    batch[-1].uid,
                )
        return EMPTY_FLAGS

    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: SearchFilter, limit: int
    ) -> list[SearchRow]:
        rows: list[SearchRow] = []
        needs_text = header or _mentions_header(where)
        for m in self._boxes.mailbox(name).in_ranges([(lo, hi)]):
            if len(rows) >= limit:
                break
            if passes(where or ALL, m):
                text = m.search_text if needs_text else ""
                rows.append(
                    SearchRow(
                        m.uid,
                        m.mask,
                        " ".join(m.keywords),
                        m.internal_date,
                        m.size,
                        m.modseq,
                        m.sent_date,
                        text,
                    )
                )
        return rows

    async def read_message(self, name: str, uid: int) -> bytes | None:
        message = self._boxes.mailbox(name).messages.get(uid)
        return None if message is None else message.data

    async def full_text_pending(self, name: str, max_uid: int) -> int | None:
        self._boxes.mailbox(name)
        return None  # no full-text index: IMAP reads the messages a body search needs

    async def full_text_catch_up(self, name: str) -> None:
        return None

    async def store(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        box = self._boxes.mailbox(name)
        result = store_flags(box, ranges, mode, flags, unchanged_since)
        self._changed(name)
        return result

    async def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]:
        uids = self._boxes.expunge(name, ranges)
        if uids:
            self._changed(name)
        return uids

    async def append(
        self, name: str, data: bytes, flags: tuple[str, ...], internal_date: float | None
    ) -> Appended:
        box = self._boxes.target(name)
        self._boxes.check_quota(len(data), self._store.quota_limit(self.user))
        uid = box.place(parse_message(data, flags, internal_date), box.next_modseq())
        self._changed(name)
        return Appended(box.uidvalidity, uid)

    async def copy(self, src: str, ranges: list[tuple[int, int]], dst: str, move: bool) -> Copied:
        limit = self._store.quota_limit(self.user)
        copied = self._boxes.copy(src, ranges, dst, move=move, limit=limit)
        self._changed(dst)
        if move:
            self._changed(src)
        return copied

    async def quota(self) -> Quota:
        return Quota(self._boxes.usage(), self._store.quota_limit(self.user))


def store_flags(
    box: Mailbox,
    ranges: list[tuple[int, int]],
    mode: str,
    flags: tuple[str, ...],
    unchanged_since: int | None,
) -> StoreResult:
    """STORE (RFC 3501 §6.4.6; UNCHANGEDSINCE, RFC 7162 §3.1.3): ``mode`` is ``add``,
    ``remove`` or ``replace``. Keywords compare case-insensitively, as the SQLite store's."""
    previous = box.highestmodseq
    mask, keywords = split_flags(flags)
    if mode != "remove":
        box.keywords.update(dict.fromkeys(keywords))
    modseq = box.highestmodseq + 1
    updated: list[FlagUpdate] = []
    failed: list[int] = []
    for m in box.in_ranges(ranges):
        if unchanged_since is not None and m.modseq > unchanged_since:
            failed.append(m.uid)
            continue
        if mode == "add":
            have = {k.lower() for k in m.keywords}
            new_mask, new_kw = (
                m.mask | mask,
                m.keywords + [k for k in keywords if k.lower() not in have],
            )
        elif mode == "remove":
            drop = {k.lower() for k in keywords}
            new_mask, new_kw = m.mask & ~mask, [k for k in m.keywords if k.lower() not in drop]
        else:
            new_mask, new_kw = mask, list(keywords)
        if (new_mask, new_kw) != (m.mask, m.keywords):
            m.mask, m.keywords, m.modseq = new_mask, new_kw, modseq
            box.highestmodseq = modseq
        updated.append(FlagUpdate(m.uid, m.flags, m.modseq))
    return StoreResult(updated, failed, box.highestmodseq, previous)


def _mentions_header(where: SearchFilter) -> bool:
    if where[0] == "header":
        return True
    return any(isinstance(part, tuple) and _mentions_header(part) for part in where[1:]) or any(
        isinstance(part, list) and any(isinstance(n, tuple) and _mentions_header(n) for n in part)
        for part in where[1:]
    )


class MemoryStore:
    """Every user's mail in memory (``api.MailStore``, and what delivery, the quota check
    and the spam component use of a store)."""

    def __init__(self) -> None:
        self._users: dict[str, UserBoxes] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._name_watchers: dict[str, set[Callable[[MailboxEvent], None]]] = {}
        self._quota_of: Callable[[str], int] = lambda user: 0
        self.learner: Learner | None = None  # kept, not called: learning is the SQLite store's

    async def open(self, user: str) -> MemoryUserMail:
        boxes = self._users.get(user)
        if boxes is None:
            boxes = self._users[user] = UserBoxes()
        return MemoryUserMail(self, user, boxes)

    # --- change notification (what ``store.changes.ChangesHub`` does, on one loop)
    def watch(self, user: str, callback: Watcher) -> Callable[[], None]:
        self._watchers.setdefault(user, set()).add(callback)

        def unwatch() -> None:
            watchers = self._watchers.get(user)
            if watchers is not None:
                watchers.discard(callback)

        return unwatch

    def publish(self, user: str, mailbox: str) -> None:
        for callback in list(self._watchers.get(user, ())):
            callback(mailbox)

    def watch_names(
        self, user: str, callback: Callable[[MailboxEvent], None]
    ) -> Callable[[], None]:
        self._name_watchers.setdefault(user, set()).add(callback)
        return lambda: self._name_watchers.get(user, set()).discard(callback)

    def publish_name(self, user: str, event: MailboxEvent) -> None:
        for callback in list(self._name_watchers.get(user, ())):
            callback(event)

    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None:
        self.publish(user_address, mailbox)

    # --- what delivery, the quota check and spam use
    def set_learner(self, learner: Learner | None) -> None:
        self.learner = learner

    def set_quota_lookup(self, lookup: Callable[[str], int]) -> None:
        self._quota_of = lookup

    def quota_limit(self, user: str) -> int:
        return self._quota_of(user)

    async def usage(self, user: str) -> int:
        return (await self.open(user))._boxes.usage()

    async def mailbox_exists(self, user: str, folder: str) -> bool:
        try:
            validate(folder)
        except BadMailboxName:
            return False
        return normalise(folder) in (await self.open(user))._boxes.boxes

    async def deliver(
        self,
        user: str,
        folder: str,
        message: Sequence[bytes | Path],
        *,
        sender: str | None = None,
        prefix: bytes = b"",
        flags: Sequence[str] = (),
    ) -> Delivered:
        """Store ``message`` (bytes, or spooled files read in a thread) in ``user``'s
        ``folder`` with ``flags``, as ``store.mailbox.MailStore.deliver`` does; the handle
        names it by its UID."""
        folder = normalise(folder)
        validate(folder)  # BadMailboxName, as the Maildir store raises it
        parts = [
            p if isinstance(p, bytes) else await asyncio.to_thread(p.read_bytes) for p in message
        ]
        if sender is not None:
            prefix = trace_fields(sender, user) + prefix
        boxes = (await self.open(user))._boxes
        if folder not in boxes.boxes:
            boxes.create(folder)  # as the Maildir writer makes a missing folder's directory
        box = boxes.mailbox(folder)
        uid = box.place(
            parse_message(prefix + b"".join(parts), list(flags), None), box.next_modseq()
        )
        self.publish(user, folder)
        return Delivered(folder, str(uid))

    async def start(self) -> None:
        return None  # nothing to open: the mail lives in this object

    async def close(self) -> None:
        self._watchers.clear()
        self._name_watchers.clear()


def trace_fields(sender: str, user: str) -> bytes:
    """Return-Path (RFC 5321 §4.4: the final delivery adds it) and Delivered-To."""
    return f"Return-Path: <{sender}>\r\nDelivered-To: {user}\r\n".encode()


# --- the app component ------------------------------------------------------------------------


def make_memory_store(ctx: StoreContext) -> MailStoreComponent[MemoryStore]:
    return MailStoreComponent(ctx, MemoryStore())


if TYPE_CHECKING:

    def _conforms(store: MemoryStore, mail: MemoryUserMail) -> tuple[api.MailService, api.UserMail]:
        """Never called: here mypy checks that this store implements the neutral API."""
        return store, mail

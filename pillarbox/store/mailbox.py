"""The mail store service: per-user indexes behind an async interface (``MailStore``).

``MailStore.open(user)`` returns a :class:`UserMailboxes` handle shared by all sessions of that
user (reference counted); its methods run the blocking :class:`~pillarbox.store.index.UserIndex`
work in a small dedicated thread pool, one operation at a time per user (the index lock), so
the event loop never waits on SQLite or the disk. Every change is committed first and then
published on the :class:`~pillarbox.store.changes.ChangesHub`, which also carries SMTP
delivery's ``notify_new_mail``.

The methods of ``UserMailboxes`` are the whole storage interface IMAP and POP3 need (the
``UserMail`` Protocol of ``pillarbox.mailstore.api``): a PostgreSQL implementation for
several front-end nodes would implement the same methods and publish through a shared hub.

Learning hook: what a user does with mail is what the spam filter learns from. After a
COPY/MOVE into the Junk folder (special-use ``\\Junk``) or a STORE of ``$Junk``, and after
a COPY/MOVE out of Junk (not into Trash: deleting spam is not calling it ham) or a STORE of
``$NotJunk``, the messages are read and handed to the learner set with
:meth:`MailStore.set_learner` (app wiring gives it ``pillarbox.spam``'s; the store imports
no filter). It runs as a background task after the IMAP command has been answered: a slow
or failing filter never delays or fails the user's command.

Delivery: :meth:`MailStore.deliver` is the one way mail arrives from outside IMAP (SMTP,
Sieve ``fileinto``, the queue's reports). It writes the file durably into the folder's
``new/`` (``store.maildir.MaildirWriter``: parallel file fsyncs, group-committed directory
fsyncs), then indexes it under the user's index lock (the sync moves it to ``cur/`` and gives
it its UID, MODSEQ, small row with the CRLF size of the bytes in hand, and quota usage; the
parse and the full-text row, the dearest parts, are left to the background job, which
starts once the user's deliveries pause for ``PARSE_QUIET`` seconds, see
``store.lazyparse``), then tells the watchers (IDLE sessions). Concurrent deliveries to one
user share one turn of the lock (:meth:`UserMailboxes.index_delivered`), and the index of a
user without sessions stays open ``DELIVERY_LINGER`` seconds, so a burst of mail opens it
once.

Open indexes outlive their sessions: when a user's last IMAP or POP3 session ends, the index
stays open ``session_linger`` seconds (``SESSION_LINGER``), so the phone, laptop and webmail
that log in all day find it open (no SQLite connections, migrations check, folder discovery
or first sync to redo per login: what Dovecot's index cache keeps). Delivery's and the
sessions' lingering indexes are one LRU of at most ``MAX_LINGERING``; the least recently
used is closed first. Nothing in an open index belongs to a login: authentication is the
accounts store's (a password changed meanwhile counts at the next LOGIN). A message over
``INDEX_AT_DELIVERY_MAX`` is left in ``new/`` for the next sync, which parses it then (as
before delivery indexed), so SMTP's memory does not grow with the size of the mail. The
Maildir write is the commit point: if indexing fails or the process dies before it, the
file waits in ``new/`` and the next sync indexes it, exactly once (see
``IndexWriter.take_delivered`` in ``store.writes``).

Lazy parsing (``store.lazyparse``): a read that needs columns of messages not parsed yet
parses those first (``_parse_first``), and the background task below parses the rest with
their full-text rows, pausing while a command waits for a parse and while deliveries come
in (a burst's parse would take SMTP's CPU; ``PARSE_QUIET`` seconds after it, the first
look at the burst finds it parsed, as when delivery parsed every message).

Full-text backfill: messages the index took in bulk (see ``store.fulltext``) are indexed by
one background task per open user, a chunk of ``BACKFILL_CHUNK`` messages per turn of the
index lock, so a session's commands wait at most one chunk. It holds a reference on the index,
so it finishes even if every session of the user logs out; a server stop interrupts it
after its chunk, and the next open carries on.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.mailstore import api
from pillarbox.mailstore.api import SortCriterion
from pillarbox.mailstore.component import MailStoreComponent
from pillarbox.mailstore.component import StoreContext as BaseContext
from pillarbox.mailstore.filters import ALL, SearchFilter
from pillarbox.mailstore.rows import (
    ALL_PARTS,
    Appended,
    Copied,
    Delivered,
    FetchRow,
    FlagBatch,
    ListChange,
    MailboxEvent,
    Parts,
    Quota,
    SearchRow,
)
from pillarbox.mime import to_crlf
from pillarbox.store.changebatch import ChangesBatcher, Question
from pillarbox.store.changes import ChangesHub
from pillarbox.store.flags import split_filename
from pillarbox.store.index import UserIndex
from pillarbox.store.lazyparse import Need, need_of
from pillarbox.store.maildir import (
    MaildirWriter,
    Part,
    flags_info,
    size_in_name,
    user_maildir,
)
from pillarbox.store.names import BadMailboxName, folder_dir, normalise
from pillarbox.store.reads import IndexReader
from pillarbox.store.sortkeys import COLUMN
from pillarbox.store.types import (
    ChangeSet,
    MailboxError,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)

_log = log.get("store")
P = ParamSpec("P")
T = TypeVar("T")
# learner(user, messages, spam): see "Learning hook" in the module docstring.
Learner = Callable[[str, list[bytes], bool], Awaitable[None]]
LEARN_MAX = 100  # messages read for learning per command
QuotaLookup = Callable[[str], int]
JUNK_USE, TRASH_USE = "\\Junk", "\\Trash"
BACKFILL_CHUNK = 50  # messages per backfill transaction (about 50 ms of work)
PARSE_CHUNK = 200  # messages parsed per turn of the index lock (store.lazyparse)
DEMAND_CHUNK = 500  # the same for a command waiting for them (fewer turns, same waits)
# Seconds without a delivery to a user before the background parse of what delivery left
# unparsed runs (started by delivery itself, or by a session): during a burst it would
# take the CPU SMTP needs, and a moment after it the first look at the burst finds it done.
PARSE_QUIET = 0.25
ALL_UIDS = 0xFFFFFFFF
# Bigger deliveries are indexed by the next sync (an IMAP or POP3 session's), not at once:
# parsing reads the whole message, and SMTP's memory must not grow with the message size.
INDEX_AT_DELIVERY_MAX = 1 << 20
DELIVERY_LINGER = 30.0  # seconds a delivered-to index stays open without sessions
SESSION_LINGER = 600.0  # seconds an index stays open after its user's last session
MAX_LINGERING = 64  # such indexes at most (each holds three SQLite connections: fds)

__all__ = ["MailStore", "MailboxError", "UserMailboxes"]


def _no_quota(user: str) -> int:
    return 0


class UserMailboxes:
    """One user's mailboxes; see the module docstring."""

    def __init__(self, store: MailStore, user: str, index: UserIndex):
        self._store = store
        self.user = user
        self._index = index
        self.refs = 0
        self._backfilling = False
        self._changes = ChangesBatcher(self._run, index)  # one sync per mailbox, not session
        # Folders delivery wrote into, each with the deliveries waiting for their index row,
        # and the CRLF sizes of the files by base name.
        self._delivered: dict[str, list[asyncio.Future[None]]] = {}
        self._delivered_sizes: dict[str, int] = {}
        self._indexer: asyncio.Task[None] | None = None
        # Commands waiting for a parse (_parse_first); the background waits for none.
        self._demand = 0
        self._no_demand = asyncio.Event()
        self._no_demand.set()
        # Set while no delivery came for PARSE_QUIET seconds: the loop time of the last one,
        # and the timer that sets it (and starts the parse) after it.
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._last_delivery = 0.0
        self._quiet_timer: asyncio.TimerHandle | None = None

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        index = self._index

        def locked() -> T:
            with index.lock:
                return fn(*args, **kwargs)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store.executor, locked)

    def _backfill_soon(self) -> None:
        """Start the background parse and full-text backfill if the index left messages
        for them (see the module docstring); one task per user at a time."""
        index = self._index
        if self._stopping or not self._store.holds(self):
            return  # closed (or closing) meanwhile: the next open starts it again
        parse = index.parse_wanted and self._store.parse_in_background
        if (parse or index.backfill_wanted) and not self._backfilling:
            self._backfilling = True
            self.refs += 1  # the index stays open until it is done, sessions or not
            self._store.spawn(self._backfill(), what="full-text backfill")

    async def _backfill(self) -> None:
        index = self._index
        try:
            # The parse first: it writes the full-text rows of what it parses as well.
            while index.parse_wanted and self._store.parse_in_background and not self._stopping:
                index.parse_wanted = False  # set again by any bulk add meanwhile
                parsed: tuple[int, int] | None = (0, 0)
                while parsed is not None and not self._stopping:
                    await self._no_demand.wait()  # a command waiting for a parse goes first
                    await self._quiet.wait()  # and so does a burst of deliveries
                    parsed = await self._run(index.parse_backlog, parsed, PARSE_CHUNK)
                await self._run(index.settle_parse)
            while index.backfill_wanted and not self._stopping:
                index.backfill_wanted = False  # set again by any bulk add meanwhile
                cursor: tuple[int, int] | None = (0, 0)
                while cursor is not None and not self._store.closing:
                    await self._no_demand.wait()
                    cursor = await self._run(index.backfill_full_text, cursor, BACKFILL_CHUNK)
        finally:
            self._backfilling = False
            await self.release()

    def _parse_after_quiet(self) -> None:
        """After a batch of deliveries: start the background parse of their small rows
        once ``PARSE_QUIET`` seconds pass without another (one timer, moved on)."""
        loop = asyncio.get_running_loop()
        self._last_delivery = loop.time()
        self._quiet.clear()
        if self._quiet_timer is None:
            self._quiet_timer = loop.call_later(PARSE_QUIET, self._quiet_timer_fired)

    def _quiet_timer_fired(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_delivery + PARSE_QUIET - loop.time()
        if wait > 0:  # delivered to since: wait the rest
            self._quiet_timer = loop.call_later(wait, self._quiet_timer_fired)
            return
        self._quiet_timer = None
        self._quiet.set()
        self._backfill_soon()

    @property
    def _stopping(self) -> bool:
        return self._index.closed or self._store.closing

    async def _parse_first(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        *,
        need: Need = Need.PARSED,
        changed_since: int = 0,
        limit: int | None = None,
        full_text: bool = False,
    ) -> bool:
        """Parse the pending messages a read of (the first ``limit`` messages of) ``ranges``
        is about to see, a chunk per turn of the index lock (see store.lazyparse): what
        ``need`` asks for (the full parse, or only their CRLF sizes or header columns), with
        ``full_text`` their full-text rows too. Whether there were any. The background
        parse waits meanwhile: its chunks would only make the command wait longer."""
        if not self._index.unparsed or not ranges:
            return False
        if not await self._read(lambda r: r.unparsed_in(name, ranges, need=need)):
            return False
        left = limit
        todo = ranges
        self._demand += 1
        self._no_demand.clear()
        try:
            while todo and (left is None or left > 0) and not self._stopping:
                chunk = DEMAND_CHUNK if left is None else min(DEMAND_CHUNK, left)
                done = await self._run(
                    self._index.parse_pending, name, todo, need=need,
                    changed_since=changed_since, limit=chunk, full_text=full_text,
                )  # fmt: skip
                if done is None:
                    break
                last, count = done
                todo = [(max(lo, last + 1), hi) for lo, hi in todo if hi > last]
                if left is not None:
                    left -= count
        finally:
            self._demand -= 1
            if not self._demand:
                self._no_demand.set()
        return True

    async def full_text_pending(self, name: str, max_uid: int) -> int | None:
        """Messages up to ``max_uid`` the full-text index does not cover yet; None when
        there is no full-text index (switched off, or SQLite without FTS5)."""
        if not self._index.full_text:
            return None
        return await self._read(lambda reader: reader.full_text_pending(name, max_uid))

    async def full_text_catch_up(self, name: str) -> None:
        """Index what the full-text index lacks of mailbox ``name`` now, a chunk per turn
        of the index lock: a body search would otherwise read those messages itself, which
        costs as much as indexing them and leaves nothing for the next search."""
        # Messages not parsed yet get both from one read of their file (store.lazyparse).
        await self._parse_first(name, [(1, ALL_UIDS)], full_text=True)
        after: int | None = 0
        while after is not None and not self._store.closing:
            after = await self._run(self._index.catch_up_full_text, name, after, BACKFILL_CHUNK)

    async def _read(self, query: Callable[[IndexReader], T]) -> T:
        """Run a read-only query on a pooled reader connection, outside the write lock."""
        index = self._index

        def pooled() -> T:
            reader = index.readers.get()
            try:
                return query(reader)
            finally:
                index.readers.put(reader)

        return await asyncio.get_running_loop().run_in_executor(self._store.executor, pooled)

    async def index_delivered(self, folder: str, sizes: dict[str, int]) -> None:
        """Index what delivery wrote into ``folder``'s ``new/`` (``sizes``: the CRLF sizes
        of the files it knows, by base name); returns once it is indexed.

        Group commit: the deliveries that arrive while the index is busy are indexed
        together in its next turn, so N concurrent deliveries to one user take about two
        turns of the index lock and one store worker, not N of each."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._delivered.setdefault(folder, []).append(done)
        self._delivered_sizes.update(sizes)
        if self._indexer is None:
            # A task of its own: a delivery whose caller gives up (an SMTP client gone) must
            # not leave the others' futures unanswered.
            self._indexer = asyncio.get_running_loop().create_task(self._index_deliveries())
        await done

    async def _index_deliveries(self) -> None:
        try:
            while self._delivered:
                batch, self._delivered = self._delivered, {}
                sizes, self._delivered_sizes = self._delivered_sizes, {}
                failure: Exception | None = None
                try:
                    await self._run(self._index.take_delivered, sorted(batch), sizes)
                except Exception as exc:
                    failure = exc
                for done in itertools.chain.from_iterable(batch.values()):
                    if done.done():
                        continue
                    if failure is None:
                        done.set_result(None)
                    else:
                        done.set_exception(failure)
                self._parse_after_quiet()
        finally:
            self._indexer = None

    def _changed(self, mailbox: str) -> None:
        self._store.hub.publish(self.user, mailbox)

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self._store.hub.watch(self.user, callback)

    def watch_names(self, callback: Callable[[MailboxEvent], None]) -> Callable[[], None]:
        return self._store.hub.watch_names(self.user, callback)

    def _list_changed(self, kind: ListChange, name: str, old: str | None = None) -> None:
        self._store.hub.publish_name(self.user, MailboxEvent(kind, name, old))

    async def release(self) -> None:
        """A session is done with the handle; the index stays open a while after the last
        one (see "Open indexes outlive their sessions" in the module docstring)."""
        await self._store.release(self, linger=self._store.session_linger)

    # --- mailboxes
    async def list_mailboxes(self) -> list[MailboxInfo]:
        return await self._run(self._index.list_mailboxes)

    async def subscriptions(self) -> set[str]:
        return await self._run(self._index.subscriptions)

    async def create(self, name: str, special_use: str | None = None) -> None:
        await self._run(self._index.create, name, special_use)
        self._list_changed(ListChange.CREATED, name)

    async def delete(self, name: str) -> None:
        await self._run(self._index.delete, name)
        self._changed(name)
        self._list_changed(ListChange.DELETED, name)

    async def rename(self, old: str, new: str) -> None:
        await self._run(self._index.rename, old, new)
        self._changed(old)
        self._list_changed(ListChange.RENAMED, new, old)

    async def subscribe(self, name: str, on: bool) -> None:
        await self._run(self._index.subscribe, name, on)
        self._list_changed(ListChange.SUBSCRIBED if on else ListChange.UNSUBSCRIBED, name)

    async def status(self, name: str) -> StatusInfo:
        info = await self._run(self._index.status, name)
        if await self._parse_first(name, [(1, ALL_UIDS)], need=Need.SIZES):
            info = await self._run(self._index.status, name)  # SIZE counts CRLF sizes
        return info

    # --- selected mailbox
    async def select(self, name: str, readonly: bool) -> SelectInfo:
        info = await self._run(self._index.select, name, readonly)
        self._backfill_soon()
        return info

    async def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        # Sessions woken by the same news ask together: see store/changebatch.py.
        question = Question(known_max, known_count, since_modseq, with_expunges, claim_recent)
        changes = await self._changes.ask(name, question)
        self._backfill_soon()
        return changes

    async def vanished(
        self, name: str, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        return await self._run(self._index.vanished, name, since_modseq, ranges)

    async def fetch(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        data: bool,
        limit: int,
        changed_since: int = 0,
        parts: Parts = ALL_PARTS,
    ) -> list[FetchRow]:
        await self._parse_first(
            name, ranges, need=Need.PARSED if data else Need.SIZES,
            changed_since=changed_since, limit=limit,
        )  # fmt: skip
        return await self._read(
            lambda reader: reader.fetch(
                name, ranges, data=data, limit=limit, changed_since=changed_since, parts=parts
            )
        )

    async def sort(
        self, name: str, ranges: list[tuple[int, int]], criteria: Sequence[SortCriterion]
    ) -> array[int]:
        # Keys of header fields exist once a message is parsed; ARRIVAL and SIZE need only
        # the true CRLF size of a message not parsed yet (store.lazyparse).
        header = any(COLUMN[key].startswith("k.") for key, _ in criteria)
        await self._parse_first(name, ranges, need=Need.PARSED if header else Need.SIZES)
        return await self._read(lambda reader: reader.sort_uids(name, ranges, criteria))

    async def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]:
        # The columns the filter reads (sizes, sent dates, header text), not the full parse:
        # a header SEARCH of a Maildir copied in reads header blocks only.
        need = need_of(where)
        if need is not None:
            await self._parse_first(name, [(1, ALL_UIDS)], need=need)
        return await self._read(lambda reader: reader.search_uids(name, where))

    async def fetch_flags(
        self, name: str, ranges: list[tuple[int, int]], limit: int, modseqs: bool = True
    ) -> FlagBatch:
        return await self._read(lambda reader: reader.fetch_flags(name, ranges, limit, modseqs))

    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: SearchFilter, limit: int
    ) -> list[SearchRow]:
        # The caller checks these rows against the whole program, whatever ``where`` says:
        # every row it can get must have its searched columns (size, sent date, header
        # text), the first ``limit`` if nothing filters; the rest of the parse can wait.
        everything = where is None or where == ALL
        await self._parse_first(
            name, [(lo, hi)], need=Need.SEARCHED, limit=limit if everything else None
        )
        return await self._read(
            lambda reader: reader.search_rows(name, lo, hi, header=header, where=where, limit=limit)
        )

    async def read_message(self, name: str, uid: int) -> bytes | None:
        data = await self._read(lambda reader: reader.read_message(name, uid))
        if data is None:
            # Maybe a flag change renamed the file and has not committed yet: ask the writer.
            data = await self._run(self._index.read_message, name, uid)
        return data

    async def store(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        result = await self._run(self._index.store, name, ranges, mode, flags, unchanged_since)
        self._changed(name)
        if self._store.learner is not None and mode != "remove":
            named = {f.lower() for f in flags}
            uids = [update.uid for update in result.updated]
            if "$junk" in named:
                self._learn_later(name, uids, spam=True)
            elif "$notjunk" in named:
                self._learn_later(name, uids, spam=False)
        return result

    async def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]:
        uids = await self._run(self._index.expunge, name, ranges)
        if uids:
            self._changed(name)
        return uids

    async def append(
        self, name: str, data: bytes, flags: tuple[str, ...], internal_date: float | None
    ) -> Appended:
        limit = self._store.quota_limit(self.user)
        result = await self._run(self._index.append, name, data, flags, internal_date, limit)
        self._changed(name)
        return result

    async def copy(self, src: str, ranges: list[tuple[int, int]], dst: str, move: bool) -> Copied:
        limit = self._store.quota_limit(self.user)
        result = await self._run(self._index.copy, src, ranges, dst, move=move, limit=limit)
        self._changed(dst)
        if move:
            self._changed(src)
        if self._store.learner is not None and result.dst_uids:
            self._spawn(self._learn_copy(src, dst, result.dst_uids))
        return result

    # --- quota (RFC 9208; see store/quota.py)
    async def quota(self) -> Quota:
        limit = self._store.quota_limit(self.user)
        return Quota(await self.usage(), limit)

    async def usage(self) -> int:
        """Bytes of the user's mail; sizes not known yet are measured first, a chunk per
        turn of the index lock, so that the usage step itself has none left to do."""
        if self._index.unparsed:
            for name in await self._run(self._index.unsized_mailboxes):
                await self._parse_first(name, [(1, ALL_UIDS)], need=Need.SIZES)
        return await self._run(self._index.usage)

    # --- learning hook (see the module docstring)
    def _special_uses(self, *names: str) -> list[str | None]:
        uses: list[str | None] = []
        for name in names:
            try:
                uses.append(self._index.mailbox(name).special_use)
            except MailboxError:
                uses.append(None)
        return uses

    async def _learn_copy(self, src: str, dst: str, uids: list[int]) -> None:
        src_use, dst_use = await self._run(self._special_uses, src, dst)
        if dst_use == JUNK_USE and src_use != JUNK_USE:
            await self._learn(dst, uids, spam=True)
        elif src_use == JUNK_USE and dst_use not in (JUNK_USE, TRASH_USE):
            await self._learn(dst, uids, spam=False)

    def _learn_later(self, mailbox: str, uids: list[int], *, spam: bool) -> None:
        if uids:
            self._spawn(self._learn(mailbox, uids, spam=spam))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """In the background, holding a reference: a LOGOUT right after the MOVE must not
        close the index under the reads."""
        self.refs += 1

        async def holding() -> None:
            try:
                await work
            finally:
                await self.release()

        self._store.spawn(holding())

    async def _learn(self, mailbox: str, uids: list[int], *, spam: bool) -> None:
        learner = self._store.learner
        if learner is None:
            return
        messages = []
        for uid in uids[:LEARN_MAX]:
            data = await self.read_message(mailbox, uid)
            if data is not None:
                messages.append(data)
        if messages:
            await learner(self.user, messages, spam)


@dataclass
class _Lingering:
    """A reference delivery holds on a user's index, until ``until`` (loop time)."""

    handle: UserMailboxes
    until: float
    timer: asyncio.TimerHandle


class MailStore:
    """All users' mail under ``mail_dir``; see the module docstring."""

    def __init__(
        self,
        mail_dir: Path,
        *,
        workers: int = 4,
        full_text: bool = True,
        hostname: str | None = None,
    ):
        self.mail_dir = mail_dir
        self.full_text = full_text
        self.hostname = hostname
        self._writer: MaildirWriter | None = None  # started by the first delivery
        # Users whose index delivery keeps open (a reference each), oldest first.
        self._lingering: OrderedDict[str, _Lingering] = OrderedDict()
        self.closing = False
        self.hub = ChangesHub()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
        self._users: dict[str, UserMailboxes] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self.learner: Learner | None = None
        # Parse what the index took unparsed in the background (store.lazyparse); off, the
        # readers still parse whatever they read first (a test sees them do it).
        self.parse_in_background = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._quota_of: QuotaLookup = _no_quota
        self.session_linger = SESSION_LINGER  # 0: close with the last session

    def set_learner(self, learner: Learner | None) -> None:
        self.learner = learner

    def set_quota_lookup(self, lookup: QuotaLookup) -> None:
        """``lookup(user)`` gives the user's quota in bytes (0: none); app wiring reads
        the accounts and ``[store] quota``. A quick read, asked on the event loop."""
        self._quota_of = lookup

    def quota_limit(self, user: str) -> int:
        return self._quota_of(user)

    async def usage(self, user: str) -> int:
        """Bytes of ``user``'s mail (for delivery's quota check); opens the index when no
        session has it open."""
        handle = await self.open(user)
        try:
            return await handle.usage()
        finally:
            await self.release(handle)

    def spawn(self, work: Coroutine[Any, Any, None], what: str = "learning hook") -> None:
        """Run ``work`` in the background; its failure is logged, never the user's."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                _log.error(f"{what} failed", exc_info=True)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open(self, user: str, *, backfill: bool = True) -> UserMailboxes:
        """The user's mailboxes (creating the Maildir and default folders the first time).
        ``backfill=False`` (delivery) starts no background work at the open: delivery
        starts the parse of what it indexes once its burst pauses (``PARSE_QUIET``)."""
        self.hub.bind_loop(asyncio.get_running_loop())
        lock = self._opening.setdefault(user, asyncio.Lock())
        async with lock:
            handle = self._users.get(user)
            if handle is None:
                root = user_maildir(self.mail_dir, user)
                loop = asyncio.get_running_loop()
                index = await loop.run_in_executor(
                    self.executor, partial(UserIndex, root, full_text=self.full_text)
                )
                handle = self._users[user] = UserMailboxes(self, user, index)
            handle.refs += 1
            if backfill:
                handle._backfill_soon()
            return handle

    def holds(self, handle: UserMailboxes) -> bool:
        """Whether ``handle`` is the open handle of its user (not released and closed)."""
        return self._users.get(handle.user) is handle

    async def release(self, handle: UserMailboxes, *, linger: float = 0.0) -> None:
        """Drop a reference; with ``linger``, the last one keeps the index open that many
        seconds more (a lingering reference, see ``_linger``)."""
        if linger > 0 and not self.closing:
            self._linger(handle, linger)
        handle.refs -= 1
        if handle.refs <= 0 and self._users.get(handle.user) is handle:
            del self._users[handle.user]
            index = handle._index

            def close() -> None:
                with index.lock:
                    index.close()

            await asyncio.get_running_loop().run_in_executor(self.executor, close)

    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None:
        self.hub.notify_new_mail(user_address, mailbox)

    # --- delivery (see "Delivery" in the module docstring)
    async def mailbox_exists(self, user: str, folder: str) -> bool:
        """Whether ``user``'s ``folder`` is on disk: its Maildir has ``cur/`` (what IMAP
        LIST shows, made by CREATE or by a delivery)."""
        try:
            path = _folder_path(self.mail_dir, user, normalise(folder))
        except (BadMailboxName, ValueError):
            return False
        return await asyncio.to_thread(lambda: (path / "cur").is_dir())

    async def deliver(
        self,
        user: str,
        folder: str,
        message: Sequence[Part],
        *,
        sender: str | None = None,
        prefix: bytes = b"",
        flags: Sequence[str] = (),
    ) -> Delivered:
        """Store ``message`` in ``user``'s ``folder`` with ``flags`` (a Sieve script's),
        durably, and index it; the handle names the file. With ``sender`` (the envelope sender, ""
        for the null sender) the file starts with Return-Path and Delivered-To (see
        :func:`delivery_headers`), then ``prefix`` (header fields of the caller's).
        Raises OSError when the message could not be written (nothing was stored),
        BadMailboxName for a bad folder name. Once the file is written the delivery has
        succeeded: a failure to index it is logged and left to the next sync."""
        if self.closing:
            # Stopping (e.g. the queue delivering a DSN during shutdown): a clean failure
            # the caller retries later.
            raise OSError(errno.ESHUTDOWN, "the mail store is shut down")
        folder = normalise(folder)  # "inbox" is INBOX: the index and the watchers know it so
        path = _folder_path(self.mail_dir, user, folder)
        info = await asyncio.to_thread(flags_info, path, flags) if flags else ""
        if self._writer is None:
            self._writer = MaildirWriter(self.hostname)
        if sender is not None:
            prefix = delivery_headers(sender, user) + prefix
        stored = await self._writer.write(path, message, prefix=prefix, info=info)
        try:
            if (size_in_name(stored.name) or 0) <= INDEX_AT_DELIVERY_MAX:
                await self._index_delivered(user, folder, _crlf_sizes(stored, prefix, message))
        except Exception:
            _log.error("indexing delivered mail failed, left to the next sync",
                       user=user, folder=folder, file=stored.name, exc_info=True)  # fmt: skip
        self.hub.publish(user, folder)
        return Delivered(folder, split_filename(stored.name)[0])

    async def _index_delivered(self, user: str, folder: str, sizes: dict[str, int]) -> None:
        if self.closing:
            return  # the indexes are closed: the next start's sync indexes the file
        lingering = self._lingering.get(user)
        if lingering is not None:  # the common case under load: no lock, no open
            handle = lingering.handle
            handle.refs += 1
        else:
            handle = await self.open(user, backfill=False)
        try:
            self._linger(handle, DELIVERY_LINGER)
            await handle.index_delivered(folder, sizes)
        finally:
            await handle.release()

    def _linger(self, handle: UserMailboxes, seconds: float) -> None:
        """Keep ``handle``'s index open at least ``seconds`` more (one reference), the most
        recently used of the lingering ones. One timer per user, moved on when it fires,
        not one per delivery or logout."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        lingering = self._lingering.get(handle.user)
        if lingering is not None:
            lingering.until = max(lingering.until, until)  # a delivery never shortens it
            self._lingering.move_to_end(handle.user)
            return
        handle.refs += 1
        timer = loop.call_later(seconds, self._linger_ended, handle.user)
        self._lingering[handle.user] = _Lingering(handle, until, timer)
        while len(self._lingering) > MAX_LINGERING:
            self._stop_lingering(next(iter(self._lingering)))

    def _linger_ended(self, user: str) -> None:
        lingering = self._lingering.get(user)
        if lingering is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < lingering.until:  # delivered to since: wait the rest
            lingering.timer = loop.call_at(lingering.until, self._linger_ended, user)
            return
        self._stop_lingering(user)

    def _stop_lingering(self, user: str) -> None:
        lingering = self._lingering.pop(user, None)
        if lingering is not None:
            lingering.timer.cancel()
            self.spawn(self.release(lingering.handle), what="closing an index")

    async def start(self) -> None:
        self.hub.bind_loop(asyncio.get_running_loop())

    async def close(self) -> None:
        self.closing = True  # a backfill stops after its chunk; the next start resumes it
        for lingering in self._lingering.values():
            lingering.timer.cancel()
        self._lingering.clear()  # the loop below releases every handle anyway
        if self._tasks:  # lessons in flight finish before the indexes close
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        for handle in list(self._users.values()):
            handle.refs = 1
            await self.release(handle)
        self.executor.shutdown(wait=False)


def _crlf_sizes(stored: Path, prefix: bytes, message: Sequence[Part]) -> dict[str, int]:
    """{base name: RFC822.SIZE} of a delivered file whose bytes are all in memory (the
    index then needs no read to know it), else {} (a spooled part: measured later)."""
    if not all(isinstance(part, bytes) for part in message):
        return {}
    data = b"".join([prefix, *message])  # type: ignore[list-item]
    return {split_filename(stored.name)[0]: len(to_crlf(data))}


def delivery_headers(sender: str, user: str) -> bytes:
    """The trace fields of a final delivery: Return-Path (RFC 5321 §4.4: the delivery into
    the mailbox adds it) and Delivered-To (the Postfix/qmail loop-detection field, which
    also tells a user which of its addresses received the mail)."""
    return f"Return-Path: <{sender}>\r\nDelivered-To: {user}\r\n".encode()


@functools.lru_cache(maxsize=4096)
def _folder_path(mail_dir: Path, user: str, folder: str) -> Path:
    root = user_maildir(mail_dir, user)
    directory = folder_dir(folder)  # Maildir++ folder (Dovecot layout, names escaped)
    return root / directory if directory else root


class StoreContext(BaseContext, Protocol):
    @property
    def settings(self) -> Settings: ...


def make_store(ctx: StoreContext) -> MailStoreComponent[MailStore]:
    """The mail store as an app component (``mailstore.component``): ``services.mail_store``
    is the :class:`MailStore` (IMAP's and POP3's backend, and where local delivery stores
    mail: :meth:`MailStore.deliver`) and ``services.mailbox_events`` the same object, whose
    ``notify_new_mail(user, mailbox)`` tells IDLE sessions of a change made outside it."""
    settings = ctx.settings
    store = MailStore(
        settings.mail_dir,
        full_text=settings.store.full_text_index,
        hostname=settings.hostname,
    )
    return MailStoreComponent(ctx, store)


if TYPE_CHECKING:

    def _conforms(
        store: MailStore, handle: UserMailboxes
    ) -> tuple[api.MailService, api.UserMail, api.SortingMail]:
        """Never called: here mypy checks that this store implements the neutral API."""
        return store, handle, handle

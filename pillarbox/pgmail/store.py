"""The mail store with its index in PostgreSQL (``[store] backend = "postgresql"``): the
``MailService`` / ``UserMail`` Protocols of ``pillarbox.mailstore.api`` over
:class:`~pillarbox.pgmail.index.MailIndex`, for several nodes sharing one database and one
mail directory.

Threads: every index call is a transaction in the store's own thread pool (as many
threads as ``[store] pool_size`` connections), so the event loop never waits on the
network. Message files are written by ``store.maildir.MaildirWriter`` (durable: file and
directory fsynced) before the transaction that indexes them commits, so a delivery that
returned is in the index and on disk, and one that failed left at most a file no row
names (a kill -9 in between: the queue's entry is then retried, the file stays unused).
With ``[store] blobs = "s3://..."`` the body is an object instead, put (S3's 200) before
that transaction in the same order, and an orphan left by a kill in between is swept
later (``pgmail.bodies``, which also reads and removes either kind).

Change notification across nodes: every write transaction NOTIFYs ``pillarbox_mail`` with
the user and mailbox, delivered at its commit. This node's sessions are told at once
after the commit (``store.changes.ChangesHub``, as the SQLite store does); the
:class:`~pillarbox.postgres.Listener` hands the other nodes' notifications to the same hub
and skips this node's own (they carry its name), so an IMAP IDLE on node A hears of a
delivery through node B as soon as B commits.

Learning hook: as the SQLite store's (see ``store.mailbox``): a COPY/MOVE into Junk
teaches spam, out of Junk (not into Trash) ham; STOREs of ``$Junk`` / ``$NotJunk`` too.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import random
import time
import uuid
from array import array
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, Protocol, TypeVar

import psycopg

from pillarbox import log
from pillarbox import postgres as pg
from pillarbox.blobs.api import BlobStore
from pillarbox.blobs.configured import open_blobs
from pillarbox.config import Settings
from pillarbox.mailstore import api
from pillarbox.mailstore.api import Learner
from pillarbox.mailstore.component import MailStoreComponent, StoreContext
from pillarbox.mailstore.errors import TRYCREATE, MailboxError
from pillarbox.mailstore.filters import SearchFilter
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
from pillarbox.pgmail import schema
from pillarbox.pgmail.bodies import Bodies, Swept, sweep
from pillarbox.pgmail.index import MailIndex
from pillarbox.pgmail.rows import NewMessage, parse_new
from pillarbox.store.changes import ChangesHub
from pillarbox.store.flags import split_filename
from pillarbox.store.mailbox import delivery_headers
from pillarbox.store.maildir import MaildirWriter, Part, user_maildir
from pillarbox.store.names import folder_dir

_log = log.get("store")
P = ParamSpec("P")
T = TypeVar("T")
Ranges = list[tuple[int, int]]
LEARN_MAX = 100  # messages read for learning per command, as the SQLite store
JUNK_USE, TRASH_USE = "\\Junk", "\\Trash"


class PgUserMail:
    """One user's mailboxes (``api.UserMail``): stateless, every call goes to the index."""

    def __init__(self, store: PgMailStore, user: str):
        self._store = store
        self.user = user
        self._index = store.index

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._store.run(fn, *args, **kwargs)

    def _changed(self, *mailboxes: str) -> None:
        for mailbox in mailboxes:
            self._store.hub.publish(self.user, mailbox)

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self._store.hub.watch(self.user, callback)

    def watch_names(self, callback: Callable[[MailboxEvent], None]) -> Callable[[], None]:
        # This node's own sessions only: the other nodes hear of message changes, not of
        # the mailbox list (their NOTIFY sessions see a new name at their next LIST).
        return self._store.hub.watch_names(self.user, callback)

    def _list_changed(self, kind: ListChange, name: str, old: str | None = None) -> None:
        self._store.hub.publish_name(self.user, MailboxEvent(kind, name, old))

    async def release(self) -> None:
        return None  # nothing is held per user: the pool and the threads are the store's

    # --- mailboxes
    async def list_mailboxes(self) -> list[MailboxInfo]:
        return await self._run(self._index.list_mailboxes, self.user)

    async def subscriptions(self) -> set[str]:
        return await self._run(self._index.subscriptions, self.user)

    async def create(self, name: str, special_use: str | None = None) -> None:
        await self._run(self._index.create, self.user, name, special_use)
        self._list_changed(ListChange.CREATED, name)

    async def delete(self, name: str) -> None:
        files = await self._run(self._index.delete, self.user, name)
        self._changed(name)
        self._list_changed(ListChange.DELETED, name)
        await self._store.unlink(files)

    async def rename(self, old: str, new: str) -> None:
        await self._run(self._index.rename, self.user, old, new)
        self._changed(old)
        self._list_changed(ListChange.RENAMED, new, old)

    async def subscribe(self, name: str, on: bool) -> None:
        await self._run(self._index.subscribe, self.user, name, on)
        self._list_changed(ListChange.SUBSCRIBED if on else ListChange.UNSUBSCRIBED, name)

    async def status(self, name: str) -> StatusInfo:
        return await self._run(self._index.status, self.user, name)

    # --- selected mailbox
    async def select(self, name: str, readonly: bool) -> SelectInfo:
        return await self._run(self._index.select, self.user, name, readonly)

    async def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet:
        return await self._run(
            self._index.changes, self.user, name, known_max, known_count, since_modseq,
            with_expunges, claim_recent,
        )  # fmt: skip

    async def vanished(self, name: str, since_modseq: int, ranges: Ranges) -> Ranges:
        return await self._run(self._index.vanished, self.user, name, since_modseq, ranges)

    async def fetch(
        self,
        name: str,
        ranges: Ranges,
        data: bool,
        limit: int,
        changed_since: int = 0,
        parts: Parts = ALL_PARTS,
    ) -> list[FetchRow]:
        # ``parts`` is a hint the API lets a store ignore: every part comes with ``data``.
        return await self._run(
            self._index.fetch, self.user, name, ranges, data, limit, changed_since
        )

    async def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]:
        return await self._run(self._index.search_uids, self.user, name, where)

    async def fetch_flags(
        self, name: str, ranges: Ranges, limit: int, modseqs: bool = True
    ) -> FlagBatch:
        return await self._run(self._index.fetch_flags, self.user, name, ranges, limit, modseqs)

    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: SearchFilter, limit: int
    ) -> list[SearchRow]:
        return await self._run(
            self._index.search_rows, self.user, name, lo, hi, header, where, limit
        )

    async def read_message(self, name: str, uid: int) -> bytes | None:
        path = await self._run(self._index.message_path, self.user, name, uid)
        if path is None:
            return None
        return await self._store.bodies.read(path, self._store.run)

    async def full_text_pending(self, name: str, max_uid: int) -> int | None:
        await self.status(name)  # NONEXISTENT as the other stores say it
        return 0  # every row carries its texts from the start (pgmail.query)

    async def full_text_catch_up(self, name: str) -> None:
        return None

    async def store(
        self,
        name: str,
        ranges: Ranges,
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult:
        result = await self._run(
            self._index.store, self.user, name, ranges, mode, flags, unchanged_since
        )
        self._changed(name)
        if self._store.learner is not None and mode != "remove":
            named = {f.lower() for f in flags}
            uids = [update.uid for update in result.updated]
            if "$junk" in named:
                self._learn_later(name, uids, spam=True)
            elif "$notjunk" in named:
                self._learn_later(name, uids, spam=False)
        return result

    async def expunge(self, name: str, ranges: Ranges | None) -> list[int]:
        uids, files = await self._run(self._index.expunge, self.user, name, ranges)
        if uids:
            self._changed(name)
            await self._store.unlink(files)
        return uids

    async def append(
        self, name: str, data: bytes, flags: tuple[str, ...], internal_date: float | None
    ) -> Appended:
        limit = self._store.quota_limit(self.user)
        uidvalidity, uids = await self._store.add_file(
            self.user, name, data, flags=flags, when=internal_date, limit=limit
        )
        self._changed(name)
        return Appended(uidvalidity, uids[0])

    async def copy(self, src: str, ranges: Ranges, dst: str, move: bool) -> Copied:
        limit = self._store.quota_limit(self.user)
        result = await self._run(
            self._index.copy, self.user, src, ranges, dst, move=move, limit=limit
        )
        self._changed(dst, *([src] if move else []))
        if self._store.learner is not None and result.dst_uids:
            self._store.spawn(self._learn_copy(src, dst, result.dst_uids))
        return result

    async def quota(self) -> Quota:
        return Quota(await self._store.usage(self.user), self._store.quota_limit(self.user))

    # --- learning hook (see the module docstring)
    async def _learn_copy(self, src: str, dst: str, uids: list[int]) -> None:
        src_use, dst_use = await self._run(self._index.special_uses, self.user, src, dst)
        if dst_use == JUNK_USE and src_use != JUNK_USE:
            await self._learn(dst, uids, spam=True)
        elif src_use == JUNK_USE and dst_use not in (JUNK_USE, TRASH_USE):
            await self._learn(dst, uids, spam=False)

    def _learn_later(self, mailbox: str, uids: list[int], *, spam: bool) -> None:
        if uids:
            self._store.spawn(self._learn(mailbox, uids, spam=spam))

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


def _parse_file(
    path: Path, mail_dir: Path, flags: tuple[str, ...], when: float | None
) -> NewMessage:
    """The index row of a written file (read back: a delivery's parts may be spooled
    files, and the file is what every later read sees)."""
    return parse_new(path.read_bytes(), flags, when, str(path.relative_to(mail_dir)))


class PgMailStore:
    """Every user's mail: files under ``mail_dir``, index in the database at ``dsn``."""

    def __init__(
        self,
        dsn: str,
        mail_dir: Path,
        *,
        pool_size: int = 4,
        hostname: str | None = None,
        node: str = "",
        blobs: BlobStore | None = None,
        orphan_age: float = 86400.0,
        sweeping: bool = True,
    ):
        self.dsn = dsn
        self.mail_dir = mail_dir
        self.hostname = hostname
        self.pool_size = pool_size
        # Unique per process: a node restarted under the same name must still hear the
        # notifications it did not send.
        self.node = f"{node or 'node'}:{uuid.uuid4().hex[:12]}"
        self.hub = ChangesHub()
        self.executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="pgmail")
        self.learner: Learner | None = None
        self.closing = False
        self._quota_of: Callable[[str], int] = lambda user: 0
        self._pool: pg.Pool | None = None
        self._index: MailIndex | None = None
        self._listener: pg.Listener | None = None
        self._writer: MaildirWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Bodies: files (Maildir) or, with ``blobs``, objects (pgmail.bodies).
        self.blobs = blobs
        self.orphan_age = orphan_age
        self._sweeping = sweeping  # off for the CLI, which sweeps when told to
        self.bodies = Bodies(mail_dir, blobs, self._named)
        self._sweeper: asyncio.Task[None] | None = None
        # Group commit of deliveries (_index_delivered): what waits, per (user, folder),
        # with the monotonic time past which its row must not commit any more (a body in
        # a blob store: half the orphan age after its put), and the task indexing each
        # folder's batches.
        self._delivered: dict[tuple[str, str], list[Pending]] = {}
        self._indexers: dict[tuple[str, str], asyncio.Task[None]] = {}

    @property
    def index(self) -> MailIndex:
        if self._index is None:
            raise RuntimeError("the PostgreSQL mail store is not started")
        return self._index

    async def start(self) -> None:
        """Open the pool, migrate the schema, LISTEN for the other nodes' changes."""
        loop = asyncio.get_running_loop()
        self.hub.bind_loop(loop)
        self._pool = await loop.run_in_executor(
            self.executor,
            lambda: pg.open_pool(
                self.dsn, name=schema.COMPONENT, size=self.pool_size, autocommit=True
            ),
        )
        await loop.run_in_executor(self.executor, self._migrate, self._pool)
        self._index = MailIndex(self._pool, self.mail_dir, self.node)
        self._listener = pg.Listener(self.dsn, schema.CHANNEL, self._heard)
        await loop.run_in_executor(self.executor, self._listener.listening.wait, 10.0)
        self._writer = MaildirWriter(self.hostname)
        await self.bodies.open()
        if self.blobs is not None and self._sweeping:
            self._sweeper = loop.create_task(self._sweep_now_and_then())

    async def _named(self, paths: Sequence[str]) -> set[str]:
        return await self.run(self.index.named, paths)

    async def sweep(
        self, progress: Callable[[int, int], None] | None = None, *, dry_run: bool = False
    ) -> Swept:
        """Delete the blob store's orphans (``pgmail.bodies.sweep``)."""
        if self.blobs is None:
            return Swept()
        return await sweep(self.blobs, self._named, self.orphan_age, progress, dry_run=dry_run)

    async def _sweep_now_and_then(self) -> None:
        """Every half orphan age (at least a minute apart, at most six hours; a random
        part of it so that nodes started together do not sweep together)."""
        period = min(max(self.orphan_age / 2, 60.0), 6 * 3600.0)
        while True:
            await asyncio.sleep(period * random.uniform(0.5, 1.0))
            try:
                swept = await self.sweep()
            except Exception:
                _log.warning("sweeping the blob store failed", exc_info=True)
                continue
            if swept.deleted:
                _log.info("blob store swept", swept=str(swept))

    @staticmethod
    def _migrate(pool: pg.Pool) -> None:
        with pool.connection() as conn:
            pg.migrate(conn, schema.COMPONENT, schema.MIGRATIONS)

    def _heard(self, payload: str) -> None:
        """Another node's change (from the listener's thread): tell this node's sessions."""
        try:
            news = json.loads(payload)
        except ValueError:
            return
        if news.get("node") != self.node:
            self.hub.publish(str(news.get("user")), str(news.get("mailbox")))

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def open(self, user: str) -> PgUserMail:
        await self.ensure_user(user)
        return PgUserMail(self, user)

    # --- change notification
    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None:
        self.hub.notify_new_mail(user_address, mailbox)

    # --- what delivery, the quota check and spam use
    def set_learner(self, learner: Learner | None) -> None:
        self.learner = learner

    def set_quota_lookup(self, lookup: Callable[[str], int]) -> None:
        self._quota_of = lookup

    def quota_limit(self, user: str) -> int:
        return self._quota_of(user)

    async def usage(self, user: str) -> int:
        return await self.run(self.index.usage, user)

    async def mailbox_exists(self, user: str, folder: str) -> bool:
        """Whether ``user`` has a mailbox row named ``folder`` (made over IMAP or by a
        delivery: a folder with no mail yet has no directory, so the disk cannot say)."""
        try:
            validate(folder)
        except BadMailboxName:
            return False
        name = normalise(folder)
        await self.ensure_user(user)
        return any(box.name == name for box in await self.run(self.index.list_mailboxes, user))

    def _folder_path(self, user: str, folder: str) -> Path:
        """The Maildir directory whose ``new/`` delivery writes ``folder``'s files into
        (the SQLite store's layout)."""
        root = user_maildir(self.mail_dir, user)
        directory = folder_dir(folder)  # Maildir++ (Dovecot's layout, names escaped)
        return root / directory if directory else root

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
        """Store ``message`` in ``user``'s ``folder`` (made if missing) with ``flags``:
        the file durably, then its index row, committed; the handle names the file. OSError when
        either failed (the caller retries later), BadMailboxName for a bad folder."""
        if self.closing:
            raise OSError(errno.ESHUTDOWN, "the mail store is shut down")
        folder = normalise(folder)
        self._folder_path(user, folder)  # BadMailboxName before anything is written
        if sender is not None:
            prefix = delivery_headers(sender, user) + prefix
        await self.ensure_user(user)
        if self.blobs is not None:
            return await self._deliver_blob(user, folder, message, prefix, tuple(flags))
        stored = await self._write(user, folder, message, prefix)
        try:
            new = await self.run(_parse_file, stored, self.mail_dir, tuple(flags), None)
            await self._index_delivered(user, folder, new)
        except BaseException as exc:
            await self.unlink([str(stored.relative_to(self.mail_dir))])
            if isinstance(exc, psycopg.Error):
                raise OSError(errno.EIO, f"indexing in PostgreSQL failed: {exc}") from exc
            raise
        self.hub.publish(user, folder)
        return Delivered(folder, split_filename(stored.name)[0])

    async def _deliver_blob(
        self, user: str, folder: str, message: Sequence[Part], prefix: bytes, flags: tuple[str, ...]
    ) -> Delivered:
        """Put the body in the blob store, then commit its row (``pgmail.bodies`` on the
        order). A row refused for certain (the mailbox cannot be made) takes its body
        back; any other failure leaves the body to the sweeper, since a lost connection
        at COMMIT may still have committed the row, and a row must never lose its body."""
        data = await self.run(_joined, message, prefix)
        # Counted from before the PUT: the object's age (S3's LastModified) starts then.
        deadline = time.monotonic() + self.orphan_age / 2
        path = await self.bodies.put(user, data)
        try:
            new = await self.run(parse_new, data, flags, None, path)
            await self._index_delivered(user, folder, new, deadline)
        except MailboxError:
            await self.unlink([path])
            raise
        except psycopg.Error as exc:
            raise OSError(errno.EIO, f"indexing in PostgreSQL failed: {exc}") from exc
        self.hub.publish(user, folder)
        return Delivered(folder, path)

    async def ensure_user(self, user: str) -> None:
        if not self.index.knows(user):  # once per user and process: no thread hop after
            await self.run(self.index.ensure_user, user)

    async def _write(self, user: str, folder: str, message: Sequence[Part], prefix: bytes) -> Path:
        if self._writer is None:
            raise OSError(errno.ESHUTDOWN, "the mail store is not started")
        return await self._writer.write(self._folder_path(user, folder), message, prefix=prefix)

    async def _index_delivered(
        self, user: str, folder: str, new: NewMessage, deadline: float = math.inf
    ) -> None:
        """Index a delivered file; returns once its row is committed.

        Group commit: the deliveries to one folder that arrive while its previous batch is
        in the database go in together, in the next transaction (one mailbox lock, one
        UID allocation, one commit for all), so concurrent deliveries to one user do not
        queue up on the mailbox row one round trip after another."""
        key = (user, folder)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._delivered.setdefault(key, []).append(Pending(new, done, deadline))
        if key not in self._indexers:
            # A task of its own: a delivery whose caller gives up (an SMTP client gone) must
            # not leave the others' futures unanswered.
            self._indexers[key] = asyncio.get_running_loop().create_task(self._drain(key))
        await done

    async def _drain(self, key: tuple[str, str]) -> None:
        user, folder = key
        try:
            while batch := self._delivered.pop(key, None):
                batch = self._in_time(batch)
                failure: BaseException | None = None
                try:
                    if batch:
                        await self.run(self._index_batch, user, folder, [p.new for p in batch])
                except Exception as exc:
                    failure = exc
                for _, done, _ in batch:
                    if done.done():
                        continue
                    if failure is None:
                        done.set_result(None)
                    else:
                        done.set_exception(failure)
        finally:
            del self._indexers[key]

    @staticmethod
    def _in_time(batch: list[Pending]) -> list[Pending]:
        """The deliveries still in time to commit; the others fail (see the deadline)."""
        now = time.monotonic()
        for late in (p for p in batch if p.deadline < now and not p.done.done()):
            late.done.set_exception(
                OSError(errno.ETIMEDOUT, "the body was stored too long ago to index it now")
            )
        return [p for p in batch if p.deadline >= now]

    def _index_batch(self, user: str, folder: str, batch: list[NewMessage]) -> None:
        try:
            self.index.add(user, folder, batch, limit=0, missing=TRYCREATE)
        except MailboxError as exc:
            if exc.code != TRYCREATE:
                raise
            self.index.create_for_delivery(user, folder)  # as the Maildir writer makes it
            self.index.add(user, folder, batch, limit=0, missing=TRYCREATE)

    async def add_file(
        self,
        user: str,
        folder: str,
        data: bytes,
        *,
        flags: tuple[str, ...],
        when: float | None,
        limit: int,
    ) -> tuple[int, list[int]]:
        """APPEND: write the message file durably into ``folder``'s Maildir, then index it
        (TRYCREATE when the mailbox is missing, OVERQUOTA past ``limit``); (UIDVALIDITY,
        [UID]). A file the index refused is removed again."""
        if self.blobs is not None:
            return await self._add_blob(user, folder, data, flags=flags, when=when, limit=limit)
        stored = await self._write(user, folder, [data], b"")

        def index() -> tuple[int, list[int]]:
            new = _parse_file(stored, self.mail_dir, flags, when)
            return self.index.add(user, folder, [new], limit=limit, missing=TRYCREATE)

        try:
            return await self.run(index)
        except BaseException:
            await self.unlink([str(stored.relative_to(self.mail_dir))])
            raise

    async def _add_blob(
        self,
        user: str,
        folder: str,
        data: bytes,
        *,
        flags: tuple[str, ...],
        when: float | None,
        limit: int,
    ) -> tuple[int, list[int]]:
        """APPEND with the body in the blob store: the order and the failures are
        ``_deliver_blob``'s (a refusal, OVERQUOTA or TRYCREATE, takes the body back)."""
        data = await self.run(to_crlf, data)
        deadline = time.monotonic() + self.orphan_age / 2  # from before the PUT, as above
        path = await self.bodies.put(user, data)

        def index() -> tuple[int, list[int]]:
            new = parse_new(data, flags, when, path)
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "the body was stored too long ago to index it")
            return self.index.add(user, folder, [new], limit=limit, missing=TRYCREATE)

        try:
            return await self.run(index)
        except MailboxError:
            await self.unlink([path])
            raise

    async def unlink(self, paths: list[str]) -> None:
        """Remove the bodies of rows that are gone (committed); a missing one is no error."""
        if paths:
            await self.bodies.remove(paths)

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

    async def close(self) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await loop.run_in_executor(self.executor, self._writer.close)
        if self._listener is not None:
            await loop.run_in_executor(self.executor, self._listener.stop)
        if self._pool is not None:
            await loop.run_in_executor(self.executor, self._pool.close)
        await self.bodies.close()
        self.executor.shutdown(wait=False)


class Pending(NamedTuple):
    """A delivery waiting for its row's group commit."""

    new: NewMessage
    done: asyncio.Future[None]
    deadline: float  # monotonic; math.inf for a Maildir file


def _joined(message: Sequence[Part], prefix: bytes) -> bytes:
    """The whole message as CRLF bytes (its spooled parts read), as a body to put."""
    pieces = [prefix]
    for part in message:
        pieces.append(part if isinstance(part, bytes) else Path(part).read_bytes())
    return to_crlf(b"".join(pieces))


# --- the app component ------------------------------------------------------------------------


class PgContext(StoreContext, Protocol):
    @property
    def settings(self) -> Settings: ...


def make_pg_store(
    ctx: PgContext, dsn: str = "", blobs: BlobStore | None = None
) -> MailStoreComponent[PgMailStore]:
    """The store over ``[store] dsn``; ``dsn`` replaces it and ``blobs`` the blob store
    ``[store] blobs`` names (the test harness runs the IMAP and POP3 suites on a database
    and a bucket while the rest of the node stays on SQLite)."""
    settings = ctx.settings
    store = PgMailStore(
        dsn or settings.store.dsn,
        settings.mail_dir,
        pool_size=settings.store.pool_size,
        hostname=settings.hostname,
        node=pg.node_name(settings),
        blobs=blobs or open_blobs(settings.store, settings.data_dir),
        orphan_age=settings.store.s3_orphan_age,
    )
    return MailStoreComponent(ctx, store)


if TYPE_CHECKING:

    def _conforms(store: PgMailStore, mail: PgUserMail) -> tuple[api.MailService, api.UserMail]:
        """Never called: here mypy checks that this store implements the neutral API."""
        return store, mail

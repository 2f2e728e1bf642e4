"""Maildir primitives: the data-dir layout of mailboxes, unique names, and the one durable
Maildir writer (used by SMTP delivery, the queue's reports and IMAP APPEND alike).

A user's Maildir++ root is ``MAIL_DIR/DOMAIN/LOCALPART``: INBOX is the root itself
(``cur/ new/ tmp/``), other folders are ``.Name`` beside it (Dovecot's layout, so Dovecot,
mutt and backup tools read it as is).

Writing follows the Maildir protocol (https://cr.yp.to/proto/maildir.html): write the file
somewhere invisible, fsync it, make it appear in ``new/`` (or ``cur/``) under a unique name,
fsync that directory, and only then report success. A crash at any point leaves at worst an
unnamed inode or a stray file in ``tmp/``, never a truncated message in ``new/``.

* :func:`write_file` writes one file: created with ``O_TMPFILE`` in ``tmp/`` (an inode with
  no name, so a crash or a failed write leaves nothing behind), fsync'd, and given its final
  name with ``linkat`` through ``/proc/self/fd`` (atomic: readers see a complete file or
  none). Where ``O_TMPFILE`` is not supported it falls back to a named file in ``tmp/`` +
  link + unlink, the classic way. It does not fsync the directory.
* :func:`deliver` is that plus the directory fsync, for callers already in a worker thread
  (APPEND in the store's worker).
* :class:`MaildirWriter` is the async writer for delivery: worker threads write and fsync
  files in parallel (fsync latency, not CPU, is the limit), and the directory fsyncs are
  group-committed (:class:`DirectorySync`): every write waits for an fsync of ``new/`` that
  started after its link, but concurrent writes into one directory share those fsyncs. Under
  light load nothing waits for anyone; under heavy load N deliveries cost N file fsyncs and
  about two directory fsyncs, and a thread that wakes takes every write queued meanwhile
  (one wake-up of a thread and of the event loop per batch). A write completes (its future
  resolves) only after its directory fsync: that is the moment SMTP may say 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pillarbox.store.flags import ensure_keywords, is_keyword, make_info, read_keywords, split_flags

MAILDIR_SUBDIRS = ("cur", "new", "tmp")
_counter = itertools.count(1)
_COPY_CHUNK = 1 << 20
# fsync waits, not CPU, bound a delivery: enough threads to keep the disk queue busy for the
# concurrent sessions; a thread blocked in fsync does not hold the GIL.
WRITER_THREADS = 16
MAX_BATCH = 32  # the most writes one thread takes at once (see MaildirWriter._take_batch)
MAX_SYNCERS = 4096
# Cleared the first time the file system refuses O_TMPFILE: from then on, named tmp files.
_tmpfile_supported = hasattr(os, "O_TMPFILE")

Part = bytes | Path  # a message is a sequence of byte strings and spooled files, in order


def user_maildir(mail_dir: Path, address: str) -> Path:
    """The Maildir++ root of ``local@domain`` (already normalised by the accounts store)."""
    local, _, domain = address.rpartition("@")
    if not local or not domain or "/" in address or local.startswith(".") or "\0" in address:
        raise ValueError(f"not a storable address: {address!r}")
    return mail_dir / domain / local


def ensure_maildir(path: Path) -> None:
    """Create ``cur/new/tmp`` under ``path`` (mode 0700) if missing."""
    for sub in MAILDIR_SUBDIRS:
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def unique_name(size: int | None = None, hostname: str | None = None) -> str:
    """A Maildir base name, Dovecot style: ``SECS.MUSECsPpidQn.host,S=size``.

    The ``S=`` field lets readers (and our index) learn the size without a stat.
    """
    now = time.time()
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    name = f"{secs}.M{usecs:06d}P{os.getpid()}Q{next(_counter)}.{host}"
    return f"{name},S={size}" if size is not None else name


def size_in_name(name: str) -> int | None:
    """The ``S=`` size a file name carries (every file written here has one)."""
    match = _SIZE_IN_NAME.search(name)
    return int(match.group(1)) if match else None


_SIZE_IN_NAME = re.compile(r",S=(\d+)")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flags_info(folder: Path, flags: Sequence[str]) -> str:
    """The ``:2,`` info letters for ``flags`` in ``folder`` (blocking: keywords get their
    letter from the folder's dovecot-keywords file, which is created or extended here)."""
    mask, keywords = split_flags(list(flags))
    # A script may name anything; only IMAP atoms can be keywords (the rest is dropped).
    keywords = [k for k in keywords if is_keyword(k)]
    names: list[str] = []
    if keywords:
        ensure_maildir(folder)
        # Two deliveries adding different keywords at once must not both take letter "a".
        with _KEYWORDS_LOCK:
            names = read_keywords(folder)
            ensure_keywords(folder, names, keywords)  # a keyword past the 26th is dropped
    return make_info("", mask, keywords, names)


_KEYWORDS_LOCK = threading.Lock()


# -- writing one file --------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_file(dst: int, src: Path) -> int:
    """Append ``src`` to ``dst`` with in-kernel copies; returns the bytes copied."""
    total = 0
    with open(src, "rb") as f:
        while True:
            try:
                n = os.copy_file_range(f.fileno(), dst, _COPY_CHUNK)
            except OSError:  # e.g. across file systems on old kernels: plain copy
                n = 0
                for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
                    _write_all(dst, chunk)
                    n += len(chunk)
                return total + n
            if n == 0:
                return total
            total += n


def _write_parts(fd: int, prefix: bytes, parts: Iterable[Part]) -> int:
    """Write prefix and parts with as few write calls as possible; returns the size."""
    pending = [prefix]
    size = len(prefix)
    for part in parts:
        if isinstance(part, bytes):
            pending.append(part)
            size += len(part)
            continue
        _write_all(fd, b"".join(pending))
        pending = []
        size += _copy_file(fd, part)
    if pending:
        _write_all(fd, b"".join(pending))
    return size


def _suffix(subdir: str, info: str) -> str:
    """The ``:2,INFO`` part of the name: a file in ``cur/`` always has one; one in ``new/``
    only when it carries flags already (a Sieve script's), which the index keeps when it
    moves the file to ``cur/``."""
    return f":2,{info}" if info or subdir == "cur" else ""


def write_file(
    folder: Path,
    parts: Iterable[Part],
    *,
    prefix: bytes = b"",
    subdir: str = "new",
    info: str = "",
    hostname: str | None = None,
) -> Path:
    """Write ``prefix`` and ``parts`` into one fsync'd file in ``folder/subdir`` (blocking);
    the directory is not fsync'd (see the module docstring). Returns the final path."""
    global _tmpfile_supported
    if _tmpfile_supported:
        try:
            fd = os.open(folder / "tmp", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            _tmpfile_supported = False
        else:
            return _write_unnamed(fd, folder, prefix, parts, subdir, info, hostname)
    return _write_named(folder, prefix, parts, subdir, info, hostname)


def _write_unnamed(
    fd: int,
    folder: Path,
    prefix: bytes,
    parts: Iterable[Part],
    subdir: str,
    info: str,
    hostname: str | None,
) -> Path:
    try:
        size = _write_parts(fd, prefix, parts)
        os.fsync(fd)
        name = unique_name(size, hostname) + _suffix(subdir, info)
        # linkat(AT_SYMLINK_FOLLOW) on the /proc link names the anonymous inode; a real
        # directory fd makes Python call linkat rather than link.
        target = os.open(folder / subdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(
                f"/proc/self/fd/{fd}", name, src_dir_fd=target, dst_dir_fd=target,
                follow_symlinks=True,
            )  # fmt: skip
        finally:
            os.close(target)
    finally:
        os.close(fd)
    return folder / subdir / name


def _write_named(
    folder: Path,
    prefix: bytes,
    parts: Iterable[Part],
    subdir: str,
    info: str,
    hostname: str | None,
) -> Path:
    tmp = folder / "tmp" / unique_name(None, hostname)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            size = _write_parts(fd, prefix, parts)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = folder / subdir / f"{tmp.name},S={size}{_suffix(subdir, info)}"
        os.link(tmp, final)  # link, never rename: never overwrites (Maildir rule)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def deliver(
    maildir: Path,
    parts: Iterable[Part],
    *,
    subdir: str = "new",
    info: str = "",
    hostname: str | None = None,
) -> Path:
    """Durably store one message made of ``parts`` in ``maildir/subdir``: the file and its
    directory entry are on disk when this returns. Blocking: call it from a worker thread.
    ``info`` is the flags part of the name, without ``:2,`` (e.g. ``"FS"``)."""
    ensure_maildir(maildir)
    path = write_file(maildir, parts, subdir=subdir, info=info, hostname=hostname)
    fsync_dir(path.parent)
    return path


# -- the async writer with group commit ---------------------------------------------------------


class DirectorySync:
    """Group commit of one directory's fsync.

    A thread that has linked a file into the directory calls :meth:`sync`, which returns
    once an fsync that *started after* its link has completed. If an fsync is running when
    it arrives, it waits for it to end and then one thread runs the next fsync on behalf of
    everyone who arrived meanwhile: N concurrent deliveries cost about two directory fsyncs,
    not N.
    """

    def __init__(self, path: Path):
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out (one per link)
        self._synced = 0  # every ticket up to this one is durable
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while True:
                if self._synced >= ticket:
                    return
                if not self._running:
                    break
                self._cond.wait()
            self._running = True
            covers = self._requested
        error: OSError | None = None
        try:
            fsync_dir(self.path)
        except OSError as exc:
            error = exc
        with self._cond:
            self._running = False
            if error is None:
                self._synced = max(self._synced, covers)
            self._cond.notify_all()
        if error is not None:
            raise error


@dataclass
class WriteJob:
    """Write ``parts`` (after ``prefix``) into ``folder/new``, named with ``info``."""

    folder: Path
    prefix: bytes  # Return-Path/Delivered-To differ per user
    parts: Sequence[Part]
    info: str  # Maildir info ("S", "FS", "Sa", ...): the flags a Sieve script set
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Path]
    path: Path | None = None
    error: BaseException | None = None


class MaildirWriter:
    """Durable writes into ``new/`` from the event loop; see the module docstring."""

    def __init__(self, hostname: str | None = None, threads: int = WRITER_THREADS):
        self.hostname = hostname
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._ready: set[Path] = set()  # folders known to have cur/new/tmp
        self._syncers: dict[Path, DirectorySync] = {}
        self._syncers_lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"maildir-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(10)

    async def write(
        self, folder: Path, parts: Sequence[Part], *, prefix: bytes = b"", info: str = ""
    ) -> Path:
        """Durably store one file in ``folder/new``; returns its path."""
        if self._closed:
            # Shutting down (e.g. the queue delivering a DSN after we stopped): a clean
            # failure the caller retries later, never a future that nobody completes.
            raise OSError(errno.ESHUTDOWN, "local delivery is shut down")
        loop = asyncio.get_running_loop()
        job = WriteJob(folder, prefix, parts, info, loop, loop.create_future())
        self._jobs.put(job)
        return await job.future

    # -- worker threads ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = self._take_batch(job)
            self._process(batch)
            if batch[-1] is None:
                return

    def _take_batch(self, first: WriteJob) -> list[WriteJob | None]:
        """``first`` and the jobs queued behind it, up to ``MAX_BATCH`` (a trailing None:
        the writer is closing). One thread awake takes what piled up while it slept: under
        load the deliveries of a burst cost one thread's wake-up, one pass of
        directory fsyncs and one wake-up of the event loop, not one of each per message
        (futex waits and context switches between 16 busy threads were 15-25% of the
        delivering process's CPU in ``perf``). A file's own write and fsync take ~0.25 ms here,
        so a batch of ``MAX_BATCH`` waits a few milliseconds more at most, and the other
        threads take the next burst meanwhile."""
        batch: list[WriteJob | None] = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            batch.append(job)
            if job is None:
                break
        return batch

    def _process(self, batch: list[WriteJob | None]) -> None:
        jobs = [job for job in batch if job is not None]
        # Each file is written and fsync'd (this thread's, and other threads' in parallel);
        # then each directory they were linked into is fsync'd once for all of them (the
        # syncs are shared with the other threads too, see DirectorySync).
        for job in jobs:
            try:
                job.path = self._write_one(job)
            except BaseException as exc:
                job.error = exc
        for directory in {job.path.parent for job in jobs if job.path is not None}:
            try:
                self._syncer(directory).sync()
            except BaseException as exc:
                for job in jobs:
                    if job.path is not None and job.path.parent == directory:
                        job.error = exc  # on disk, maybe not durably named: not a success
        for loop in {job.loop for job in jobs}:
            mine = [job for job in jobs if job.loop is loop]
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_complete, mine)

    def _syncer(self, directory: Path) -> DirectorySync:
        syncer = self._syncers.get(directory)
        if syncer is None:
            with self._syncers_lock:
                syncer = self._syncers.setdefault(directory, DirectorySync(directory))
                if len(self._syncers) > MAX_SYNCERS:  # many users: forget idle ones
                    for key in list(self._syncers)[: MAX_SYNCERS // 2]:
                        if key != directory:
                            del self._syncers[key]
        return syncer

    def _write_one(self, job: WriteJob) -> Path:
        folder = job.folder
        if folder not in self._ready:
            ensure_maildir(folder)
            self._ready.add(folder)
        try:
            return self._write(job)
        except FileNotFoundError:
            # The Maildir was removed since we last saw it (user deleted and re-created).
            self._ready.discard(folder)
            ensure_maildir(folder)
            self._ready.add(folder)
            return self._write(job)

    def _write(self, job: WriteJob) -> Path:
        return write_file(
            job.folder, job.parts, prefix=job.prefix, info=job.info, hostname=self.hostname
        )


def _complete(jobs: list[WriteJob]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            assert job.path is not None
            job.future.set_result(job.path)

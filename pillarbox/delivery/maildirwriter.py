"""Durable Maildir writes with group commit, off the event loop.

The Maildir protocol (https://cr.yp.to/proto/maildir.html) asks for: write the file
somewhere invisible, fsync it, make it appear in ``new/`` under a unique name, fsync the
directory, and only then report success. Done one message at a time that is two fsyncs per
message, and on this kind of disk an fsync of a directory costs as much as one of a file.

``MaildirWriter`` keeps the guarantees and halves the cost under load:

* Files are created with ``O_TMPFILE`` in ``tmp/`` (an inode with no name, so a crash or a
  failed write leaves nothing behind, and there is no tmp name to unlink), fsync'd, and
  given their final name in ``new/`` with ``linkat`` through ``/proc/self/fd`` (atomic:
  readers see a complete file or none). Where ``O_TMPFILE`` is not supported it falls back
  to a named file in ``tmp/`` + link + unlink, the classic way.
* Worker threads write and fsync files in parallel (fsync latency, not CPU, is the limit),
  and the directory fsyncs are group-committed (:class:`DirectorySync`): every delivery
  waits for an fsync of ``new/`` that started after its link, but concurrent deliveries into
  one directory share those fsyncs. Under light load nothing waits for anyone; under heavy
  load N deliveries cost N file fsyncs and about two directory fsyncs.

Jobs complete (their futures resolve) only after their directory fsync: that is the moment
SMTP may say 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox.store.maildir import ensure_maildir, unique_name

_COPY_CHUNK = 1 << 20
# fsync waits, not CPU, bound a delivery: enough threads to keep the disk queue busy for the
# concurrent sessions; a thread blocked in fsync does not hold the GIL.
WRITER_THREADS = 16
MAX_SYNCERS = 4096


@dataclass
class WriteJob:
    """Write ``parts`` (after a per-file ``prefix``) into each of ``folders``."""

    folders: Sequence[Path]
    prefixes: Sequence[bytes]  # one per folder (Return-Path/Delivered-To differ per user)
    parts: Sequence[bytes | Path]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Path]]
    paths: list[Path] = field(default_factory=list)
    error: BaseException | None = None
    # Maildir info per folder ("S", "FS", "Sa", ...): the flags a Sieve script set. The file
    # still goes to new/ (IMAP \Recent), named ``base:2,info``; the index keeps the info
    # when it moves the file to cur/.
    infos: Sequence[str] = ()


def _copy_file(dst: int, src: Path) -> int:
    total = 0
    with open(src, "rb") as f:
        while True:
            try:
                n = os.copy_file_range(f.fileno(), dst, _COPY_CHUNK)
            except OSError:
                n = 0
                for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
                    _write_all(dst, chunk)
                    n += len(chunk)
                return total + n
            if n == 0:
                return total
            total += n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_parts(fd: int, prefix: bytes, parts: Sequence[bytes | Path]) -> int:
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
        self._error: OSError | None = None

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
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            error = exc
        with self._cond:
            self._running = False
            if error is None:
                self._synced = max(self._synced, covers)
            self._cond.notify_all()
        if error is not None:
            raise error


class MaildirWriter:
    """See the module docstring."""

    def __init__(self, hostname: str | None = None, threads: int = WRITER_THREADS):
        self.hostname = hostname
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._ready: set[Path] = set()  # folders known to have cur/new/tmp
        self._syncers: dict[Path, DirectorySync] = {}
        self._syncers_lock = threading.Lock()
        self._tmpfile = hasattr(os, "O_TMPFILE")
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
        self,
        folders: Sequence[Path],
        prefixes: Sequence[bytes],
        parts: Sequence[bytes | Path],
        infos: Sequence[str] = (),
    ) -> list[Path]:
        """Durably store one file per folder; returns their paths in ``new/``."""
        if self._closed:
            # Shutting down (e.g. the queue delivering a DSN after we stopped): a clean
            # failure the caller retries later, never a future that nobody completes.
            raise OSError(errno.ESHUTDOWN, "local delivery is shut down")
        loop = asyncio.get_running_loop()
        job = WriteJob(folders, prefixes, parts, loop, loop.create_future(), infos=infos)
        self._jobs.put(job)
        return await job.future

    # -- worker threads ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._process(job)

    def _process(self, job: WriteJob) -> None:
        try:
            # Files are written and fsync'd by several threads at once (fsync latency, not
            # CPU, is the limit); only the directory fsyncs are shared.
            infos = job.infos or [""] * len(job.folders)
            for folder, prefix, info in zip(job.folders, job.prefixes, infos, strict=True):
                job.paths.append(self._write_one(folder, prefix, job.parts, info))
            for directory in dict.fromkeys(p.parent for p in job.paths):
                self._syncer(directory).sync()
        except BaseException as exc:
            job.error = exc
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
            job.loop.call_soon_threadsafe(_complete, job)

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

    def _write_one(
        self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path], info: str = ""
    ) -> Path:
        if folder not in self._ready:
            ensure_maildir(folder)
            self._ready.add(folder)
        try:
            return self._store(folder, prefix, parts, info)
        except FileNotFoundError:
            # The Maildir was removed since we last saw it (user deleted and re-created).
            self._ready.discard(folder)
            ensure_maildir(folder)
            self._ready.add(folder)
            return self._store(folder, prefix, parts, info)

    def _store(self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path], info: str) -> Path:
        if self._tmpfile:
            try:
                fd = os.open(folder / "tmp", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False
            else:
                return self._store_unnamed(fd, folder, prefix, parts, info)
        return self._store_named(folder, prefix, parts, info)

    def _store_unnamed(
        self, fd: int, folder: Path, prefix: bytes, parts: Sequence[bytes | Path], info: str
    ) -> Path:
        try:
            size = _write_parts(fd, prefix, parts)
            os.fsync(fd)
            name = unique_name(size, self.hostname) + (f":2,{info}" if info else "")
            # linkat(AT_SYMLINK_FOLLOW) on the /proc link names the anonymous inode; a real
            # directory fd makes Python call linkat rather than link.
            new_dir = os.open(folder / "new", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(
                    f"/proc/self/fd/{fd}", name, src_dir_fd=new_dir, dst_dir_fd=new_dir,
                    follow_symlinks=True,
                )  # fmt: skip
            finally:
                os.close(new_dir)
        finally:
            os.close(fd)
        return folder / "new" / name

    def _store_named(
        self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path], info: str
    ) -> Path:
        tmp = folder / "tmp" / unique_name(None, self.hostname)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                size = _write_parts(fd, prefix, parts)
                os.fsync(fd)
            finally:
                os.close(fd)
            final = folder / "new" / f"{tmp.name},S={size}{f':2,{info}' if info else ''}"
            os.link(tmp, final)  # link, never rename: never overwrites (Maildir rule)
        finally:
            tmp.unlink(missing_ok=True)
        return final


def _complete(job: WriteJob) -> None:
    if job.future.done():
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.paths)

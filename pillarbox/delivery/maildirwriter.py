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
* A few worker threads take *batches*: every job queued while they were busy. Each file is
  fsync'd on its own, but each ``new/`` directory touched by the batch is fsync'd once, and
  all jobs of the batch are completed with one wake-up of the event loop. Under light load a
  batch is one message and nothing is delayed; under heavy load the directory fsyncs and
  thread hand-offs are shared.

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
WRITER_THREADS = 6


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


class MaildirWriter:
    """See the module docstring."""

    def __init__(self, hostname: str | None = None, threads: int = WRITER_THREADS):
        self.hostname = hostname
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._ready: set[Path] = set()  # folders known to have cur/new/tmp
        self._tmpfile = hasattr(os, "O_TMPFILE")
        self._threads = [
            threading.Thread(target=self._run, name=f"maildir-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(10)

    async def write(
        self, folders: Sequence[Path], prefixes: Sequence[bytes], parts: Sequence[bytes | Path]
    ) -> list[Path]:
        """Durably store one file per folder; returns their paths in ``new/``."""
        loop = asyncio.get_running_loop()
        job = WriteJob(folders, prefixes, parts, loop, loop.create_future())
        self._jobs.put(job)
        return await job.future

    # -- worker threads ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list[WriteJob]) -> None:
        directories: dict[Path, list[WriteJob]] = {}
        for job in batch:
            try:
                for folder, prefix in zip(job.folders, job.prefixes, strict=True):
                    path = self._write_one(folder, prefix, job.parts)
                    job.paths.append(path)
                    directories.setdefault(path.parent, []).append(job)
            except BaseException as exc:
                job.error = exc
        for directory, jobs in directories.items():
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                for job in jobs:
                    job.error = job.error or exc
        by_loop: dict[asyncio.AbstractEventLoop, list[WriteJob]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_complete, jobs)

    def _write_one(self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path]) -> Path:
        if folder not in self._ready:
            ensure_maildir(folder)
            self._ready.add(folder)
        try:
            return self._store(folder, prefix, parts)
        except FileNotFoundError:
            # The Maildir was removed since we last saw it (user deleted and re-created).
            self._ready.discard(folder)
            ensure_maildir(folder)
            self._ready.add(folder)
            return self._store(folder, prefix, parts)

    def _store(self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path]) -> Path:
        if self._tmpfile:
            try:
                fd = os.open(folder / "tmp", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile = False
            else:
                return self._store_unnamed(fd, folder, prefix, parts)
        return self._store_named(folder, prefix, parts)

    def _store_unnamed(
        self, fd: int, folder: Path, prefix: bytes, parts: Sequence[bytes | Path]
    ) -> Path:
        try:
            size = _write_parts(fd, prefix, parts)
            os.fsync(fd)
            name = unique_name(size, self.hostname)
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

    def _store_named(self, folder: Path, prefix: bytes, parts: Sequence[bytes | Path]) -> Path:
        tmp = folder / "tmp" / unique_name(None, self.hostname)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                size = _write_parts(fd, prefix, parts)
                os.fsync(fd)
            finally:
                os.close(fd)
            final = folder / "new" / f"{tmp.name},S={size}"
            os.link(tmp, final)  # link, never rename: never overwrites (Maildir rule)
        finally:
            tmp.unlink(missing_ok=True)
        return final


def _complete(jobs: list[WriteJob]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.paths)

"""A bounded on-disk LRU of bodies in front of a remote blob store (``[store] s3_cache``).

Why on disk: a mail client that opens a message reads its body several times in a short
while (BODYSTRUCTURE first, then the parts, then the whole for a download), and each read
that misses costs an S3 GET (money and tens of milliseconds); memory would bound the
cache far below what a local disk holds. Keys are immutable (``blobs.api``), so an
entry never goes stale: only a delete removes one early.

Entries are files named by the SHA-256 of the key under the cache directory, written to a
temporary name and renamed (a crash leaves a stray ``.tmp``, cleared at start, never a
torn entry); nothing is fsynced, since a lost entry is only a miss. Recency lives in
memory (an ordered dict) and in each file's mtime, touched on a hit, so that a restart
rebuilds the order from a directory scan. Bodies larger than an eighth of the limit pass
by uncached, so one big attachment cannot empty the cache.

Every disk operation runs in the cache's own thread pool; the bookkeeping is guarded by a
lock, as several of those threads touch it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from pillarbox.blobs.api import BlobInfo, BlobStore

T = TypeVar("T")
THREADS = 4


class CachedBlobs:
    """``inner`` with whole-body reads served from ``directory`` when they can be;
    at most ``limit`` bytes of bodies kept there."""

    def __init__(self, inner: BlobStore, directory: Path, limit: int):
        self.inner = inner
        self.directory = directory
        self.limit = limit
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, int] = OrderedDict()  # file name -> size, LRU first
        self._bytes = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="blobcache")
        self._loaded = False

    @property
    def location(self) -> str:
        return f"{self.inner.location} (cached in {self.directory})"

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        """Open the store behind, then rebuild the cache's index from its directory."""
        await self.inner.open()
        await self._run(self._load)

    def _load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".tmp"):
                    Path(entry.path).unlink(missing_ok=True)
                elif entry.is_file():
                    stat = entry.stat()
                    found.append((stat.st_mtime, entry.name, stat.st_size))
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            for _, name, size in sorted(found):
                self._entries[name] = size
                self._bytes += size
        self._evict()
        self._loaded = True

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    # --- BlobStore ------------------------------------------------------------------------
    async def put(self, key: str, data: bytes | BinaryIO) -> None:
        await self.inner.put(key, data)
        if isinstance(data, bytes):
            # The body was just written: a client that is told of it (IDLE) reads it next.
            await self._run(lambda: self._store(key, data))

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | None:
        data = await self._run(lambda: self._read(key))
        if data is None:
            self.misses += 1
            data = await self.inner.get(key)
            if data is None:
                return None
            await self._run(lambda: self._store(key, data))
        else:
            self.hits += 1
        return data[start:end] if start or end is not None else data

    async def exists(self, key: str) -> bool:
        with self._lock:
            if self._name(key) in self._entries:
                return True
        return await self.inner.exists(key)

    async def delete(self, keys: Sequence[str]) -> None:
        await self.inner.delete(keys)
        await self._run(lambda: self._forget(keys))

    def scan(self, prefix: str = "") -> AsyncIterator[list[BlobInfo]]:
        return self.inner.scan(prefix)

    async def close(self) -> None:
        await self.inner.close()
        self._executor.shutdown(wait=False)

    # --- the disk half (worker threads) ------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        name = self._name(key)
        with self._lock:
            if name not in self._entries:
                return None
            self._entries.move_to_end(name)
        path = self.directory / name
        try:
            data = path.read_bytes()
            os.utime(path)  # recency that survives a restart
        except FileNotFoundError:  # evicted by another thread in between
            return None
        return data

    def _store(self, key: str, data: bytes) -> None:
        if not self._loaded or self.limit <= 0 or len(data) > self.limit // 8:
            return
        name = self._name(key)
        with self._lock:
            if name in self._entries:
                return
        path = self.directory / name
        temporary = path.with_name(f"{name}.{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(data)
            temporary.replace(path)
        except OSError:  # a full or broken cache disk costs a GET, never a read
            temporary.unlink(missing_ok=True)
            return
        with self._lock:
            # Another thread may have stored the same key meanwhile (two reads that missed
            # at once): its file was replaced by the same bytes, counted once.
            if name not in self._entries:
                self._entries[name] = len(data)
                self._bytes += len(data)
        self._evict()

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.limit or not self._entries:
                    return
                name, size = self._entries.popitem(last=False)
                self._bytes -= size
            (self.directory / name).unlink(missing_ok=True)

    def _forget(self, keys: Sequence[str]) -> None:
        for key in keys:
            name = self._name(key)
            with self._lock:
                size = self._entries.pop(name, None)
                if size is not None:
                    self._bytes -= size
            (self.directory / name).unlink(missing_ok=True)


if TYPE_CHECKING:

    def _conforms(store: CachedBlobs) -> BlobStore:
        """Never called: mypy checks that CachedBlobs is a BlobStore."""
        return store

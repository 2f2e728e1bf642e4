"""Bodies as files under a directory: the Maildir the mail stores have always used.

The key is the file's path under the root (``example.test/alice/cur/1733...``), as the
PostgreSQL index's ``path`` column names it. New Maildir files are written by
``store.maildir.MaildirWriter`` (its shared directory fsync is what delivery throughput
rests on); this store reads them, removes them, lists them (for ``pillarbox store blobs
--to s3``) and writes single bodies durably (``put``: a temporary file, fsync, rename,
fsync of the directory). Its blocking work runs in its own thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from pillarbox.blobs.api import BlobError, BlobInfo

if TYPE_CHECKING:
    from pillarbox.blobs.api import BlobStore

T = TypeVar("T")
LIST_PAGE = 1000
THREADS = 4


class FileBlobs:
    """See the module docstring."""

    def __init__(self, root: Path, *, threads: int = THREADS):
        self.root = root
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fileblobs")

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        path = self.root / key
        if ".." in Path(key).parts or Path(key).is_absolute():
            raise BlobError(f"not a key under {self.root}: {key!r}")
        return path

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        await self._run(lambda: self.root.mkdir(parents=True, exist_ok=True))

    async def put(self, key: str, data: bytes | BinaryIO) -> None:
        await self._run(lambda: self._put(self.path(key), data))

    @staticmethod
    def _put(path: Path, data: bytes | BinaryIO) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with temporary.open("wb") as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                shutil.copyfileobj(data, out)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | None:
        return await self._run(lambda: self._get(self.path(key), start, end))

    @staticmethod
    def _get(path: Path, start: int, end: int | None) -> bytes | None:
        try:
            with path.open("rb") as source:
                if start:
                    source.seek(start)
                return source.read() if end is None else source.read(max(0, end - start))
        except FileNotFoundError:
            return None

    async def exists(self, key: str) -> bool:
        return await self._run(self.path(key).is_file)

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self.path(key) for key in keys]

        def unlink_all() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        await self._run(unlink_all)

    async def scan(self, prefix: str = "") -> AsyncIterator[list[BlobInfo]]:
        walker = self._walk(prefix)  # a generator: each page is walked in a worker thread
        while page := await self._run(lambda: list(itertools.islice(walker, LIST_PAGE))):
            yield page

    def _walk(self, prefix: str) -> Iterator[BlobInfo]:
        for folder, _, names in os.walk(self.root):
            for name in sorted(names):
                if name.startswith("."):  # a temporary file of a put, or a hidden one
                    continue
                path = Path(folder) / name
                key = str(path.relative_to(self.root))
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        yield BlobInfo(key, stat.st_size, stat.st_mtime)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)


if TYPE_CHECKING:

    def _conforms(store: FileBlobs) -> BlobStore:
        """Never called: mypy checks that FileBlobs is a BlobStore."""
        return store

"""Where the PostgreSQL store's message bodies are: files under the mail directory
(``[store] blobs = "maildir"``) or objects in a blob store (``pillarbox.blobs``).

A row's ``path`` says which: a file's path under the mail directory, or ``blob:`` and
the body's key. Both kinds can live side by side (an install that moved to S3 keeps
reading the files it had until ``pillarbox store blobs copy --to s3`` moves them).

Keys are ``domain/local/SECONDS.RANDOM``: unique without asking anyone (so two nodes
never collide and a key is never rewritten), grouped per user (a listing by prefix finds
a user's bodies), in time order within a user.

Order of writes, for "never a row without its body": the body is put (durably: S3's 200)
before the transaction that adds its row, and removed only after the transaction that
removed the last row naming it committed. A crash between put and commit leaves an
orphan: no row names it, and :func:`sweep` deletes it once it is older than
``[store] s3_orphan_age``. A delivery that took longer than half that age between its
put and its commit is failed instead of committed (451: the client sends it again), so
the sweeper can never take a body that a row is about to name.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pillarbox.blobs.api import BlobStore
from pillarbox.blobs.files import FileBlobs
from pillarbox.mime import to_crlf

BLOB: Final = "blob:"
_BIG: Final = 1 << 20  # bodies whose CRLF conversion goes to a thread

Named = Callable[[Sequence[str]], Awaitable[set[str]]]
Run = Callable[[Callable[[bytes], bytes], bytes], Awaitable[bytes]]


def blob_key(path: str) -> str | None:
    """The key of a ``blob:`` path, None for a file's path."""
    return path[len(BLOB) :] if path.startswith(BLOB) else None


def new_key(user: str) -> str:
    local, _, domain = user.rpartition("@")
    return f"{domain}/{local}/{int(time.time())}.{secrets.token_hex(12)}"


class Bodies:
    """Reads and removes bodies by a row's ``path``; puts new ones into ``blobs``.

    ``named`` asks the index which ``blob:`` paths rows still name (committed)."""

    def __init__(self, mail_dir: Path, blobs: BlobStore | None, named: Named):
        self.files = FileBlobs(mail_dir)
        self.blobs = blobs
        self._named = named

    async def open(self) -> None:
        await self.files.open()
        if self.blobs is not None:
            await self.blobs.open()

    async def close(self) -> None:
        await self.files.close()
        if self.blobs is not None:
            await self.blobs.close()

    async def put(self, user: str, data: bytes) -> str:
        """Store a new body (CRLF bytes) durably; its ``path`` for the index row."""
        if self.blobs is None:
            raise RuntimeError("no blob store configured")  # the caller writes Maildir
        key = new_key(user)
        await self.blobs.put(key, data)
        return BLOB + key

    async def read(self, path: str, run: Run) -> bytes | None:
        """The body with CRLF line ends (as stored in a blob; a file may have bare LFs,
        converted in a worker thread when it is large); None when it is gone."""
        key = blob_key(path)
        if key is not None:
            if self.blobs is None:
                raise OSError(f"{path}: the message body is in a blob store, and none is set")
            return await self.blobs.get(key)
        data = await self.files.get(path)
        if data is None:
            return None
        return await run(to_crlf, data) if len(data) > _BIG else to_crlf(data)

    async def remove(self, paths: Sequence[str]) -> None:
        """Remove the bodies of rows that are gone (committed): files at once, a blob once
        no row names it any more (a COPY shares one)."""
        files = [path for path in paths if blob_key(path) is None]
        if files:
            await self.files.delete(files)
        blobs = sorted({path for path in paths if blob_key(path) is not None})
        if blobs and self.blobs is not None:
            still = await self._named(blobs)
            unused = [key for path in blobs if path not in still if (key := blob_key(path))]
            if unused:
                await self.blobs.delete(unused)


@dataclass
class Swept:
    """What a sweep saw and did."""

    scanned: int = 0
    scanned_bytes: int = 0
    young: int = 0  # unnamed, but too recent to be called orphans yet
    deleted: int = 0
    deleted_bytes: int = 0

    def __str__(self) -> str:
        return (
            f"{self.scanned} objects ({self.scanned_bytes} bytes) scanned, "
            f"{self.deleted} orphans deleted ({self.deleted_bytes} bytes), "
            f"{self.young} unnamed but younger than the orphan age"
        )


async def sweep(
    blobs: BlobStore,
    named: Named,
    orphan_age: float,
    progress: Callable[[int, int], None] | None = None,
    *,
    dry_run: bool = False,
) -> Swept:
    """Delete the bodies no row names that are older than ``orphan_age`` seconds (by the
    store's clock: S3's LastModified). ``progress(objects, bytes)`` after each page;
    ``dry_run`` counts what it would delete and deletes nothing."""
    cutoff = time.time() - orphan_age
    done = Swept()
    async for page in blobs.scan():
        done.scanned += len(page)
        done.scanned_bytes += sum(blob.size for blob in page)
        still = await named([BLOB + blob.key for blob in page])
        unnamed = [blob for blob in page if BLOB + blob.key not in still]
        doomed = [blob for blob in unnamed if blob.modified < cutoff]
        done.young += len(unnamed) - len(doomed)
        if doomed and not dry_run:
            await blobs.delete([blob.key for blob in doomed])
        if doomed:
            done.deleted += len(doomed)
            done.deleted_bytes += sum(blob.size for blob in doomed)
        if progress is not None:
            progress(len(page), sum(blob.size for blob in page))
    return done

"""Move the bodies an install has in Maildir files into its blob store
(``pillarbox store blobs copy --to s3``), so that every node can read every message.

A page of rows at a time, in (mailbox, UID) order: each file is read and put as a new
object (several at once: S3 PUTs are slow one by one and fast side by side), then the
rows are pointed at their objects in one transaction, then, after that commit, the files
are removed. The order is delivery's: a row always names a body that exists. A run that
is interrupted leaves objects no row names (the sweeper's) and finishes when run again:
only rows that still name a file are copied. A row expunged or moved while its page was
copied keeps its file and loses nothing; its new object is deleted at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pillarbox.mime import to_crlf
from pillarbox.pgmail.bodies import BLOB, new_key

if TYPE_CHECKING:
    from pillarbox.pgmail.store import PgMailStore

PAGE = 200  # rows per transaction
PARALLEL = 8  # PUTs in flight


@dataclass
class Copied:
    messages: int = 0
    bytes: int = 0
    missing: int = 0  # rows whose file was not there (left as they are)

    def __str__(self) -> str:
        return f"{self.messages} bodies ({self.bytes} bytes) copied" + (
            f", {self.missing} files missing (rows left as they were)" if self.missing else ""
        )


async def copy_to_blobs(
    store: PgMailStore, progress: Callable[[int, int], None] | None = None
) -> Copied:
    """Every file-backed row's body into ``store.blobs``; ``progress(count, bytes)``."""
    if store.blobs is None:
        raise RuntimeError("no blob store configured")
    done = Copied()
    after = (0, 0)
    gate = asyncio.Semaphore(PARALLEL)
    users = await store.run(store.index.users_of_boxes)

    async def put_one(box_id: int, uid: int, path: str) -> tuple[int, int, str, str] | None:
        async with gate:
            data = await store.bodies.files.get(path)
            if data is None:
                done.missing += 1
                return None
            data = to_crlf(data)
            key = new_key(users[box_id])
            assert store.blobs is not None
            await store.blobs.put(key, data)
            done.bytes += len(data)
            if progress is not None:
                progress(1, len(data))
            return box_id, uid, path, BLOB + key

    while rows := await store.run(store.index.file_rows, after, PAGE):
        after = rows[-1][0], rows[-1][1]
        moves = [m for m in await asyncio.gather(*(put_one(*row) for row in rows)) if m]
        unused = await store.run(store.index.repoint, moves)
        if unused:
            await store.blobs.delete([path[len(BLOB) :] for path in unused])
        unused_set = set(unused)
        copied = [old for _, _, old, new in moves if new not in unused_set]
        await store.bodies.files.delete(copied)
        done.messages += len(copied)
    return done

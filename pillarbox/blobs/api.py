"""The blob store interface: immutable bodies under string keys.

A key is written once and never rewritten (the mail stores name every body by a fresh
unique key), which is what makes the read cache (:mod:`pillarbox.blobs.cache`) need no
invalidation beyond a delete, and a COPY able to share one body between two rows.

Every method is a coroutine that does its blocking work in the store's own threads, never
on the event loop. ``put`` returns only once the body is durable (a file fsynced with its
directory; an S3 PUT answered 200, which S3 promises is durable), so a caller may then
commit an index row naming the key: the order that leaves at worst a body no row names
(an orphan, swept later), never a row without its body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol


class BlobError(OSError):
    """The store could not do what was asked (network, permissions, a missing bucket)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored body, as a listing gives it."""

    key: str
    size: int
    modified: float  # Unix time the body was written


class BlobStore(Protocol):
    @property
    def location(self) -> str:
        """Where the bodies are, for people ("s3://bucket/prefix at endpoint")."""
        ...

    async def open(self) -> None:
        """Get ready (check that the store answers); BlobError when it cannot be used."""
        ...

    async def put(self, key: str, data: bytes | BinaryIO) -> None:
        """Store ``data`` under ``key``, durably before returning; BlobError if not."""
        ...

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | None:
        """Bytes ``start`` up to ``end`` (exclusive; None: to the end) of the body, or
        None when there is no such key."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove the bodies; a key that is already gone is no error."""
        ...

    def scan(self, prefix: str = "") -> AsyncIterator[list[BlobInfo]]:
        """Every body whose key starts with ``prefix``, a page at a time (for sweeping
        and for status): the order is the store's."""
        ...

    async def close(self) -> None: ...

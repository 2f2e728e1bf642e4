"""A message as parts, as the queue handles it: ``bytes`` (fields we prepend, a signature)
and ``Path`` (spool files), concatenated in order. Blocking file work: callers run these in
a worker thread."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def join_parts(parts: Sequence[bytes | Path]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.read_bytes() for p in parts)


def write_parts(target: Path, parts: Sequence[bytes | Path]) -> None:
    # A working copy for one attempt: no fsync (it is recreated if lost).
    with open(target, "wb") as f:
        for part in parts:
            f.write(part if isinstance(part, bytes) else part.read_bytes())


def read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)

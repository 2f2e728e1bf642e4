"""The quick header read of store.lazyparse finds the header block ``mime.parse`` finds.

A header SEARCH on messages not parsed yet reads only their header blocks
(``lazyparse.header_block``), so its answers equal the fully parsed index's only if the
block it reads, from raw bytes with any mix of CR LF, bare LF and bare CR line ends, read
a few bytes at a time, is the one the parser takes from the whole file's CRLF form.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pillarbox import mime
from pillarbox.store import lazyparse

PIECES = [b"a", b":", b" ", b"\r", b"\n", b"\r\n", b"Subject: x", b"\t"]


def _samples() -> list[bytes]:
    rng = random.Random(20261207)
    samples = [b"", b"\r\n", b"\n", b"\r", b"A: b", b"A: b\n\nbody", b"A: b\r\n\r\n", b"\rA: b"]
    for _ in range(3000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.05:  # a header longer than one read
            data = b"H: " + b"v" * rng.randint(8100, 8300) + data
        samples.append(data)
    return samples


@pytest.mark.parametrize("read_size", [1, 2, 5, lazyparse.HEAD_READ])
def test_the_header_block_is_the_parsers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    monkeypatch.setattr(lazyparse, "HEAD_READ", read_size)
    path = tmp_path / "message"
    for data in _samples():
        path.write_bytes(data)
        crlf = mime.to_crlf(data)
        expected = crlf[: mime.parse(crlf).header_end]
        with path.open("rb") as f:
            assert lazyparse.header_block(f.fileno()) == expected, data

"""The ``BlobStore`` contract (``pillarbox/blobs/api.py``), the same checks on each store:
files in a directory, S3 (a real moto server over HTTP, tests/s3server.py), and S3 behind
the read cache. Keys written once, read whole or by range, listed by prefix a page at a
time, deleted (twice is no error)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pillarbox.blobs.api import BlobError, BlobStore
from pillarbox.blobs.cache import CachedBlobs
from pillarbox.blobs.files import FileBlobs
from pillarbox.blobs.s3 import S3Blobs, S3Location, parse_url
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["files", "s3", "cached"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    made: BlobStore
    if request.param == "files":
        made = FileBlobs(tmp_path / "mail")
    else:
        server: S3Server = request.getfixturevalue("s3")
        secret = tmp_path / "secret"
        secret.write_text(SECRET_KEY)
        where = S3Location(server.bucket(), "p", server.endpoint, "us-east-1", ACCESS_KEY, secret)
        made = S3Blobs(where)
        if request.param == "cached":
            made = CachedBlobs(made, tmp_path / "cache", 1 << 20)
    await made.open()
    yield made
    await made.close()


async def test_put_get_range_exists_delete(store: BlobStore) -> None:
    body = b"Subject: hi\r\n\r\n" + bytes(range(256)) * 40
    await store.put("example.test/alice/1.a", body)
    await store.put("example.test/alice/2.b", io.BytesIO(b"from a file object"))
    assert await store.get("example.test/alice/1.a") == body
    assert await store.get("example.test/alice/1.a", 15, 271) == body[15:271]
    assert await store.get("example.test/alice/1.a", 10000) == body[10000:]
    assert await store.get("example.test/alice/2.b") == b"from a file object"
    assert await store.get("example.test/alice/none") is None
    assert await store.exists("example.test/alice/1.a")
    assert not await store.exists("example.test/alice/none")
    await store.delete(["example.test/alice/1.a", "example.test/alice/none"])
    await store.delete(["example.test/alice/1.a"])  # gone already: no error
    assert await store.get("example.test/alice/1.a") is None
    assert not await store.exists("example.test/alice/1.a")


async def test_scan_lists_every_key_under_a_prefix_with_its_size(store: BlobStore) -> None:
    for number in range(5):
        await store.put(f"example.test/alice/{number}", b"x" * number)
    await store.put("example.test/bob/0", b"bob")
    seen = [blob async for page in store.scan("example.test/alice/") for blob in page]
    assert sorted((b.key, b.size) for b in seen) == [
        (f"example.test/alice/{n}", n) for n in range(5)
    ]
    assert all(b.modified > 0 for b in seen)
    everything = [blob.key async for page in store.scan() for blob in page]
    assert sorted(everything) == sorted([b.key for b in seen] + ["example.test/bob/0"])


def test_s3_urls_and_file_keys_are_checked() -> None:
    assert parse_url("s3://bucket/mail/") == ("bucket", "mail")
    assert parse_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_url("https://bucket/mail")
    with pytest.raises(BlobError):
        FileBlobs(Path("/srv/mail")).path("../etc/passwd")


def test_two_reads_that_missed_at_once_count_their_body_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads store the same key after both missed: the second store finishes while the
    first is between its check and its bookkeeping (forced here at the rename). The body
    is one entry of its size, or the cache would believe itself fuller than it is and
    evict early, for good."""
    cache = CachedBlobs(FileBlobs(tmp_path / "mail"), tmp_path / "cache", 10_000)
    cache._load()
    body = b"m" * 100
    real_replace = Path.replace
    raced: list[bool] = []

    def replace_then_race(self: Path, target: str | Path) -> Path:
        moved = real_replace(self, target)
        if not raced:
            raced.append(True)
            cache._store("k", body)  # the other thread's store, done in between
        return moved

    monkeypatch.setattr(Path, "replace", replace_then_race)
    cache._store("k", body)
    assert raced
    assert cache.cached_bytes == len(body)

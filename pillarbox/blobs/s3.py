"""Bodies as objects in an S3-compatible store (``[store] blobs = "s3://bucket/prefix"``).

boto3 is blocking, so every request runs in this store's own thread pool (one boto3 client
is thread-safe and keeps a connection pool as large as the thread pool); the event loop
only awaits. Keys are ``prefix/`` + the caller's key.

Durability: ``put`` returns after S3 answered the PUT with 200, which S3 (and the
compatible stores that follow its contract: MinIO, Ceph RGW, Garage) give only once the
object is stored durably; botocore sends a CRC32 checksum of the body, which the server
verifies before it answers, so a body damaged on the way is refused, not stored.
Errors (network, credentials, a missing bucket) come out as :class:`BlobError`, an
``OSError``, which delivery treats as a temporary failure (SMTP 451: the client retries).

What it costs: one PUT per delivered message, one GET per body read that misses the
local cache, one DELETE per 1,000 expunged (DeleteObjects), one LIST per 1,000 objects
swept. A COPY between mailboxes costs nothing here: the rows share the object.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from pillarbox.blobs.api import BlobError, BlobInfo

if TYPE_CHECKING:
    from pillarbox.blobs.api import BlobStore

T = TypeVar("T")
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys per request
THREADS = 8


@dataclass(frozen=True)
class S3Location:
    """Where and how to reach the bucket (``[store]``'s s3_* keys)."""

    bucket: str
    prefix: str = ""
    endpoint: str = ""  # "" = AWS's endpoint for the region
    region: str = "us-east-1"
    access_key: str = ""  # "" with no secret: boto3's own chain (env, ~/.aws, a role)
    secret_key_file: Path | None = None


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix without slashes at either end)."""
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f'expected "s3://bucket/prefix", got {url!r}')
    return bucket, prefix.strip("/")


class S3Blobs:
    """See the module docstring."""

    def __init__(self, where: S3Location, *, threads: int = THREADS):
        self.where = where
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3blobs")
        self._threads = threads
        self._client: Any = None

    @property
    def location(self) -> str:
        at = f" at {self.where.endpoint}" if self.where.endpoint else ""
        return f"s3://{self.where.bucket}/{self.where.prefix}{at}"

    def _key(self, key: str) -> str:
        return f"{self.where.prefix}/{key}" if self.where.prefix else key

    def _unkey(self, name: str) -> str:
        return name[len(self.where.prefix) + 1 :] if self.where.prefix else name

    def _connect(self) -> Any:
        """The boto3 client (made once, in a worker thread: it reads files)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            secret = None
            if self.where.secret_key_file is not None:
                secret = self.where.secret_key_file.read_text().strip()
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.where.endpoint or None,
                region_name=self.where.region or None,
                aws_access_key_id=self.where.access_key or None,
                aws_secret_access_key=secret,
                config=Config(
                    max_pool_connections=self._threads,
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    # Path style works with every S3-compatible server (no DNS per bucket).
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    async def _run(self, fn: Callable[[Any], T]) -> T:
        def call() -> T:
            try:
                return fn(self._connect())
            except BlobError:
                raise
            except Exception as exc:  # botocore's errors share no base class with OSError
                raise BlobError(f"S3 {self.location}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def put(self, key: str, data: bytes | BinaryIO) -> None:
        await self._run(
            lambda s3: s3.put_object(Bucket=self.where.bucket, Key=self._key(key), Body=data)
        )

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | None:
        def get(s3: Any) -> bytes | None:
            extra = {}
            if start or end is not None:
                extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            try:
                answer = s3.get_object(Bucket=self.where.bucket, Key=self._key(key), **extra)
            except s3.exceptions.NoSuchKey:
                return None
            return bytes(answer["Body"].read())

        return await self._run(get)

    async def exists(self, key: str) -> bool:
        def head(s3: Any) -> bool:
            from botocore.exceptions import ClientError

            try:
                s3.head_object(Bucket=self.where.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return False
                raise
            return True

        return await self._run(head)

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._key(key)} for key in keys[start : start + DELETE_BATCH]]
            answer = await self._run(
                lambda s3, batch=batch: s3.delete_objects(  # type: ignore[misc]
                    Bucket=self.where.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            )
            if errors := answer.get("Errors"):
                raise BlobError(f"S3 {self.location}: delete failed: {errors[0]}")

    async def scan(self, prefix: str = "") -> AsyncIterator[list[BlobInfo]]:
        token: str | None = None
        while True:

            def page(s3: Any, token: str | None = token) -> dict[str, Any]:
                more = {"ContinuationToken": token} if token else {}
                return dict(
                    s3.list_objects_v2(Bucket=self.where.bucket, Prefix=self._key(prefix), **more)
                )

            answer = await self._run(page)
            yield [
                BlobInfo(self._unkey(item["Key"]), int(item["Size"]),
                         item["LastModified"].timestamp())
                for item in answer.get("Contents", [])
            ]  # fmt: skip
            if not answer.get("IsTruncated"):
                return
            token = answer["NextContinuationToken"]

    async def open(self) -> None:
        """Check that the bucket is there and answers (at start: a clear error, not a 451
        on the first delivery)."""

        def head(s3: Any) -> None:
            from botocore.exceptions import ClientError

            try:
                s3.head_bucket(Bucket=self.where.bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("404", "NoSuchBucket"):
                    raise BlobError(f"S3 {self.location}: no such bucket") from None
                if code in ("403", "AccessDenied"):
                    raise BlobError(
                        f"S3 {self.location}: access denied (check s3_access_key and"
                        " s3_secret_key_file)"
                    ) from None
                raise

        await self._run(head)

    async def close(self) -> None:
        self.executor.shutdown(wait=False)
        self._client = None


if TYPE_CHECKING:

    def _conforms(store: S3Blobs) -> BlobStore:
        """Never called: mypy checks that S3Blobs is a BlobStore."""
        return store

"""The blob store ``[store]`` asks for: None for Maildir (the mail store writes its files
itself), else the S3 store behind its read cache."""

from __future__ import annotations

from pathlib import Path

from pillarbox.blobs.api import BlobStore
from pillarbox.blobs.cache import CachedBlobs
from pillarbox.blobs.s3 import S3Blobs, S3Location, parse_url
from pillarbox.config import StoreSettings

CACHE_DIR = "blob-cache"  # under data_dir: each node its own


def s3_location(store: StoreSettings) -> S3Location:
    bucket, prefix = parse_url(store.blobs)
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint=store.s3_endpoint,
        region=store.s3_region,
        access_key=store.s3_access_key,
        secret_key_file=store.s3_secret_key_file,
    )


def open_blobs(store: StoreSettings, data_dir: Path, *, cached: bool = True) -> BlobStore | None:
    """The configured store, not yet connected (it connects at its first request)."""
    if store.blobs == "maildir":
        return None
    s3 = S3Blobs(s3_location(store))
    if not cached or store.s3_cache <= 0:
        return s3
    return CachedBlobs(s3, data_dir / CACHE_DIR, store.s3_cache)

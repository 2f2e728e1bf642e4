"""``pillarbox store blobs status|sweep|copy --to s3``: the message bodies of a PostgreSQL
install whose ``[store] blobs`` is an S3 bucket (``pillarbox.blobs``, ``pgmail.bodies``).

- ``status``: where the bodies are, how many rows name an object or still a Maildir file,
  what the bucket holds and how much of it no row names (orphans, and those still too
  young to be called so); nothing is changed.
- ``sweep``: delete the orphans now (every node also does it by itself, every half
  ``s3_orphan_age``); safe while the nodes run.
- ``copy --to s3``: move the bodies still in Maildir files (an install that ran on Maildir
  before) into the bucket, with the nodes stopped; run again after an interruption.

Long work shows a progress bar on a terminal, a line per stage otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pillarbox.blobs.configured import CACHE_DIR, open_blobs
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.cli.storemigrate import refuse_while_running
from pillarbox.config import Settings
from pillarbox.pgmail.blobcopy import copy_to_blobs
from pillarbox.pgmail.store import PgMailStore
from pillarbox.transfer.progress import TransferProgress

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args)
    if settings.store.blobs == "maildir":
        raise CliError(
            'this install keeps message bodies in Maildir: set [store] blobs = "s3://bucket/'
            'prefix" (and its s3_* keys) first'
        )
    return settings


def _with_store(settings: Settings, work: Callable[[PgMailStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = PgMailStore(
            settings.store.dsn,
            settings.mail_dir,
            pool_size=2,
            hostname=settings.hostname,
            node="cli",
            blobs=open_blobs(settings.store, settings.data_dir, cached=False),
            orphan_age=settings.store.s3_orphan_age,
            sweeping=False,
        )
        try:
            await store.start()
        except OSError as exc:
            await store.close()
            raise CliError(str(exc)) from None
        try:
            return await work(store)
        except OSError as exc:
            raise CliError(str(exc)) from None
        finally:
            await store.close()

    return asyncio.run(run())


def _cache_line(settings: Settings) -> str:
    directory = settings.data_dir / CACHE_DIR
    if settings.store.s3_cache <= 0:
        return "cache: off"
    held = (
        sum(p.stat().st_size for p in directory.glob("*") if p.is_file())
        if directory.is_dir()
        else 0
    )
    return f"cache: {directory}: {held} of {int(settings.store.s3_cache)} bytes"


def blobs_status(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(store: PgMailStore) -> None:
        assert store.blobs is not None
        print(f"bodies: {store.blobs.location}")
        in_blobs, blob_bytes, in_files, file_bytes = await store.run(store.index.body_counts)
        print(f"index: {in_blobs} messages in the bucket ({blob_bytes} bytes), "
              f"{in_files} in Maildir files ({file_bytes} bytes)")  # fmt: skip
        with TransferProgress() as bars:
            bar = bars.folder("scanning the bucket", 0)
            swept = await store.sweep(lambda n, size: bar.advance(n, size), dry_run=True)
            bar.finish(f"{swept.scanned} objects")
        print(f"bucket: {swept.scanned} objects ({swept.scanned_bytes} bytes); "
              f"{swept.deleted} orphans ({swept.deleted_bytes} bytes) a sweep would delete, "
              f"{swept.young} unnamed but younger than s3_orphan_age")  # fmt: skip
        if in_files:
            print("some bodies are still files: `pillarbox store blobs copy --to s3` moves them")

    _with_store(settings, work)
    print(_cache_line(settings))
    return 0


def blobs_sweep(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(store: PgMailStore) -> None:
        with TransferProgress() as bars:
            bar = bars.folder("sweeping the bucket", 0)
            swept = await store.sweep(lambda n, size: bar.advance(n, size))
            bar.finish(str(swept))

    _with_store(settings, work)
    return 0


def blobs_copy(args: argparse.Namespace) -> int:
    settings = _settings(args)
    refuse_while_running(settings)

    async def work(store: PgMailStore) -> None:
        _, _, in_files, file_bytes = await store.run(store.index.body_counts)
        with TransferProgress() as bars:
            bar = bars.folder(f"Maildir -> {settings.store.blobs}", in_files, file_bytes)
            copied = await copy_to_blobs(store, lambda n, size: bar.advance(n, size))
            bar.finish(str(copied))

    _with_store(settings, work)
    return 0


def _copy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", choices=["s3"], required=True, help="the target: the bucket of [store] blobs"
    )


COMMANDS = [
    Command(
        ("store", "blobs", "status"),
        "where the message bodies are: rows, objects, orphans, cache",
        blobs_status,
    ),
    Command(
        ("store", "blobs", "sweep"),
        "delete the objects no message names, older than [store] s3_orphan_age",
        blobs_sweep,
    ),
    Command(
        ("store", "blobs", "copy"),
        "move the bodies still in Maildir files into the bucket (--to s3; nodes stopped)",
        blobs_copy,
        _copy_args,
    ),
]

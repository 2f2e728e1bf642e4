"""The gauges of one running server, read at scrape time.

Two kinds: ``on_loop`` probes read in-memory state (bans) and run on the event loop, where
that state lives; ``from_files`` probes read the queue database, the certificate and the
mail directories, and run in a thread. The store size walks every Maildir, so it is
cached for ``STORE_SIZE_TTL`` seconds: a scrape every 15 s must not mean a ``du`` of the
whole store every 15 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from pillarbox.config import Settings
from pillarbox.metrics.registry import REGISTRY, gauge

Probe = Callable[[], Iterator[Metric]]


class _ProbeCollector(Collector):
    def __init__(self, probes: list[Probe]) -> None:
        self.probes = probes

    def collect(self) -> Iterator[Metric]:
        for probe in self.probes:
            try:
                yield from probe()
            except Exception:  # a broken probe must not break the whole scrape
                continue


class ServerMetrics:
    """Renders REGISTRY plus this server's probes (see the module docstring)."""

    def __init__(self, settings: Settings, active_bans: Callable[[], int]) -> None:
        self.settings = settings
        self._active_bans = active_bans
        self._sizer = StoreSizer(settings.mail_dir)
        self._loop_registry = CollectorRegistry(auto_describe=False)
        self._loop_registry.register(_ProbeCollector([self._bans]))
        self._file_registry = CollectorRegistry(auto_describe=False)
        self._file_registry.register(_ProbeCollector([self._queue, self._certificate, self._store]))

    async def render(self) -> bytes:
        on_loop = generate_latest(REGISTRY) + generate_latest(self._loop_registry)
        return on_loop + await asyncio.to_thread(generate_latest, self._file_registry)

    def _bans(self) -> Iterator[Metric]:
        yield gauge("pillarbox_bans_active", "Clients banned right now", self._active_bans())

    def _queue(self) -> Iterator[Metric]:
        from pillarbox.queue.store import open_store

        store = open_store(self.settings, readonly=True)
        if store is None:
            return
        try:
            messages = store.messages()
            recipients = sum(len(store.recipients(m.id)) for m in messages)
        finally:
            store.close()
        oldest = min((m.created for m in messages), default=None)
        yield gauge("pillarbox_queue_messages", "Messages in the outbound queue", len(messages))
        yield gauge("pillarbox_queue_recipients", "Recipients still to deliver", recipients)
        age = time.time() - oldest if oldest is not None else 0.0
        yield gauge("pillarbox_queue_oldest_age_seconds", "Age of the oldest queued message", age)

    def _certificate(self) -> Iterator[Metric]:
        from pillarbox.tls.manager import read_current

        info = read_current(self.settings)
        if info is not None:
            left = info.not_after.timestamp() - time.time()
            yield gauge(
                "pillarbox_certificate_expiry_seconds", "Seconds until the certificate expires",
                left,
            )  # fmt: skip

    def _store(self) -> Iterator[Metric]:
        for domain, size in sorted(self._sizer.sizes().items()):
            yield gauge(
                "pillarbox_store_bytes", "Bytes of mail stored, by domain", size,
                {"domain": domain},
            )  # fmt: skip


class StoreSizer:
    """Bytes per domain under the mail dir, re-reading only the Maildir folders that
    changed: every delivery, expunge or flag change renames a file in ``new``/``cur``,
    which changes that directory's mtime, so an unchanged mtime means unchanged sizes.
    A scrape then costs a few stats per user, not one per message."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._dirs: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, bytes)

    def sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        seen: set[str] = set()
        for domain in _subdirs(self.mail_dir):
            total = 0
            for user in _subdirs(Path(domain.path)):
                for folder in _maildir_folders(user.path):
                    seen.add(folder)
                    total += self._folder_bytes(folder)
            sizes[domain.name] = total
        for gone in set(self._dirs) - seen:
            del self._dirs[gone]
        return sizes

    def _folder_bytes(self, path: str) -> int:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return 0
        cached = self._dirs.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        size = _files_bytes(path)
        self._dirs[path] = (mtime, size)
        return size


def _subdirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _maildir_folders(user: str) -> list[str]:
    """The directories holding files of one Maildir++ user: the user dir itself (its
    index files), cur/new/tmp of INBOX and of every ``.Folder``."""
    folders = [user]
    for entry in _subdirs(Path(user)):
        if entry.name in ("cur", "new", "tmp"):
            folders.append(entry.path)
        elif entry.name.startswith("."):
            folders += [os.path.join(entry.path, sub) for sub in ("", "cur", "new", "tmp")]
    return folders


def _files_bytes(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # expunged meanwhile
    except FileNotFoundError:
        pass
    return total

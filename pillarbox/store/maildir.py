"""Maildir primitives: unique names, durable delivery, and the data-dir layout of mailboxes.

A user's Maildir++ root is ``MAIL_DIR/DOMAIN/LOCALPART``: INBOX is the root itself
(``cur/ new/ tmp/``), other folders are ``.Name`` beside it (Dovecot's layout, so Dovecot,
mutt and backup tools read it as is).

Delivery follows the Maildir protocol (https://cr.yp.to/proto/maildir.html): write the file
in ``tmp/``, fsync it, hard-link it into ``new/`` (or ``cur/``), fsync that directory, and
only then report success. A crash at any point leaves at worst a stray file in ``tmp/``,
never a truncated message in ``new/``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

MAILDIR_SUBDIRS = ("cur", "new", "tmp")
_counter = itertools.count(1)
_COPY_CHUNK = 1 << 20


def user_maildir(mail_dir: Path, address: str) -> Path:
    """The Maildir++ root of ``local@domain`` (already normalised by the accounts store)."""
    local, _, domain = address.rpartition("@")
    if not local or not domain or "/" in address or local.startswith(".") or "\0" in address:
        raise ValueError(f"not a storable address: {address!r}")
    return mail_dir / domain / local


def ensure_maildir(path: Path) -> None:
    """Create ``cur/new/tmp`` under ``path`` (mode 0700) if missing."""
    for sub in MAILDIR_SUBDIRS:
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def unique_name(size: int | None = None, hostname: str | None = None) -> str:
    """A Maildir base name, Dovecot style: ``SECS.MUSECsPpidQn.host,S=size``.

    The ``S=`` field lets readers (and our index) learn the size without a stat.
    """
    now = time.time()
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    name = f"{secs}.M{usecs:06d}P{os.getpid()}Q{next(_counter)}.{host}"
    return f"{name},S={size}" if size is not None else name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file_into(dst_fd: int, src: Path) -> int:
    """Append ``src`` to ``dst_fd`` with in-kernel copies; returns the bytes copied."""
    total = 0
    with open(src, "rb") as f:
        src_fd = f.fileno()
        while True:
            try:
                n = os.copy_file_range(src_fd, dst_fd, _COPY_CHUNK)
            except OSError:  # e.g. across file systems on old kernels: plain copy
                n = 0
                for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
                    os.write(dst_fd, chunk)
                    n += len(chunk)
                total += n
                break
            if n == 0:
                break
            total += n
    return total


def deliver(
    maildir: Path,
    parts: Iterable[bytes | Path],
    *,
    subdir: str = "new",
    info: str = "",
    hostname: str | None = None,
) -> Path:
    """Durably store a message made of ``parts`` (bytes, or files copied in order).

    Blocking (disk I/O and fsync): call it from a worker thread. Returns the final path.
    ``info`` is the ``:2,FLAGS`` suffix for ``cur/`` deliveries (e.g. APPEND with flags).
    """
    ensure_maildir(maildir)
    tmp_path = maildir / "tmp" / unique_name(hostname=hostname)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = 0
        for part in parts:
            if isinstance(part, bytes):
                os.write(fd, part)  # local files take whole writes
                size += len(part)
            else:
                size += _copy_file_into(fd, part)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp_path.unlink(missing_ok=True)
        raise
    os.close(fd)
    final_name = f"{tmp_path.name},S={size}{info}"
    final_path = maildir / subdir / final_name
    try:
        # link + unlink rather than rename: never overwrites an existing file (Maildir rule).
        os.link(tmp_path, final_path)
        fsync_dir(final_path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)
    return final_path

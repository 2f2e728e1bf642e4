"""Local delivery: a message into users' Maildirs, durably, then tell IMAP.

Each local recipient gets its own file with its own ``Return-Path`` and ``Delivered-To``
(RFC 5321 §4.4: the final delivery adds Return-Path; Delivered-To is the Postfix/qmail
loop-detection header and tells a user which of its addresses received the mail). Files are
written by :class:`~pillarbox.store.maildir.MaildirWriter` (invisible file, fsync,
atomic link into new/, fsync of new/, with group commit), so when :meth:`LocalStore.store`
returns the mail survives a power cut, and only then does SMTP answer 250. A message for
several users costs one kernel-side copy per user (``copy_file_range`` for spooled bodies).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import log
from pillarbox.delivery.wiring import LocalServices
from pillarbox.store.flags import (
    ensure_keywords,
    is_keyword,
    make_info,
    read_keywords,
    split_flags,
)
from pillarbox.store.maildir import MaildirWriter, ensure_maildir, user_maildir
from pillarbox.store.names import folder_dir

_log = log.get("delivery")

INBOX = "INBOX"
JUNK = "Junk"


@dataclass(frozen=True)
class LocalTarget:
    user: str  # canonical user address (owner of the Maildir)
    folder: str = INBOX  # INBOX or a folder name such as "Junk" (wire name, "/" separated)
    flags: tuple[str, ...] = ()  # IMAP flags set by the user's Sieve script (RFC 5232)
    # This user's own fields (X-Pillarbox-Spam), after Delivered-To; not part of where the
    # message goes, so not of the target's identity.
    headers: bytes = field(default=b"", compare=False)


def folder_path(mail_dir: Path, target: LocalTarget) -> Path:
    """The Maildir of ``target``; raises BadMailboxName for a name no folder can have."""
    return _folder_path(mail_dir, target.user, target.folder)


@functools.lru_cache(maxsize=4096)
def _folder_path(mail_dir: Path, user: str, folder: str) -> Path:
    root = user_maildir(mail_dir, user)
    if folder == INBOX:
        return root
    return root / folder_dir(folder)  # Maildir++ folder (Dovecot layout, names encoded)


def maildir_info(folder: Path, flags: Sequence[str]) -> str:
    """The ``:2,`` info letters for ``flags`` in ``folder`` (blocking: keywords get their
    letter from the folder's dovecot-keywords file, which is created or extended here)."""
    mask, keywords = split_flags(list(flags))
    # A script may name anything; only IMAP atoms can be keywords (the rest is dropped).
    keywords = [k for k in keywords if is_keyword(k)]
    names: list[str] = []
    if keywords:
        ensure_maildir(folder)
        # Two deliveries adding different keywords at once must not both take letter "a".
        with _KEYWORDS_LOCK:
            names = read_keywords(folder)
            ensure_keywords(folder, names, keywords)  # a keyword past the 26th is dropped
    return make_info("", mask, keywords, names)


_KEYWORDS_LOCK = threading.Lock()


def delivery_headers(sender: str, user: str) -> bytes:
    return f"Return-Path: <{sender}>\r\nDelivered-To: {user}\r\n".encode()


class LocalStore:
    """Writes messages into Maildirs (see the module docstring)."""

    def __init__(self, mail_dir: Path, services: LocalServices, hostname: str | None = None):
        self.mail_dir = mail_dir
        self.services = services
        self.hostname = hostname
        self._writer = MaildirWriter(hostname)

    def close(self) -> None:
        self._writer.close()

    async def store(
        self,
        targets: Sequence[LocalTarget],
        sender: str,
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
    ) -> list[Path]:
        """Deliver to every target; returns the new files. Raises OSError on failure."""
        if not targets:
            return []
        folders = [folder_path(self.mail_dir, t) for t in targets]
        infos: list[str] = []
        if any(t.flags for t in targets):
            infos = await asyncio.to_thread(
                lambda: [maildir_info(f, t.flags) for f, t in zip(folders, targets, strict=True)]
            )
        infos = infos or [""] * len(targets)
        paths = await asyncio.gather(
            *(
                self._writer.write(
                    folder,
                    message,
                    prefix=delivery_headers(sender, t.user) + t.headers,
                    info=info,
                )
                for folder, t, info in zip(folders, targets, infos, strict=True)
            )
        )
        for target, path in zip(targets, paths, strict=True):
            _log.debug(
                "delivered", queue_id=queue_id, to=target.user, folder=target.folder,
                file=path.name,
            )  # fmt: skip
            await self._notify(target)
        return paths

    async def _notify(self, target: LocalTarget) -> None:
        events = self.services.mailbox_events
        if events is None:
            return
        try:
            result = events.notify_new_mail(target.user, target.folder)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The mail is stored; a missed notification only delays an IDLE client.
            _log.error("mailbox notification failed", user=target.user, exc_info=True)

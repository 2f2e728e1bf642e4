"""Local delivery: a message into users' mailboxes, through the mail store.

Each local recipient gets its own file with its own ``Return-Path`` and ``Delivered-To``
(RFC 5321 §4.4: the final delivery adds Return-Path; Delivered-To is the Postfix/qmail
loop-detection header and tells a user which of its addresses received the mail). The
store's :meth:`~pillarbox.store.mailbox.MailStore.deliver` writes it (invisible file, fsync,
atomic link into new/, fsync of new/, with group commit), indexes it and tells IDLE
sessions, so when :meth:`LocalStore.store` returns the mail survives a power cut, and only
then does SMTP answer 250. A message for several users costs one kernel-side copy per user
(``copy_file_range`` for spooled bodies), written in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import log
from pillarbox.delivery.wiring import LocalServices
from pillarbox.mailstore.api import MailDelivery
from pillarbox.mailstore.rows import Delivered

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


class LocalStore:
    """Hands messages to the mail store (see the module docstring)."""

    def __init__(self, services: LocalServices):
        self.services = services

    def _store(self) -> MailDelivery:
        store = self.services.mail_store
        if store is None:
            raise OSError("no mail store to deliver into")
        return store

    async def folder_exists(self, user: str, folder: str) -> bool:
        """Whether ``user`` has ``folder`` (Sieve's mailboxexists, RFC 5490 §3.1)."""
        return await self._store().mailbox_exists(user, folder)

    async def store(
        self,
        targets: Sequence[LocalTarget],
        sender: str,
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
    ) -> list[Delivered]:
        """Deliver to every target; returns what the store made of each copy. Raises
        OSError on failure."""
        if not targets:
            return []
        store = self._store()
        writes = [
            store.deliver(t.user, t.folder, message, sender=sender, prefix=t.headers,
                          flags=t.flags)
            for t in targets
        ]  # fmt: skip
        # One recipient (the common case) needs no gather and its task per copy.
        stored = [await writes[0]] if len(writes) == 1 else await asyncio.gather(*writes)
        for target, delivered in zip(targets, stored, strict=True):
            _log.debug(
                "delivered", queue_id=queue_id, to=target.user, folder=delivered.folder,
                id=delivered.id,
            )  # fmt: skip
        return list(stored)

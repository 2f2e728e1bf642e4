"""Delivery status notifications (RFC 3464) of the queue: bounces, delay warnings and
relay reports.

An outcome that calls for a DSN is committed with the recipient's state (column ``dsn``)
and cleared only after the delivery service accepted the report, so a crash in between
sends the report again rather than never (a duplicate DSN, not a lost one). A message whose
recipients are all done and reported is retired here.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.core.ids import new_queue_id
from pillarbox.mailstore.api import MailDelivery
from pillarbox.queue import dsn as dsnlib
from pillarbox.queue.api import OutboundRecipient, QueueService
from pillarbox.queue.parts import read_limited
from pillarbox.queue.store import (
    DSN_DELAYED,
    DSN_FAILED,
    DSN_RELAYED,
    Message,
    QueueStoreBase,
    Recipient,
)
from pillarbox.store.accounts import Accounts

_log = log.get("queue")
T = TypeVar("T")


class QueueDb(Protocol):
    """Runs ``fn(store)`` on the queue's database thread."""

    async def __call__(self, fn: Callable[[QueueStoreBase], T]) -> T: ...


class ReportDelivery(Protocol):
    """The delivery service as the queue uses it: DSNs to local users (or back into the
    queue for remote ones), routed like any other mail."""

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
    ) -> dict[str, str]: ...


class ReportServices(Protocol):
    @property
    def delivery(self) -> ReportDelivery | None: ...

    @property
    def mail_store(self) -> MailDelivery | None: ...  # where a report goes without one


class ReportContext(Protocol):
    @property
    def accounts(self) -> Accounts: ...

    @property
    def services(self) -> ReportServices: ...


class Reports:
    """Sends the DSNs a message's committed outcomes ask for (see the module docstring)."""

    def __init__(
        self,
        ctx: ReportContext,
        settings: Settings,
        db: QueueDb,
        queue: QueueService,
        in_flight: Callable[[str], bool],
    ):
        self.ctx = ctx
        self.settings = settings  # replaced by the queue on reload
        self.db = db
        self.queue = queue  # for a report to a remote sender when no delivery service runs
        self.in_flight = in_flight
        self._lock = asyncio.Lock()

    async def send_pending(self) -> None:
        """Reports left pending (a crash, the delivery service down), of messages no
        attempt is working on."""
        for queue_id in await self.db(lambda s: s.pending_reports()):
            if not self.in_flight(queue_id):
                await self.report(queue_id)

    async def report(self, queue_id: str) -> None:
        """Send the DSNs pending for a message, then retire it if nothing is left to do.

        Serialised: two jobs of one message (two domains) finishing together must not both
        send the same pending report."""
        async with self._lock:
            # Shared store: one node at a time reports a message (no duplicate DSN).
            if not await self.db(lambda s: s.claim_report(queue_id)):
                return
            try:
                await self._report_unlocked(queue_id)
            finally:
                await self.db(lambda s: s.release_report(queue_id))

    async def _report_unlocked(self, queue_id: str) -> None:
        message = await self.db(lambda s: s.message(queue_id))
        if message is None:
            return
        recipients = await self.db(lambda s: s.recipients(queue_id))
        for action in (DSN_FAILED, DSN_DELAYED, DSN_RELAYED):
            selected = [r for r in recipients if r.dsn == action]
            if not selected:
                continue
            ids = [r.id for r in selected]
            if not message.sender:
                # RFC 5321 §6.1 / RFC 3461 §6.2: never report to the null sender.
                _log.info("no dsn for the null sender", queue_id=queue_id, action=action)
            else:
                try:
                    await self._send_dsn(message, selected, action)
                except Exception:
                    _log.error("dsn failed, will retry", queue_id=queue_id, exc_info=True)
                    continue
            await self.db(functools.partial(_clear_dsn, recipient_ids=ids))
        if await self.db(lambda s: s.retire_if_done(queue_id)):
            _log.info("removed", queue_id=queue_id)

    async def _send_dsn(self, message: Message, recipients: list[Recipient], action: str) -> None:
        path = await self.db(lambda s: s.message_path(message.id))
        d = self.settings.delivery
        original = await asyncio.to_thread(read_limited, path, d.max_message_size)
        reports = [
            dsnlib.RecipientReport(
                address=r.address,
                action=action,
                status=status(action, r.last_reply or ""),
                diagnostic=diagnostic(r.last_reply),
                explanation=r.last_reply,
                remote_mta=r.remote_mta,
                orcpt=r.orcpt,
                last_attempt=r.updated,
            )
            for r in recipients
        ]
        report = dsnlib.build_dsn(
            hostname=self.settings.hostname,
            queue_id=message.id,
            sender=message.sender,
            reports=reports,
            original=original,
            arrival=message.created,
            envid=message.envid,
            ret=message.ret,
            retry_until=message.created + d.queue_lifetime,
        )
        dsn_id = new_queue_id()
        await self._deliver(message.sender, report, dsn_id)
        _log.info(
            "dsn sent",
            queue_id=message.id,
            action=action,
            to=f"<{message.sender}>",
            dsn_queue_id=dsn_id,
            recipients=len(recipients),
        )

    async def _deliver(self, to: str, report: bytes, dsn_id: str) -> None:
        """Hand a DSN (null sender) to the delivery service: local INBOX or the queue."""
        delivery = self.ctx.services.delivery
        if delivery is not None:
            outcome = await delivery.deliver("", [to], [report], queue_id=dsn_id)
            if "unknown" in outcome.values():
                # The local sender no longer exists: the report has nowhere to go.
                _log.warning("dsn undeliverable", to=f"<{to}>", queue_id=dsn_id)
            return
        # No delivery service wired (queue used alone): route it ourselves, and store it as
        # local delivery does (Return-Path: <>, Delivered-To, indexed, IDLE told).
        delimiter = self.settings.delivery.recipient_delimiter
        resolution = await asyncio.to_thread(self.ctx.accounts.resolve, to, delimiter)
        if resolution.local_users:
            store = self.ctx.services.mail_store
            if store is None:
                raise OSError("no mail store to deliver the report into")
            for user in resolution.local_users:
                await store.deliver(user, "INBOX", [report], sender="")
        if not resolution.found:
            _log.warning("dsn recipient unknown, sending it out", to=f"<{to}>", queue_id=dsn_id)
        if resolution.remote or not resolution.found:
            targets = list(resolution.remote) if resolution.found else [to]
            await self.queue.enqueue(
                "", [OutboundRecipient(a) for a in targets], [report], queue_id=dsn_id
            )


def _clear_dsn(store: QueueStoreBase, recipient_ids: list[int]) -> None:
    store.clear_dsn(recipient_ids)


def status(action: str, reply: str) -> str:
    """The RFC 3463 status code a report gives for ``reply``, of the class ``action``
    calls for (a failure is never 2.x.x, a delay always 4.x.x)."""
    code = dsnlib.status_of(reply, permanent=action == DSN_FAILED)
    if action == DSN_FAILED and code.startswith("2"):
        return "5.0.0"
    if action in (DSN_RELAYED,):
        return "2.0.0"
    if action == DSN_DELAYED and not code.startswith("4"):
        return "4.0.0"
    return code


def diagnostic(reply: str | None) -> str | None:
    """The remote server's reply for the DSN's Diagnostic-Code (RFC 3464 §2.3.6), found at
    the start of the recorded reply or after "last error:" (expiry); our own texts (which
    start with a status code, not a reply code) give none."""
    if not reply:
        return None
    text = reply.rpartition("last error: ")[2]
    if re.match(r"^[2-5]\d\d[ -]", text):
        return text
    return None

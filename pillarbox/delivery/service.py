"""The delivery service: route recipients, store local mail, hand remote mail to the queue.

``services.delivery`` is a :class:`DeliveryService`. Its public call::

    results = await delivery.deliver(sender, ["bob@example.com", "x@remote.example"],
                                     [header_bytes, spool_path], queue_id=qid)
    # {"bob@example.com": "delivered", "x@remote.example": "queued"}

routes each recipient through the accounts table (exact user, ``user+tag`` with the
configured ``recipient_delimiter``, aliases with several targets, the ``@domain``
catch-all), writes one Maildir copy per local user into INBOX with Return-Path and
Delivered-To, and enqueues every remote address (including alias targets elsewhere) in the
outbound queue with one call. Values are ``delivered``, ``queued``, ``unknown`` (no such
local address) or ``failed`` (storage error; the caller decides, nothing was lost silently:
``deliver`` raises :class:`DeliveryError` when the local store or the queue failed).
The queue uses it to deliver DSNs to local senders; ``pillarbox sendmail`` uses it too.

Routing reads the accounts table on the event loop: a primary-key lookup on a WAL database
reads cached pages and is never blocked by a writer, which costs less than a thread hop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import log
from pillarbox.core.address import AddressError, parse_address, strip_subaddress
from pillarbox.core.ids import new_queue_id
from pillarbox.delivery.local import INBOX, LocalStore, LocalTarget
from pillarbox.delivery.sieve import Plan, SieveFilter, vacation_refusal, vacation_reply
from pillarbox.delivery.wiring import QuotaCheck, RoutingServices
from pillarbox.mailstore.quota import over_quota
from pillarbox.metrics import registry as metrics
from pillarbox.queue import dsn
from pillarbox.queue.api import OutboundRecipient, QueueError, QueueService
from pillarbox.sieve.interpreter import Vacation
from pillarbox.sieve.message import SieveMessage
from pillarbox.store.accounts import Accounts, Resolution

_log = log.get("delivery")


@functools.lru_cache(maxsize=4096)
def _canonical(address: str) -> str:
    # IDNA normalisation of the domain is slow (a pure-Python codec) and the same few
    # addresses come again and again; errors are not cached (lru_cache skips exceptions).
    return str(parse_address(unquote_local_part(address)))


def unquote_local_part(address: str) -> str:
    """``"alice"@example.com`` -> ``alice@example.com``: RFC 5321 §2.4/§4.1.2, a quoted local
    part names the same mailbox as its unquoted form (quoted-pairs undone). Whether the result
    is a storable address is for ``parse_address`` to say."""
    local, at, domain = address.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return f"{local}{at}{domain}"


def _sieve_message(message: Sequence[bytes | Path]) -> SieveMessage:
    """The message for Sieve (blocking): its header section now, the rest when asked."""
    head = head_of(message)
    for end in (b"\r\n\r\n", b"\n\n"):
        cut = head.find(end)
        if cut >= 0:
            head = head[: cut + len(end)]
            break
    size = _size_of(message)

    def load() -> bytes:
        return b"".join(p if isinstance(p, bytes) else p.read_bytes() for p in message)

    return SieveMessage(head, size, load)


def head_of(message: Sequence[bytes | Path], limit: int = 64 * 1024) -> bytes:
    """The first ``limit`` bytes of a message made of parts (enough for its header)."""
    out = bytearray()
    for part in message:
        if len(out) >= limit:
            break
        if isinstance(part, bytes):
            out += part[: limit - len(out)]
        else:
            with open(part, "rb") as f:
                out += f.read(limit - len(out))
    return bytes(out)


def _size_of(message: Sequence[bytes | Path]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in message)


MAILBOX_FULL = "mailbox full"  # the outcome of a user held by ``deliver_within_quota``


class DeliveryError(Exception):
    """Local storage or the queue failed: the message was not (fully) accepted."""


class QueueUnavailable(DeliveryError):
    """A remote recipient, and no outbound queue service is running."""


class SieveRejected(Exception):
    """Every recipient's Sieve script rejected the message: refuse it at DATA (550 5.7.1,
    RFC 5429 §2.1). Nothing was stored or queued."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Route:
    """Where one message goes: local users (deduplicated) and remote addresses."""

    local: dict[str, str] = field(default_factory=dict)  # user -> the recipient it came from
    remote: dict[str, OutboundRecipient] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    # recipient as given -> "delivered" (some local user), "queued" (remote only), "unknown"
    outcome: dict[str, str] = field(default_factory=dict)
    # Local recipients that asked for a success DSN (RFC 3461 NOTIFY=SUCCESS).
    notify_success: list[OutboundRecipient] = field(default_factory=list)


class DeliveryService:
    def __init__(
        self,
        accounts: Accounts,
        local: LocalStore,
        services: RoutingServices,
        *,
        delimiter: str,
        domains: Sequence[str],
        hostname: str = "localhost",
        sieve: SieveFilter | None = None,
    ):
        self.sieve = sieve
        self.accounts = accounts
        self.local = local
        self.services = services
        self.delimiter = delimiter
        self.primary_domain = domains[0]
        self.hostname = hostname

    @property
    def queue(self) -> QueueService | None:
        return self.services.queue

    def canonical(self, address: str) -> str:
        """Normalised address; ``postmaster`` alone means postmaster of our first domain
        (RFC 5321 §4.1.1.3). Raises AddressError."""
        if address.lower() == "postmaster":
            address = f"postmaster@{self.primary_domain}"
        return _canonical(address)

    def resolve(self, address: str) -> Resolution:
        """Where mail for the canonical ``address`` goes (see the module docstring).

        RFC 5321 §4.5.1: every domain MUST accept mail for postmaster. Without a user or
        alias of that name (a fresh install), it goes to the domain's first user, else the
        server's first user, as Postfix's stock aliases send it to root."""
        resolution = self.accounts.resolve(address, self.delimiter)
        if resolution.found:
            return resolution
        local, _, domain = address.rpartition("@")
        if strip_subaddress(local, self.delimiter) == "postmaster" and (
            domain in self.accounts.domains
        ):
            admin = self._first_user(domain)
            if admin is not None:
                return Resolution(local_users=(admin,))
        return resolution

    def _first_user(self, domain: str) -> str | None:
        return self.accounts.first_user(domain)

    def route(
        self,
        recipients: Sequence[OutboundRecipient],
        known: Mapping[str, Resolution] | None = None,
    ) -> Route:
        """Expand recipients; ``known`` holds resolutions already made (at RCPT time)."""
        route = Route()
        for rcpt in recipients:
            try:
                address = self.canonical(rcpt.address)
            except AddressError:
                route.unknown.append(rcpt.address)
                route.outcome[rcpt.address] = "unknown"
                continue
            resolution = known.get(address) if known else None
            if resolution is None:
                resolution = self.resolve(address)
            if not resolution.found:
                route.unknown.append(rcpt.address)
            route.outcome[rcpt.address] = (
                "delivered"
                if resolution.local_users
                else "queued"
                if resolution.remote
                else "unknown"
            )
            if resolution.local_users and dsn.wants_report(rcpt.notify, "delivered"):
                route.notify_success.append(rcpt)
            for user in resolution.local_users:
                route.local.setdefault(user, address)
            for target in resolution.remote:
                # A forwarded copy keeps the DSN wishes of the original recipient.
                route.remote.setdefault(target, OutboundRecipient(target, rcpt.notify, rcpt.orcpt))
        return route

    async def store(
        self,
        route: Route,
        sender: str,
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
        folder: str = INBOX,
        envid: str | None = None,
        ret: str | None = None,
        targets: Mapping[str, LocalTarget] | None = None,
        reject_at_protocol: bool = True,
    ) -> None:
        """Run the local users' Sieve scripts, queue the remote part, then write the local
        copies; raises DeliveryError, or SieveRejected when every recipient rejected and
        ``reject_at_protocol`` (an SMTP client is waiting for the DATA reply; otherwise a
        reject is a bounce, or nothing for the null sender). ``targets`` overrides the
        folder (and adds header fields) per local user: the spam verdict's, which is each
        user's implicit keep."""
        chosen = targets or {}
        keeps = {user: chosen.get(user) or LocalTarget(user, folder) for user in route.local}
        local = list(keeps.values())
        filtered = await self._filter(route, sender, message, keeps, queue_id)
        if filtered is not None:
            plans = filtered[1]
            rejecting = [p.reject for p in plans.values() if p.reject is not None]
            every = rejecting and len(rejecting) == len(plans) and not route.remote
            if every and reject_at_protocol:
                _log.info("sieve rejected", queue_id=queue_id, reason=rejecting[0])
                raise SieveRejected(rejecting[0])
            # Every copy a script makes carries its user's own fields (X-Pillarbox-Spam).
            local = [
                dataclasses.replace(t, headers=keeps[t.user].headers)
                for plan in plans.values()
                for t in plan.targets
            ]
        if route.remote:
            queue = self.queue
            if queue is None:
                raise QueueUnavailable("no outbound queue")
            try:
                await queue.enqueue(
                    sender, list(route.remote.values()), message,
                    envid=envid, ret=ret, queue_id=queue_id,
                )  # fmt: skip
            except QueueError as exc:
                raise DeliveryError(f"queue refused the message: {exc}") from exc
        try:
            await self.local.store(local, sender, message, queue_id=queue_id)
        except OSError as exc:
            _log.error("local delivery failed", queue_id=queue_id, error=str(exc))
            metrics.count(metrics.DELIVERIES, "local", "deferred", amount=len(local))
            raise DeliveryError("local delivery failed") from exc
        metrics.count(metrics.DELIVERIES, "local", "delivered", amount=len(local))
        if filtered is not None:
            await self._sieve_followups(filtered[1], filtered[0], sender, message, queue_id)
        if route.notify_success and sender:
            await self._report_success(route, sender, message, queue_id, envid)

    async def _filter(
        self,
        route: Route,
        sender: str,
        message: Sequence[bytes | Path],
        keeps: Mapping[str, LocalTarget],
        queue_id: str,
    ) -> tuple[SieveMessage, dict[str, Plan]] | None:
        """Each local user's plan (``delivery/sieve.py``), or None without Sieve;
        ``keeps`` holds each user's implicit keep."""
        sieve = self.sieve
        if sieve is None:
            return None
        try:
            if not any(sieve.scripts.has_active(user) for user in route.local):
                return None
        except Exception:
            _log.error("sieve scripts unreadable, kept", queue_id=queue_id, exc_info=True)
            return None

        def work() -> tuple[SieveMessage, dict[str, Plan]]:
            sieve_message = _sieve_message(message)
            # A script sees the message as its user's copy will be: with that user's own
            # fields (the X-Pillarbox-Spam verdict) on top, so it can act on them.
            views = {b"": sieve_message}
            plans = {}
            for user, recipient in route.local.items():
                extra = keeps[user].headers
                if extra not in views:
                    views[extra] = _sieve_message([extra, *message])
                plans[user] = sieve.plan(
                    user, recipient, sender, views[extra], keeps[user].folder, queue_id
                )
            return sieve_message, plans

        try:
            return await asyncio.to_thread(work)
        except Exception:
            # Reading the message for the scripts failed: deliver as if there were none.
            _log.error("sieve failed, kept", queue_id=queue_id, exc_info=True)
            return None

    async def _sieve_followups(
        self,
        plans: Mapping[str, Plan],
        sieve_message: SieveMessage,
        sender: str,
        message: Sequence[bytes | Path],
        queue_id: str,
    ) -> None:
        """Redirects, bounces of rejected copies, vacation replies: best effort, after the
        message is stored (a failure here is logged, never an error for the client)."""
        for user, plan in plans.items():
            try:
                if plan.redirects:
                    copy = [f"Delivered-To: {user}\r\n".encode(), *message]
                    results = await self.deliver(sender, plan.redirects, copy,
                                                 queue_id=new_queue_id())  # fmt: skip
                    _log.info("sieve redirected", queue_id=queue_id, user=user,
                              to=plan.redirects, result=results)  # fmt: skip
                if plan.reject is not None:
                    await self._sieve_bounce(user, plan.reject, sender, message, queue_id)
                if plan.vacation is not None:
                    await self._vacation(user, plan.vacation, sender, sieve_message, queue_id)
            except Exception:
                _log.error("sieve follow-up failed", queue_id=queue_id, user=user,
                           exc_info=True)  # fmt: skip

    async def _sieve_bounce(
        self, user: str, reason: str, sender: str, message: Sequence[bytes | Path], queue_id: str
    ) -> None:
        """RFC 5429 §2.1: a reject that cannot be a protocol refusal (other recipients took
        the message) is a DSN to the sender; never to the null sender (§2.1.2)."""
        if not sender:
            _log.info("sieve rejected, no bounce to <>", queue_id=queue_id, user=user)
            return
        head = await asyncio.to_thread(head_of, message)
        report = dsn.build_dsn(
            hostname=self.hostname, queue_id=queue_id, sender=sender,
            reports=[dsn.RecipientReport(address=user, action="failed", status="5.7.1",
                                         explanation=f"rejected by the recipient: {reason}")],
            original=head, arrival=time.time(), ret="HDRS",
        )  # fmt: skip
        results = await self.deliver("", [sender], [report], queue_id=new_queue_id())
        _log.info("sieve rejected, bounced", queue_id=queue_id, user=user, to=f"<{sender}>",
                  result=results.get(sender))  # fmt: skip

    async def _vacation(
        self, user: str, vacation: Vacation, sender: str, message: SieveMessage, queue_id: str
    ) -> None:
        sieve = self.sieve
        assert sieve is not None
        own = self.accounts.owned_addresses(user)
        refusal = vacation_refusal(vacation, sender, message, own, self.delimiter)
        if refusal is None:
            due = await asyncio.to_thread(
                sieve.scripts.vacation_due, user, sender, vacation.handle, vacation.days * 86400
            )
            refusal = None if due else f"already replied within {vacation.days} days"
        if refusal is not None:
            _log.info("vacation not sent", queue_id=queue_id, user=user, to=f"<{sender}>",
                      reason=refusal)  # fmt: skip
            return
        reply = vacation_reply(vacation, user, sender, message, self.hostname)
        # From the null sender (RFC 3834 §3.3): a reply to the reply goes nowhere.
        reply_id = new_queue_id()
        results = await self.deliver("", [sender], [reply], queue_id=reply_id)
        _log.info("vacation sent", queue_id=queue_id, user=user, to=f"<{sender}>",
                  reply=reply_id, result=results.get(sender))  # fmt: skip

    async def _report_success(
        self,
        route: Route,
        sender: str,
        message: Sequence[bytes | Path],
        queue_id: str,
        envid: str | None,
    ) -> None:
        """RFC 3461 §5.2.2: a "delivered" DSN to the sender for NOTIFY=SUCCESS recipients.

        Best effort: the message itself is already stored, so a failure here is logged and
        never turns into an error for the client (which would make it send again)."""
        try:
            head = await asyncio.to_thread(head_of, message)
            reports = [
                dsn.RecipientReport(
                    address=r.address,
                    action="delivered",
                    status="2.0.0",
                    orcpt=r.orcpt,
                    explanation="delivered to the recipient's mailbox",
                )
                for r in route.notify_success
            ]
            report = dsn.build_dsn(
                hostname=self.hostname, queue_id=queue_id, sender=sender, reports=reports,
                original=head, arrival=time.time(), envid=envid, ret="HDRS",
            )  # fmt: skip
            # From the null sender: a report never causes another one (RFC 3461 §6.2).
            results = await self.deliver("", [sender], [report], queue_id=new_queue_id())
            _log.info("dsn sent", queue_id=queue_id, action="delivered", to=f"<{sender}>",
                      result=results.get(sender))  # fmt: skip
        except Exception:
            _log.error("success dsn failed", queue_id=queue_id, exc_info=True)

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
    ) -> dict[str, str]:
        """See the module docstring."""
        route = self.route([OutboundRecipient(r) for r in recipients])
        # Nobody waits for an SMTP reply here (DSNs, redirects, vacation replies, sendmail):
        # a Sieve reject of these is a bounce (never to the null sender), not an error.
        await self.store(route, sender, message, queue_id=queue_id, reject_at_protocol=False)
        return dict(route.outcome)

    async def deliver_within_quota(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Sequence[bytes | Path],
        *,
        queue_id: str,
    ) -> tuple[dict[str, str], list[str]]:
        """``deliver`` for a caller that keeps the message and tries again later (the
        sendmail pickup): a local user whose quota (RFC 9208) the message would pass is
        left out, reported as ``{user: "mailbox full"}`` and returned, the way SMTP answers
        452 4.2.2 instead of bouncing. DSNs, vacation replies and Sieve redirects go through
        ``deliver`` and are written even past a quota: nobody could keep them for a retry,
        and losing a bounce is worse than a few KiB over a limit."""
        route = self.route([OutboundRecipient(r) for r in recipients])
        size = await asyncio.to_thread(_size_of, message)
        held = await full_mailboxes(self.services.mail_store, list(route.local), size)
        for user in held:
            del route.local[user]
            route.outcome[user] = MAILBOX_FULL  # overrides "delivered" for a direct address
            _log.info("mailbox full, held", queue_id=queue_id, user=user, size=size)
        await self.store(route, sender, message, queue_id=queue_id, reject_at_protocol=False)
        return dict(route.outcome), held


async def full_mailboxes(store: QuotaCheck | None, users: Sequence[str], size: int) -> list[str]:
    """The ``users`` whose quota ``size`` more bytes would pass (none without a store).
    ``store`` is the main process's mail store, or an intake worker's remote quota check."""
    if store is None:
        return []
    full = []
    for user in users:
        limit = store.quota_limit(user)
        if limit > 0 and over_quota(await store.usage(user), size, limit):
            full.append(user)
    return full

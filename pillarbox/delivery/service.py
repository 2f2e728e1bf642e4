"""The delivery service: route recipients, store local mail, hand remote mail to the queue.

``ctx.services["delivery"]`` is a :class:`DeliveryService`. Its public call::

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
import functools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillarbox import log
from pillarbox.core.address import AddressError, parse_address, strip_subaddress
from pillarbox.core.ids import new_queue_id
from pillarbox.delivery.local import INBOX, LocalStore, LocalTarget
from pillarbox.metrics import registry as metrics
from pillarbox.queue import dsn
from pillarbox.queue.api import OutboundRecipient, QueueError
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


def _head_of(message: Sequence[bytes | Path], limit: int = 64 * 1024) -> bytes:
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


class DeliveryError(Exception):
    """Local storage or the queue failed: the message was not (fully) accepted."""


class QueueUnavailable(DeliveryError):
    """A remote recipient, and no outbound queue service is running."""


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
        services: Mapping[str, Any],
        *,
        delimiter: str,
        domains: Sequence[str],
        hostname: str = "localhost",
    ):
        self.accounts = accounts
        self.local = local
        self.services = services
        self.delimiter = delimiter
        self.primary_domain = domains[0]
        self.hostname = hostname

    @property
    def queue(self) -> Any | None:
        return self.services.get("queue")

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
        row = self.accounts.conn.execute(
            "SELECT address FROM users ORDER BY domain != ?, created, address LIMIT 1",
            (domain,),
        ).fetchone()
        return str(row[0]) if row else None

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
    ) -> None:
        """Queue the remote part, then write the local copies; raises DeliveryError."""
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
        targets = [LocalTarget(user, folder) for user in route.local]
        try:
            await self.local.store(targets, sender, message, queue_id=queue_id)
        except OSError as exc:
            _log.error("local delivery failed", queue_id=queue_id, error=str(exc))
            metrics.count(metrics.DELIVERIES, "local", "deferred", amount=len(targets))
            raise DeliveryError("local delivery failed") from exc
        metrics.count(metrics.DELIVERIES, "local", "delivered", amount=len(targets))
        if route.notify_success and sender:
            await self._report_success(route, sender, message, queue_id, envid)

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
            head = await asyncio.to_thread(_head_of, message)
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
        await self.store(route, sender, message, queue_id=queue_id)
        return dict(route.outcome)

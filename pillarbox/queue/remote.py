"""Delivery of one message to the recipients of one destination: route, connect, TLS, send.

For every attempt the recipients of one message at one domain go in one SMTP transaction
(more when the peer answers 452 "too many recipients", RFC 5321 §4.5.3.1.10). Hosts are
tried in MX order, each of their addresses in ``ip_preference`` order, until every recipient
has a reply that settles it for this attempt:

- 2xx after DATA: sent; 5xx: failed (bounce); 4xx to RCPT or DATA: deferred.
- connection failures, greeting/EHLO/MAIL 4xx, and missing-but-required TLS: the next host.
- over IPv6, a 5xx naming reverse DNS or authentication (Gmail's 5.7.25 / 5.7.26, which IPv6
  senders hit most) sends the recipients on to the IPv4 addresses instead of bouncing them.

TLS policy: STARTTLS whenever the peer offers it. ``tls = "may"`` does not verify
certificates (RFC 7435 opportunistic security: an unverified channel beats plaintext) and
falls back to plaintext when the handshake fails; ``tls = "encrypt"`` requires TLS (without
verification, like Postfix's level "encrypt"); an MTA-STS ``enforce`` policy (RFC 8461 §4)
and the smarthost require TLS with a certificate valid for the host name. When TLS is
required and cannot be had, the recipients are deferred, never sent in plaintext.

DANE (RFC 7672, see dane.py) is decided per MX host before connecting: when the host's
addresses and TLSA records are DNSSEC-authenticated, STARTTLS is mandatory and the
certificate is checked against the TLSA records instead of the WebPKI (DANE takes
precedence over MTA-STS, RFC 8461 §2); a mismatch or a failed TLSA lookup defers that host
with a "DANE: ..." reason and the next MX is tried. Every session logs the TLS version and
cipher it used (or why it has none) and, with DANE, ``dane=verified(3 1 1)``.

Capabilities (checked per peer): a message larger than the peer's SIZE bounces (5.3.4,
RFC 1870); UTF-8 envelope addresses need SMTPUTF8 (else 5.6.7, RFC 6531); an 8-bit
message for a peer without 8BITMIME goes as a 7-bit, re-signed copy (RFC 6152 §3, see
downgrade.py), or bounces (5.6.3) when its header is 8-bit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import log
from pillarbox.config import Settings, split_host_port
from pillarbox.dns.resolver import DnsError, Resolver
from pillarbox.queue import dane
from pillarbox.queue.dane import DaneLookupFailed, DaneMismatch, DanePolicy
from pillarbox.queue.downgrade import DowngradeError
from pillarbox.queue.mtasts import Policy, PolicyFetcher
from pillarbox.queue.routing import (
    Hop,
    RouteError,
    family,
    host_addresses,
    order_addresses,
    parse_literal,
    resolve_route,
)
from pillarbox.queue.store import Message, Recipient
from pillarbox.smtp.client import Reply, SmtpClient, SmtpError, Timeouts

_log = log.get("queue")

MAX_CONNECTIONS_PER_ATTEMPT = 10
MAX_SUSPENSION = 300.0
READ_CHUNK = 256 * 1024
# Rejections that IPv6 senders meet far more than IPv4 ones (Gmail: 5.7.25 no PTR for the
# sending address, 5.7.26 unauthenticated): worth another try over IPv4 before bouncing.
IPV6_RETRY_STATUSES = ("5.7.25", "5.7.26")
IPV6_RETRY_WORDS = ("reverse dns", "ptr record", "ipv6")

SENT, FAILED, DEFERRED = "sent", "failed", "deferred"

# (message, spool path) -> path of a 7-bit copy (re-signed); raises DowngradeError.
Downgrader = Callable[[Message, Path], Awaitable[Path]]


@dataclass
class RecipientResult:
    recipient: Recipient
    kind: str = DEFERRED
    reply: str = "4.4.1 no delivery attempt was possible"
    remote_mta: str | None = None
    peer_dsn: bool = False  # the peer accepted our DSN parameters (it reports from now on)


@dataclass(frozen=True)
class TlsPolicy:
    required: bool = False
    verify: bool = False
    sts: Policy | None = None
    reason: str = ""
    dane: DanePolicy = dane.NO_DANE

    def with_dane(self, host: DanePolicy) -> TlsPolicy:
        """This policy for one MX host under ``host``'s DANE verdict. RFC 8461 §2: DANE
        takes precedence over MTA-STS, so the TLSA records replace WebPKI verification."""
        if not host.mandatory:
            return self
        return TlsPolicy(required=True, verify=False, sts=self.sts, reason="DANE", dane=host)

    def failure(self, status: str, text: str) -> str:
        """The reason for a host that cannot give the TLS this policy requires."""
        if self.dane.mandatory:
            return f"{status} DANE: {text} ({self.dane.tlsa} has {self.dane.reason})"
        return f"{status} {text}"


@dataclass
class Connection:
    """An open, greeted, possibly TLS-protected session kept for the next message."""

    destination: str
    client: SmtpClient
    hop: Hop
    ip: str
    verified: bool = False  # TLS with a certificate verified for hop.name (or by DANE)
    tls: str = ""  # what the session's TLS is, for the log: "TLSv1.3/TLS_AES_..."
    dane: str = ""  # "verified(3 1 1)", "encrypt (no usable TLSA)" or "" (no DANE)

    def satisfies(self, policy: TlsPolicy, hops: Sequence[Hop]) -> bool:
        """Whether this session may carry mail under ``policy`` (which may have changed
        since it was opened, e.g. an MTA-STS policy learnt meanwhile)."""
        if self.client.closed or self.hop.name not in {h.name for h in hops}:
            return False
        if policy.required and not self.client.tls:
            return False
        return self.verified or not policy.verify


@dataclass
class Slot:
    """A worker's reusable connection (one destination at a time)."""

    connection: Connection | None = None

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.client.quit()
            self.connection = None


@dataclass
class _Attempt:
    message: Message
    path: Path
    results: dict[int, RecipientResult]
    pending: list[Recipient]
    ipv4_only: bool = False
    tried: int = 0
    reached: bool = False  # some host got as far as a mail transaction
    seven_bit: Path | None = None  # a 7-bit conversion made for a peer without 8BITMIME
    notes: list[str] = field(default_factory=list)
    dane: dict[str, DanePolicy | DaneLookupFailed] = field(default_factory=dict)  # by host


def client_context(verify: bool, extra_ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca is not None:
        ctx.load_verify_locations(cafile=str(extra_ca))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def read_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
            yield chunk
    finally:
        f.close()


def is_ipv6_auth_rejection(reply: Reply) -> bool:
    text = str(reply).lower()
    return reply.permanent and (
        reply.enhanced in IPV6_RETRY_STATUSES or any(w in text for w in IPV6_RETRY_WORDS)
    )


class RemoteDelivery:
    """Delivers jobs (one message, one destination) according to the settings."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        sts: PolicyFetcher | None,
        *,
        rng: random.Random | None = None,
        timeouts: Timeouts | None = None,
        password_reader: Callable[[Path], str] | None = None,
        downgrade: Downgrader | None = None,
    ) -> None:
        self.settings = settings
        self.downgrade = downgrade
        self.resolver = resolver
        self.sts = sts
        self.rng = rng or random.SystemRandom()
        self.timeouts = timeouts or Timeouts(connect=settings.delivery.connect_timeout)
        self.verified_ctx = client_context(True, settings.tls.ca)
        self.opportunistic_ctx = client_context(False, None)
        self._password_reader = password_reader or (lambda p: p.read_text().strip("\r\n"))
        # Destinations where no host could be reached: destination -> (until, reason).
        self._suspended: dict[str, tuple[float, str]] = {}

    def destination_key(self, domain: str) -> str:
        return "smarthost" if self.settings.delivery.smarthost else domain

    # -- the entry point ------------------------------------------------------------------

    async def deliver(
        self, message: Message, path: Path, recipients: Sequence[Recipient], slot: Slot
    ) -> list[RecipientResult]:
        attempt = _Attempt(
            message, path, {r.id: RecipientResult(r) for r in recipients}, list(recipients)
        )
        try:
            return await self._deliver(attempt, recipients[0].domain, slot)
        finally:
            if attempt.seven_bit is not None:
                attempt.seven_bit.unlink(missing_ok=True)

    async def _deliver(self, attempt: _Attempt, domain: str, slot: Slot) -> list[RecipientResult]:
        try:
            hops, policy = await self._route(domain)
        except RouteError as exc:
            kind = FAILED if exc.permanent else DEFERRED
            for r in attempt.pending:
                attempt.results[r.id] = RecipientResult(r, kind, f"{exc.status} {exc}")
            return list(attempt.results.values())
        destination = self.destination_key(domain)
        suspended = self._suspension(destination)
        if suspended is not None:
            for r in attempt.pending:
                attempt.results[r.id] = RecipientResult(
                    r, DEFERRED, f"4.4.1 delivery temporarily suspended: {suspended}"
                )
            return list(attempt.results.values())
        reused = slot.connection
        if (
            reused is not None
            and reused.destination == destination
            and reused.satisfies(policy, hops)
            and await self._dane_allows(attempt, reused)
        ):
            slot.connection = None
            await self._on_reused(attempt, reused, slot)
        elif reused is not None:
            await slot.close()
        for hop in hops:
            for ip in hop.addresses:
                if not attempt.pending or attempt.tried >= MAX_CONNECTIONS_PER_ATTEMPT:
                    break
                if attempt.ipv4_only and family(ip) == socket.AF_INET6:
                    continue
                await self._via_host(attempt, destination, hop, ip, policy, slot)
        if attempt.tried and not attempt.reached:
            self._suspend(destination, attempt)
        return list(attempt.results.values())

    # -- dead destinations ----------------------------------------------------------------

    def _suspension(self, destination: str) -> str | None:
        entry = self._suspended.get(destination)
        if entry is None:
            return None
        until, reason = entry
        if time.monotonic() >= until:
            del self._suspended[destination]
            return None
        return reason

    def _suspend(self, destination: str, attempt: _Attempt) -> None:
        """No host of ``destination`` could be reached: the other messages waiting for it
        are deferred without trying for a while (like Postfix's "delivery temporarily
        suspended"), so a dead destination costs one round of timeouts, not one per
        message."""
        seconds = min(float(self.settings.delivery.retry_initial), MAX_SUSPENSION)
        reason = attempt.notes[-1] if attempt.notes else "no host reachable"
        self._suspended[destination] = (time.monotonic() + seconds, reason)
        _log.info("destination suspended", destination=destination, seconds=seconds, reason=reason)

    def resume(self) -> None:
        """Forget every suspension (an administrator's flush wants attempts now)."""
        self._suspended.clear()

    async def _on_reused(self, attempt: _Attempt, conn: Connection, slot: Slot) -> None:
        try:
            reply = await conn.client.rset()
        except SmtpError:
            conn.client.close()
            return
        if reply.code != 250:
            await conn.client.quit()
            return
        _log.debug("connection reused", queue_id=attempt.message.id, host=conn.hop.name, ip=conn.ip)
        await self._transactions(attempt, conn, slot)

    async def _dane_allows(self, attempt: _Attempt, conn: Connection) -> bool:
        """A kept session opened without DANE may not carry mail to a host that now has
        DNSSEC-signed TLSA records (the records may be newer than the session)."""
        if conn.dane:
            return True
        host = await self._host_dane(attempt, conn.hop)
        return isinstance(host, DanePolicy) and not host.mandatory

    async def _host_dane(self, attempt: _Attempt, hop: Hop) -> DanePolicy | DaneLookupFailed:
        """The DANE verdict for ``hop``, looked up once per attempt (not once per address).
        A smarthost and a domain literal have no TLSA base domain: no DANE."""
        if self.settings.delivery.smarthost or parse_literal(f"[{hop.name}]") is not None:
            return dane.NO_DANE
        if hop.name not in attempt.dane:
            try:
                attempt.dane[hop.name] = await dane.dane_policy(self.resolver, hop.name)
            except DaneLookupFailed as exc:
                attempt.dane[hop.name] = exc
        return attempt.dane[hop.name]

    # -- routing and policy ---------------------------------------------------------------

    async def _route(self, domain: str) -> tuple[list[Hop], TlsPolicy]:
        delivery = self.settings.delivery
        if delivery.smarthost:
            host, _port = split_host_port(delivery.smarthost)
            try:
                addresses = await host_addresses(self.resolver, host)
            except DnsError as exc:
                raise RouteError(
                    f"smarthost {host}: {exc}", permanent=False, status="4.4.3"
                ) from None
            if not addresses:
                raise RouteError(
                    f"smarthost {host} has no address", permanent=False, status="4.4.4"
                )
            hop = Hop(host, tuple(order_addresses(addresses, delivery.ip_preference)))
            return [hop], TlsPolicy(required=True, verify=True, reason="smarthost")
        policy = TlsPolicy(required=delivery.tls == "encrypt", reason="tls=encrypt")
        sts = None
        if self.sts is not None and delivery.mta_sts and not domain.startswith("["):
            sts = await self.sts.policy(domain)
        hops = await resolve_route(
            self.resolver, domain, self.rng, preference=delivery.ip_preference
        )
        if sts is not None and sts.enforce:
            allowed = [h for h in hops if sts.allows(h.name)]
            if not allowed:
                raise RouteError(
                    f"no MX host of {domain} matches its MTA-STS policy",
                    permanent=False,
                    status="4.7.5",
                )
            return allowed, TlsPolicy(required=True, verify=True, sts=sts, reason="MTA-STS")
        return hops, TlsPolicy(required=policy.required, sts=sts, reason=policy.reason)

    def _port(self) -> int:
        smarthost = self.settings.delivery.smarthost
        if smarthost:
            return split_host_port(smarthost)[1]
        return self.settings.delivery.remote_port

    def _source_address(self, ip: str) -> str | None:
        fam = family(ip)
        for addr in self.settings.delivery.bind_address.split(","):
            addr = addr.strip()
            if addr and family(addr) == fam:
                return addr
        return None

    # -- one host -------------------------------------------------------------------------

    async def _via_host(
        self,
        attempt: _Attempt,
        destination: str,
        hop: Hop,
        ip: str,
        policy: TlsPolicy,
        slot: Slot,
    ) -> None:
        attempt.tried += 1
        try:
            host = await self._host_dane(attempt, hop)
            if isinstance(host, DaneLookupFailed):
                # RFC 7672 §2.2: neither "TLSA records" nor "no TLSA records": this MX
                # cannot be used safely now; the next one may.
                raise _HostFailure(f"4.7.5 DANE: {host}")
            policy = policy.with_dane(host)
            client, session = await self._open(hop, ip, policy, attempt)
        except _HostFailure as exc:
            attempt.notes.append(f"{hop.name}[{ip}]: {exc}")
            for r in attempt.pending:
                attempt.results[r.id] = RecipientResult(r, DEFERRED, str(exc), hop.name)
            _log.info(
                "host failed", queue_id=attempt.message.id, host=hop.name, ip=ip, reason=str(exc)
            )
            return
        verified = (policy.verify and client.tls) or session.dane.startswith("verified")
        conn = Connection(destination, client, hop, ip, verified, session.tls, session.dane)
        await self._transactions(attempt, conn, slot)

    async def _open(
        self, hop: Hop, ip: str, policy: TlsPolicy, attempt: _Attempt, *, plaintext: bool = False
    ) -> tuple[SmtpClient, _Session]:
        try:
            client = await SmtpClient.connect(
                ip,
                self._port(),
                local_hostname=self.settings.hostname,
                source_address=self._source_address(ip),
                timeouts=self.timeouts,
            )
        except SmtpError as exc:
            raise _HostFailure(f"4.4.1 {exc}") from None
        try:
            greeting = client.greeting
            if greeting is None or greeting.code != 220:
                raise _HostFailure(f"4.4.2 {hop.name} refused to talk to us: {greeting}")
            reply = await client.ehlo()
            if reply.code != 250:
                raise _HostFailure(f"4.4.2 {hop.name} rejected EHLO/HELO: {reply}")
            session = await self._tls(client, hop, policy, plaintext)
            if self.settings.delivery.smarthost and self.settings.delivery.smarthost_user:
                await self._auth(client, hop)
        except _HostFailure:
            await client.quit()
            raise
        except _TlsHandshakeFailed as exc:
            if policy.required:
                raise _HostFailure(policy.failure("4.7.5", str(exc))) from None
            # Opportunistic TLS failed: deliver in plaintext rather than not at all.
            _log.info("tls failed, retrying in plaintext", queue_id=attempt.message.id, ip=ip)
            return await self._open(hop, ip, policy, attempt, plaintext=True)
        except SmtpError as exc:
            raise _HostFailure(f"4.4.2 {exc}") from None
        _log.info(
            "connected",
            queue_id=attempt.message.id,
            host=hop.name,
            ip=ip,
            tls=session.tls,
            verified=policy.verify and client.tls,
            dane=session.dane or None,
        )
        return client, session

    async def _tls(
        self, client: SmtpClient, hop: Hop, policy: TlsPolicy, plaintext: bool
    ) -> _Session:
        if plaintext or not client.supports("STARTTLS"):
            if policy.required:
                text = f"{hop.name} does not offer STARTTLS"
                if not policy.dane.mandatory:
                    text = f"TLS is required ({policy.reason}) but {text}"
                raise _HostFailure(policy.failure("4.7.4", text))
            why = "plaintext after a failed TLS handshake" if plaintext else "no STARTTLS offered"
            return _Session(why)
        context = self.verified_ctx if policy.verify else self.opportunistic_ctx
        try:
            # RFC 7672 §8.1: SNI carries the TLSA base domain (the MX host name).
            reply = await client.starttls(context, server_hostname=hop.name)
        except SmtpError as exc:
            raise _TlsHandshakeFailed(str(exc)) from None
        if reply.code != 220:
            if policy.required:
                raise _HostFailure(
                    policy.failure("4.7.4", f"STARTTLS refused by {hop.name}: {reply}")
                )
            return _Session(f"no TLS (STARTTLS refused: {reply})")
        return _Session(
            f"{client.tls_version}/{client.tls_cipher}", self._dane_check(client, hop, policy)
        )

    @staticmethod
    def _dane_check(client: SmtpClient, hop: Hop, policy: TlsPolicy) -> str:
        """The DANE outcome of a TLS session ("" without DANE); _HostFailure on mismatch,
        so that not even MAIL FROM is sent to an impostor (RFC 7672 §2.2)."""
        host = policy.dane
        if host.state == dane.ENCRYPT:
            return "encrypt(no usable TLSA)"
        if host.state != dane.AUTHENTICATE:
            return ""
        try:
            record = dane.verify_chain(client.peer_chain, host.records, host.names)
        except DaneMismatch as exc:
            raise _HostFailure(
                f"4.7.5 DANE: the certificate of {hop.name} does not match its TLSA records "
                f"({host.tlsa}): {exc}"
            ) from None
        return f"verified({dane.describe(record)})"

    async def _auth(self, client: SmtpClient, hop: Hop) -> None:
        delivery = self.settings.delivery
        if not client.supports("AUTH"):
            raise _HostFailure(f"4.7.0 smarthost {hop.name} does not offer AUTH")
        password = ""
        if delivery.smarthost_password_file is not None:
            password = await asyncio.to_thread(
                self._password_reader, delivery.smarthost_password_file
            )
        reply = await client.auth(delivery.smarthost_user, password)
        if reply.code != 235:
            # A credentials problem is ours to fix: defer, never bounce.
            raise _HostFailure(f"4.7.0 smarthost authentication failed: {reply}")

    # -- transactions ---------------------------------------------------------------------

    async def _transactions(self, attempt: _Attempt, conn: Connection, slot: Slot) -> None:
        """Send to ``attempt.pending`` over ``conn``; keep the connection for reuse.

        Recipients refused with 452 "too many recipients" go in a further transaction on
        the same connection; those to retry on another host end up in ``attempt.pending``.
        """
        batch, elsewhere = list(attempt.pending), []
        attempt.reached = True
        try:
            while batch:
                batch, moved = await self._one_transaction(attempt, conn, batch)
                elsewhere += moved
        except SmtpError as exc:
            for r in batch:
                attempt.results[r.id] = RecipientResult(r, DEFERRED, f"4.4.2 {exc}", conn.hop.name)
            attempt.pending = elsewhere
            conn.client.close()
            return
        attempt.pending = elsewhere
        if conn.client.closed:
            return
        if slot.connection is not None:
            await slot.close()
        slot.connection = conn

    async def _one_transaction(
        self, attempt: _Attempt, conn: Connection, batch: list[Recipient]
    ) -> tuple[list[Recipient], list[Recipient]]:
        """One MAIL..DATA for ``batch``; returns (recipients for another transaction on
        this connection, recipients to try on another host)."""
        client, message, hop = conn.client, attempt.message, conn.hop
        path = attempt.path
        refusal = self._refuse_by_capability(client, message)
        if refusal is None and message.eightbit and not client.supports("8BITMIME"):
            try:
                message, path = await self._seven_bit(attempt)
            except DowngradeError as exc:
                refusal = (
                    "5.6.3 the peer does not support 8BITMIME and the message cannot be "
                    f"converted to 7 bit: {exc}"
                )
        if refusal is not None:
            for r in batch:
                attempt.results[r.id] = RecipientResult(r, FAILED, refusal, hop.name)
            return [], []
        dsn = client.supports("DSN")
        result = await client.send(
            message.sender,
            self._mail_params(client, message),
            [(r.address, self._rcpt_params(r) if dsn else []) for r in batch],
            read_chunks(path),
        )
        v6 = client.family == socket.AF_INET6
        mail = result.mail
        if not mail.ok:
            kind = FAILED if mail.permanent else DEFERRED
            for r in batch:
                attempt.results[r.id] = RecipientResult(r, kind, str(mail), hop.name)
            await client.rset()
            if mail.temporary:
                return [], list(batch)
            if v6 and is_ipv6_auth_rejection(mail):
                attempt.ipv4_only = True
                return [], list(batch)
            return [], []
        accepted: list[Recipient] = []
        retry_here: list[Recipient] = []
        elsewhere: list[Recipient] = []
        for r, reply in zip(batch, result.rcpts, strict=False):
            if reply.code in (250, 251):
                accepted.append(r)
                continue
            kind = FAILED if reply.permanent else DEFERRED
            attempt.results[r.id] = RecipientResult(r, kind, str(reply), hop.name)
            if reply.code == 452 and reply.enhanced in (None, "4.5.3"):
                retry_here.append(r)
            elif v6 and is_ipv6_auth_rejection(reply):
                elsewhere.append(r)
        data = result.data
        for r in accepted:
            if data is None:
                attempt.results[r.id] = RecipientResult(
                    r, DEFERRED, "4.4.2 DATA was not accepted", hop.name
                )
            elif data.ok:
                attempt.results[r.id] = RecipientResult(r, SENT, str(data), hop.name, dsn)
            else:
                kind = FAILED if data.permanent else DEFERRED
                attempt.results[r.id] = RecipientResult(r, kind, str(data), hop.name)
                if v6 and is_ipv6_auth_rejection(data):
                    elsewhere.append(r)
        if elsewhere:
            attempt.ipv4_only = True
        if data is not None and data.ok:
            _log.info(
                "data accepted",
                queue_id=message.id,
                host=hop.name,
                ip=conn.ip,
                recipients=len(accepted),
                reply=str(data),
                tls=conn.tls or "none",
                dane=conn.dane or None,
            )
        else:
            await client.rset()
        # 452 with nothing accepted is the peer's temporary trouble: defer, do not loop.
        return (retry_here if accepted else []), elsewhere

    def _refuse_by_capability(self, client: SmtpClient, message: Message) -> str | None:
        limit = client.size_limit
        if limit is not None and message.size > limit:
            # RFC 1870 §6.1: a declared limit below the message size is permanent.
            return f"5.3.4 message size {message.size} exceeds the peer's limit {limit}"
        if message.smtputf8 and not client.supports("SMTPUTF8"):
            # RFC 6531 §3.2: non-ASCII addresses cannot be downgraded.
            return "5.6.7 the peer does not support SMTPUTF8, needed for this address"
        if message.eightbit and not client.supports("8BITMIME") and self.downgrade is None:
            # RFC 6152 §3: convert or bounce; without a converter, bounce.
            return "5.6.3 the peer does not support 8BITMIME and the message is 8-bit"
        return None

    async def _seven_bit(self, attempt: _Attempt) -> tuple[Message, Path]:
        """The message converted to 7 bit for this attempt (made once, then reused)."""
        assert self.downgrade is not None
        if attempt.seven_bit is None:
            attempt.seven_bit = await self.downgrade(attempt.message, attempt.path)
            _log.info("converted to 7bit", queue_id=attempt.message.id)
        size = (await asyncio.to_thread(attempt.seven_bit.stat)).st_size
        return dataclasses.replace(attempt.message, eightbit=False, size=size), attempt.seven_bit

    def _mail_params(self, client: SmtpClient, message: Message) -> list[str]:
        params = []
        if client.supports("SIZE"):
            params.append(f"SIZE={message.size}")
        if message.eightbit and client.supports("8BITMIME"):
            params.append("BODY=8BITMIME")
        if message.smtputf8 and client.supports("SMTPUTF8"):
            params.append("SMTPUTF8")
        if client.supports("DSN"):
            if message.ret:
                params.append(f"RET={message.ret}")
            if message.envid:
                params.append(f"ENVID={message.envid}")
        return params

    @staticmethod
    def _rcpt_params(r: Recipient) -> list[str]:
        params = []
        if r.notify:
            order = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
            params.append("NOTIFY=" + ",".join(n for n in order if n in r.notify))
        if r.orcpt:
            params.append(f"ORCPT={r.orcpt}")
        return params


@dataclass(frozen=True)
class _Session:
    """What one session's TLS turned out to be, for the log and the connection."""

    tls: str  # "TLSv1.3/TLS_AES_256_GCM_SHA384", or why there is no TLS
    dane: str = ""


class _HostFailure(Exception):
    """This host cannot take the mail now; the text starts with an RFC 3463 status."""


class _TlsHandshakeFailed(Exception):
    pass

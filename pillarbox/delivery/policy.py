"""The mail policy behind the SMTP sessions: who may send, who may receive, what to check.

:class:`SmtpBackend` implements ``pillarbox.smtp.session.MailBackend``:

Port 25 (MX, RFC 5321): any sender; recipients must be in our domains (another domain is a
relay attempt: 554 5.7.1) and exist (550 5.1.1 at RCPT, so we never accept-then-bounce
backscatter). After DATA the message is authenticated (SPF, DKIM, DMARC, ARC via
``pillarbox.mailauth.inbound``): DMARC ``reject`` gives 550 5.7.1 when
``mailauth.dmarc_reject`` is on, ``quarantine`` delivers to the Junk folder, an SPF
``fail`` gives 550 5.7.23 when ``mailauth.spf_reject`` is on, DNS trouble never refuses
mail. Forged Authentication-Results that claim our authserv-id are removed
(RFC 8601 §5) and ours is prepended. Then the spam filter (``services.spam``,
:mod:`pillarbox.spam`) judges the message per local user: Junk at the user's junk threshold,
550 5.7.1 when every recipient's verdict is "reject" (a message for several users, one of
whom would reject it, goes to that user's Junk: after DATA there is one reply for all), an
``X-Pillarbox-Spam`` field per copy (any arriving one is removed) and the verdict in the
message's log line (:func:`note_verdicts`). With ``[spam] greylist`` an unknown triplet
first gets 451 4.7.1. A failure of the filter delivers to INBOX and logs why.

Submission (587/465, RFC 6409): the envelope sender must be one the authenticated user owns
(its address, its ``+tag`` forms, aliases that lead to it, its send-as grants; RFC 6409
§6.1 allows the check), else 553 5.7.1; the From/Sender header fields are judged by
:mod:`pillarbox.delivery.sendas` (550 5.7.1 naming the address) before anything is signed.
Any recipient; remote ones go to the outbound queue, which DKIM-signs them.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.core.address import AddressError
from pillarbox.delivery.local import INBOX, JUNK, LocalTarget
from pillarbox.delivery.sendas import judge_author
from pillarbox.delivery.service import (
    DeliveryError,
    DeliveryService,
    QueueUnavailable,
    Route,
    SieveRejected,
    full_mailboxes,
    unquote_local_part,
)
from pillarbox.delivery.wiring import InboundServices
from pillarbox.queue.api import OutboundRecipient
from pillarbox.smtp import codes
from pillarbox.smtp.codes import Reply
from pillarbox.smtp.dataread import SpooledMessage, remove_later
from pillarbox.smtp.parse import RcptCommand
from pillarbox.smtp.session import Envelope, ListenerKind, Recipient, SessionInfo
from pillarbox.store.accounts import Accounts, Resolution

if TYPE_CHECKING:
    from pillarbox.mailauth.inbound import AuthVerdict
    from pillarbox.spam.engine import SpamFilter

_log = log.get("delivery")
_spam_log = log.get("spam")
MAX_REMEMBERED = 100_000
SPAM_SAMPLE = 256 * 1024  # bytes of a message the spam rules read (rspamd gets it whole)
SPAM_REJECTED = Reply(550, "5.7.1", "Message refused as spam")
GREYLISTED = Reply(451, "4.7.1", "Greylisted: please try again later")


def spf_refusal(verdict: AuthVerdict, ip: str) -> Reply | None:
    """``mailauth.spf_reject``: refuse an SPF ``fail`` of the envelope sender (or of the
    HELO name, for a null sender), RFC 7208 §8.4, with RFC 7372's 5.7.23. Not when DMARC
    passed anyway (an aligned DKIM signature): RFC 7489 §10.1 warns that refusing on SPF
    alone throws away mail a forwarder broke SPF for but that DKIM still vouches for."""
    spf = verdict.spf if verdict.spf.domain else verdict.spf_helo
    if spf.result != "fail" or verdict.dmarc.result == "pass":
        return None
    return Reply(
        550, "5.7.23", f"SPF check failed: {ip} is not allowed to send mail for {spf.domain}"
    )


def may_relay(session: SessionInfo) -> bool:
    """Relaying (a recipient outside our domains) needs a login or a trusted network."""
    return session.user is not None or session.trusted


@dataclass(frozen=True)
class Accepted:
    """A message that passed every check after DATA, ready to be stored or queued: what
    an intake worker hands to the main process (``SmtpBackend.commit``)."""

    queue_id: str
    sender: str
    envid: str | None
    ret: str | None
    message: list[bytes | Path]  # our header fields first, then the message as received
    folder: str
    route: Route
    targets: dict[str, LocalTarget] | None


@dataclass(frozen=True)
class InboundResult:
    reply: Reply | None  # a rejection, or None to deliver
    folder: str
    headers: bytes  # Authentication-Results to prepend (may be empty)
    verdict: AuthVerdict | None = None


class SmtpBackend:
    """See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        delivery: DeliveryService,
        services: InboundServices,
    ):
        self.settings = settings
        self.accounts = accounts
        self.delivery = delivery
        self.services = services
        # RCPT-time resolutions, reused at delivery so both agree (and one lookup is saved).
        self._resolved: OrderedDict[tuple[str, str], Resolution] = OrderedDict()

    @property
    def delimiter(self) -> str:
        return self.settings.delivery.recipient_delimiter

    def queue_available(self) -> bool:
        """Whether remote recipients can be taken (the outbound queue runs)."""
        return self.delivery.queue is not None

    # -- MAIL / RCPT -------------------------------------------------------------------

    async def check_sender(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        spam = self._spam_filter(session)
        if spam is not None:
            spam.prefetch(session.peer_ip)  # DNSBL and PTR answers by the end of DATA
        sender = envelope.sender
        if session.kind is ListenerKind.SUBMISSION and sender and session.user is not None:
            sender = unquote_local_part(sender)
            if not self.accounts.may_send_as(session.user, sender, self.delimiter):
                return codes.SENDER_NOT_OWNED.with_text(
                    f"Sender address {sender} is not yours to send as (logged in as {session.user})"
                )
        return None

    async def check_recipient(
        self, session: SessionInfo, envelope: Envelope, rcpt: RcptCommand
    ) -> Recipient | Reply:
        try:
            address = self.delivery.canonical(rcpt.recipient)
        except AddressError:
            # Valid SMTP syntax (the parser took it) that names no mailbox we could store
            # or hand on: a quoted local part with spaces, an address literal, ...
            domain = rcpt.recipient.rpartition("@")[2]
            if self.accounts.is_local_domain(domain):
                return codes.MAILBOX_UNKNOWN
            return codes.ADDRESS_NOT_SUPPORTED if may_relay(session) else codes.RELAY_DENIED
        domain = address.rpartition("@")[2]
        if domain not in self.accounts.domains:
            if not may_relay(session):
                return codes.RELAY_DENIED
            if not self.queue_available():
                return codes.OUTBOUND_UNAVAILABLE
            return Recipient(address, rcpt.notify, rcpt.orcpt)
        resolution = self.delivery.resolve(address)
        if not resolution.found:
            return codes.MAILBOX_UNKNOWN
        if resolution.remote and not self.queue_available():
            return codes.OUTBOUND_UNAVAILABLE  # an alias forwarding elsewhere
        # At RCPT the size is the one MAIL announced (RFC 1870 SIZE=), else unknown (0):
        # a mailbox already full is refused now, one that the message would fill at DATA.
        full = await self._full_mailbox(resolution.local_users, envelope.mail.size or 0)
        if full is not None:
            return codes.MAILBOX_FULL.with_text(f"Mailbox full: {address}")
        self._remember(envelope.queue_id, address, resolution)
        return Recipient(address, rcpt.notify, rcpt.orcpt)

    async def _full_mailbox(self, users: Sequence[str], size: int) -> str | None:
        """The first of ``users`` whose quota ``size`` more bytes would pass, or None.

        RFC 9208 quota, answered 452 4.2.2 (a temporary failure: the sending server keeps
        the message and retries, so mail is never bounced at once for a full mailbox)."""
        full = await full_mailboxes(self.services.mail_store, users, size)
        if not full:
            return None
        _log.info("mailbox full", user=full[0], size=size)
        return full[0]

    def _remember(self, queue_id: str, address: str, resolution: Resolution) -> None:
        self._resolved[(queue_id, address)] = resolution
        while len(self._resolved) > MAX_REMEMBERED:  # abandoned transactions
            self._resolved.popitem(last=False)

    def _recall(self, envelope: Envelope) -> dict[str, Resolution]:
        known = {}
        for rcpt in envelope.recipients:
            resolution = self._resolved.pop((envelope.queue_id, rcpt.address), None)
            if resolution is not None:
                known[rcpt.address] = resolution
        return known

    # -- after DATA --------------------------------------------------------------------

    async def deliver(
        self, session: SessionInfo, envelope: Envelope, message: SpooledMessage, received: bytes
    ) -> Reply:
        if session.user is not None:
            rejection = await self._check_from(session, envelope, message)
            inbound = InboundResult(rejection, INBOX, b"")
        elif session.trusted:
            # A trusted-network client (printer, NAS, cron on the LAN) is ours: its mail
            # is not judged as a stranger's (no SPF/DMARC), nor by an owner it has not.
            inbound = InboundResult(None, INBOX, b"")
        else:
            inbound = await self._authenticate(session, envelope, message)
        if inbound.reply is not None:
            return inbound.reply
        route = self._route(envelope)
        targets: dict[str, LocalTarget] | None = None
        spam = self._spam_filter(session)
        if spam is not None:
            judged = await self._judge_spam(spam, session, envelope, message, inbound, route)
            if isinstance(judged, Reply):
                return judged
            targets = judged
        rewritten: Path | None = None
        parts: tuple[bytes | Path, ...] = message.parts
        stripped = self._strip_forged_results(message.head)
        if stripped is not None:
            parts, rewritten = await replace_head(message, stripped)
        accepted = Accepted(
            envelope.queue_id, envelope.sender, envelope.mail.envid, envelope.mail.ret,
            [inbound.headers + received, *parts], inbound.folder, route, targets,
        )  # fmt: skip
        try:
            return await self.commit(accepted)
        finally:
            if rewritten is not None:
                remove_later(rewritten)

    # -- spam ----------------------------------------------------------------------------

    def _spam_filter(self, session: SessionInfo) -> SpamFilter | None:
        """The filter, for strangers' mail only: a logged-in user's or a trusted network's
        mail is ours (as it skips SPF/DMARC)."""
        spam = self.services.spam
        if spam is None or not spam.enabled or session.user is not None or session.trusted:
            return None
        return spam

    async def _judge_spam(
        self,
        spam: SpamFilter,
        session: SessionInfo,
        envelope: Envelope,
        message: SpooledMessage,
        inbound: InboundResult,
        route: Route,
    ) -> dict[str, LocalTarget] | Reply | None:
        """Per-user targets with their verdicts, or the reply that refuses the message.
        A failure of the filter is logged and the message delivered as if unfiltered."""
        try:
            return await self._spam_targets(spam, session, envelope, message, inbound, route)
        except Exception:
            _spam_log.error("spam filter failed, delivering unfiltered",
                            queue_id=envelope.queue_id, exc_info=True)  # fmt: skip
            return None

    async def _spam_targets(
        self,
        spam: SpamFilter,
        session: SessionInfo,
        envelope: Envelope,
        message: SpooledMessage,
        inbound: InboundResult,
        route: Route,
    ) -> dict[str, LocalTarget] | Reply | None:
        from pillarbox.spam.engine import JUNK as JUNK_VERDICT
        from pillarbox.spam.engine import REJECT, Message
        from pillarbox.spam.header import strip

        auth = auth_facts(inbound.verdict)
        if spam.settings.greylist and await spam.greylisted(
            session.peer_ip, envelope.sender, [r.address for r in envelope.recipients],
            auth.spf_pass_domain,
        ):  # fmt: skip
            _spam_log.info("greylisted", queue_id=envelope.queue_id, client=session.peer_ip,
                           **{"from": f"<{envelope.sender}>"})  # fmt: skip
            return GREYLISTED
        if not route.local:
            return None
        limit = None if spam.rspamd is not None else SPAM_SAMPLE
        sample = await read_sample(message, limit)
        head = strip(message.head)  # judged as it will be stored
        facts = Message(
            envelope.queue_id, envelope.sender, tuple(r.address for r in envelope.recipients),
            head, head + sample[len(message.head) :],
            await spam.client_facts(session.peer_ip, session.helo), auth.facts,
        )  # fmt: skip
        verdicts = await spam.judge(facts, list(route.local))
        targets = {}
        for user, verdict in verdicts.items():
            folder = JUNK if verdict.action in (JUNK_VERDICT, REJECT) else inbound.folder
            targets[user] = LocalTarget(user, folder, headers=verdict.header)
        note_verdicts(envelope, list(verdicts.values()), targets)
        if not route.remote and all(v.action == REJECT for v in verdicts.values()):
            score = min(v.score for v in verdicts.values())
            return SPAM_REJECTED.with_text(f"Message refused as spam (score {score:g})")
        return targets

    async def _check_from(
        self, session: SessionInfo, envelope: Envelope, message: SpooledMessage
    ) -> Reply | None:
        user = session.user
        assert user is not None

        def may_use(address: str) -> bool:
            return self.accounts.may_send_as(user, unquote_local_part(address), self.delimiter)

        if len(message.head) > 16384:  # the email package is slow on big (hostile) headers
            refusal = await asyncio.to_thread(judge_author, message.head, may_use)
        else:
            refusal = judge_author(message.head, may_use)
        if refusal is None:
            return None
        _log.info("author refused", queue_id=envelope.queue_id, user=user, reason=refusal.text)
        reply = codes.FROM_NOT_OWNED if refusal.spoof else codes.NO_FROM_HEADER
        return reply.with_text(refusal.text)

    def _strip_forged_results(self, head: bytes) -> bytes | None:
        lower = head.lower()
        stripped = head
        if b"authentication-results" in lower:
            from pillarbox.mailauth.inbound import strip_authentication_results

            stripped = strip_authentication_results(head, self.settings.hostname)
        if b"x-pillarbox-spam" in lower:
            # Only our filter's verdict may be in a stored message (a Sieve script trusts it).
            from pillarbox.spam.header import strip

            stripped = strip(stripped)
        return stripped if stripped != head else None

    async def _authenticate(
        self, session: SessionInfo, envelope: Envelope, message: SpooledMessage
    ) -> InboundResult:
        if not self.settings.mailauth.verify_inbound:
            return InboundResult(None, INBOX, b"")
        from pillarbox.mailauth.inbound import authenticate

        data: bytes | Path = message.path or message.read_all()
        try:
            verdict = await authenticate(
                data,
                ip=session.peer_ip,
                helo=session.helo,
                mail_from=envelope.sender,
                # Looked up per message: a reload replaces it with one for the new [dns].
                resolver=self.services.resolver,
                authserv_id=self.settings.hostname,
            )
        except Exception:
            # A bug in a check must not lose mail: accept without a verdict, loudly.
            _log.error("mail authentication failed", queue_id=envelope.queue_id, exc_info=True)
            return InboundResult(None, INBOX, b"")
        # In the message's own log line (``dmarc=pass disposition=none``), as the spam
        # verdict is: a line of its own cost as much as the rules per message.
        envelope.notes.update(dmarc=verdict.dmarc.result, disposition=verdict.disposition)
        if verdict.temperror:
            envelope.notes["temperror"] = "True"
        if verdict.disposition == "reject" and self.settings.mailauth.dmarc_reject:
            return InboundResult(codes.POLICY_REJECTED, INBOX, b"")
        refusal = (
            spf_refusal(verdict, session.peer_ip) if self.settings.mailauth.spf_reject else None
        )
        if refusal is not None:
            _log.info("spf refused", queue_id=envelope.queue_id, client=session.peer_ip,
                      domain=verdict.spf.domain)  # fmt: skip
            return InboundResult(refusal, INBOX, b"")
        folder = JUNK if verdict.disposition in ("quarantine", "reject") else INBOX
        return InboundResult(None, folder, verdict.header, verdict)

    def _route(self, envelope: Envelope) -> Route:
        return self.delivery.route(
            [OutboundRecipient(r.address, r.notify, r.orcpt) for r in envelope.recipients],
            self._recall(envelope),
        )

    async def commit(self, accepted: Accepted) -> Reply:
        """Store or queue a message that passed the checks; the reply to its DATA. An
        intake worker's backend sends it to the main process, which runs this."""
        route = accepted.route
        # The size is known now: a recipient the message would take over quota makes the
        # whole message wait (one DATA reply for all; the sender retries, nothing bounces).
        size = sum(_part_size(p) for p in accepted.message)
        full = await self._full_mailbox(list(route.local), size)
        if full is not None:
            return codes.MAILBOX_FULL.with_text(f"Mailbox full: {full}")
        if route.unknown:
            # Accepted at RCPT, gone since (user deleted meanwhile): the rest still goes.
            _log.warning("recipient vanished", queue_id=accepted.queue_id, to=route.unknown)
        try:
            await self.delivery.store(
                route, accepted.sender, accepted.message, queue_id=accepted.queue_id,
                folder=accepted.folder, envid=accepted.envid, ret=accepted.ret,
                targets=accepted.targets,
            )  # fmt: skip
        except SieveRejected as exc:
            # RFC 5429 §2.1: the recipients' scripts refused it; say so at the protocol.
            return codes.POLICY_REJECTED.with_text(_reject_text(exc.reason))
        except QueueUnavailable:
            return codes.OUTBOUND_UNAVAILABLE
        except DeliveryError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                return codes.STORAGE_FULL
            return codes.LOCAL_ERROR
        return codes.MESSAGE_ACCEPTED.with_text(f"OK: queued as {accepted.queue_id}")


def _part_size(part: bytes | Path) -> int:
    return len(part) if isinstance(part, bytes) else part.stat().st_size


def note_verdicts(envelope: Envelope, verdicts: list[Any], targets: dict[str, LocalTarget]) -> None:
    """The verdicts in the log: the first recipient's in the message's own line
    (``spam=6 verdict=junk folder=Junk rules=...``), each further recipient whose verdict
    differs in a line of its own (its learned rules differ); a log line costs about as
    much as the rules themselves, so the common one-recipient case adds none."""

    def fields(verdict: Any) -> dict[str, str]:
        rules = " ".join(f"{h.name}({h.points:g})" for h in verdict.hits) or "none"
        return {"spam": f"{verdict.score:g}", "verdict": verdict.action,
                "folder": targets[verdict.user].folder, "engine": verdict.engine,
                "rules": rules}  # fmt: skip

    first = fields(verdicts[0])
    envelope.notes.update(first)
    if len(verdicts) > 1:
        envelope.notes["spam_user"] = verdicts[0].user
    for verdict in verdicts[1:]:
        other = fields(verdict)
        if other != first:
            _spam_log.info("spam", queue_id=envelope.queue_id, user=verdict.user, **other)


@dataclass(frozen=True)
class SpamAuth:
    facts: Any  # pillarbox.spam.rules.AuthFacts
    spf_pass_domain: str  # the envelope domain SPF passed for ("" when it did not)


def auth_facts(verdict: AuthVerdict | None) -> SpamAuth:
    """The mail authentication verdict as the spam rules' plain facts."""
    from pillarbox.spam.rules import AuthFacts

    if verdict is None:
        return SpamAuth(AuthFacts(), "")
    facts = AuthFacts(
        spf=verdict.spf.result if verdict.spf.domain else verdict.spf_helo.result,
        dkim=tuple((d.result, d.domain) for d in verdict.dkim),
        dmarc=verdict.dmarc.result,
        dmarc_disposition=verdict.disposition,
        arc=verdict.arc.result,
    )
    passed = verdict.spf.domain if verdict.spf.result == "pass" else ""
    return SpamAuth(facts, passed)


async def read_sample(message: SpooledMessage, limit: int | None) -> bytes:
    """The first ``limit`` bytes of the message (all of it for None)."""
    if message.path is None:
        data = message.read_all()
        return data if limit is None else data[:limit]
    path = message.path
    return await asyncio.to_thread(_read_prefix, path, limit)


def _read_prefix(path: Path, limit: int | None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def _reject_text(reason: str) -> str:
    """A Sieve reject reason as one line of an SMTP reply (printable ASCII, bounded)."""
    line = " ".join(reason.split())
    line = "".join(ch if " " <= ch <= "~" else "?" for ch in line)[:200]
    return line or "rejected by the recipient's filter"


async def replace_head(
    message: SpooledMessage, head: bytes
) -> tuple[tuple[bytes | Path, ...], Path | None]:
    """The message with its header section replaced; a new spool file when it had one."""
    if message.path is None:
        data = message.read_all()
        return (head, data[len(message.head) :]), None
    target = message.path.with_name(message.path.name + ".h")
    await asyncio.to_thread(_copy_with_head, message.path, len(message.head), head, target)
    return (target,), target


def _copy_with_head(source: Path, skip: int, head: bytes, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(head)
        src.seek(skip)
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.chmod(target, 0o600)

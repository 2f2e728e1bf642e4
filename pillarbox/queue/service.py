"""The outbound queue component: enqueue (with DKIM signing), attempts, bounces, control.

``OutboundQueue`` is both the component app.py starts and the ``QueueService`` other
components find in ``services.queue``. The SQLite work runs on one dedicated thread
(the store is not thread-safe and commits fsync), spool writes on the default thread pool,
so the event loop never waits on the disk.

Signing: a message is DKIM-signed at enqueue, before any attempt, when its From domain is
one of ours and the envelope sender is ours too (or the null sender of our own bounces) —
so forwarded mail that merely claims one of our domains in From is not signed by us.

Reports: an outcome that calls for a DSN is committed with the recipient's state (column
``dsn``) and cleared only after the delivery service accepted the report, so a crash in
between sends the report again rather than never (a duplicate DSN, not a lost one).

Retries: a deferred recipient waits ``retry_initial`` doubling per attempt up to
``retry_max``, with ±20 % jitter so a destination that was down does not get every message
back at the same second; the last try is at ``queue_lifetime`` and then the recipient fails
with 4.4.7. A delay warning (RFC 3461 DELAY) goes out once per recipient after
``delay_warning``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import random
import re
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.control import ControlError, ControlServer
from pillarbox.core.address import AddressError, normalize_domain
from pillarbox.core.ids import new_queue_id
from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth import keys as dkim_keys
from pillarbox.mailauth.signing import SigningError, sign_async
from pillarbox.metrics import registry as metrics
from pillarbox.queue import dsn as dsnlib
from pillarbox.queue.api import NOTIFY_KEYWORDS, RET_KEYWORDS, OutboundRecipient, QueueError
from pillarbox.queue.downgrade import strip_leading_signatures, to_7bit
from pillarbox.queue.mtasts import PolicyFetcher
from pillarbox.queue.remote import (
    DEFERRED,
    FAILED,
    SENT,
    RecipientResult,
    RemoteDelivery,
    Slot,
    client_context,
)
from pillarbox.queue.routing import parse_literal
from pillarbox.queue.runner import Job, Runner
from pillarbox.queue.store import (
    DSN_DELAYED,
    DSN_FAILED,
    DSN_RELAYED,
    QUEUED,
    Message,
    Outcome,
    QueueStore,
    Recipient,
    is_queue_id,
)
from pillarbox.queue.store import FAILED as STATE_FAILED
from pillarbox.queue.store import SENT as STATE_SENT
from pillarbox.store.accounts import Accounts
from pillarbox.store.maildir import deliver as maildir_deliver
from pillarbox.store.maildir import user_maildir

_log = log.get("queue")
T = TypeVar("T")

ORPHAN_AGE = 600.0  # a spool file without rows this old is from a crashed enqueue
MAX_SHOW_HEADER = 8192


def backoff(attempts: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Seconds to the next try after ``attempts`` attempts: doubling, capped, ±20 % jitter."""
    base = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return max(1.0, min(maximum, base * rng.uniform(0.8, 1.2)))


def from_domains(message: bytes) -> list[str]:
    """Domains of the From header's addresses (first header block only)."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    unfolded = head.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ")
    values = [
        line[5:].decode("utf-8", errors="replace")
        for line in unfolded.split(b"\n")
        if line[:5].lower() == b"from:"
    ]
    return [
        addr.rpartition("@")[2].lower().rstrip(">")
        for _, addr in email.utils.getaddresses(values)
        if "@" in addr
    ]


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


class QueueServices(Protocol):
    """The app's services the queue reads and provides (``app.Services`` has them)."""

    queue: OutboundQueue | None

    @property
    def resolver(self) -> Resolver: ...

    @property
    def delivery(self) -> ReportDelivery | None: ...


class QueueContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def accounts(self) -> Accounts: ...

    @property
    def control(self) -> ControlServer: ...

    @property
    def services(self) -> QueueServices: ...


class OutboundQueue:
    """The queue component and service (see the module docstring)."""

    name = "queue"

    def __init__(self, ctx: QueueContext) -> None:
        self.ctx = ctx
        self.settings: Settings = ctx.settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        self.store: QueueStore | None = None
        self.rng = random.SystemRandom()
        self.resolver: Resolver = ctx.services.resolver
        self.remote = self._make_remote(self.settings)
        self.runner = self._make_runner(self.settings)
        self._report_lock = asyncio.Lock()
        self._last_orphan_sweep = time.monotonic()  # start() sweeps once itself

    # -- component ------------------------------------------------------------------------

    def listeners(self) -> list[Any]:
        return []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(self._executor, QueueStore, self.settings.queue_dir)
        interrupted = await self._db(lambda s: s.close_interrupted_attempts())
        orphans = await self._db(lambda s: s.remove_orphans(ORPHAN_AGE))
        if interrupted or orphans:
            _log.warning("recovered", interrupted_attempts=interrupted, orphans=len(orphans))
        control = self.ctx.control
        control.register("queue.list", self._control_list)
        control.register("queue.show", self._control_show)
        control.register("queue.flush", self._control_flush)
        control.register("queue.delete", self._control_delete)
        self.runner.start()
        _log.info("queue started", queue_dir=str(self.settings.queue_dir))

    async def stop(self) -> None:
        await self.runner.stop(grace=float(self.settings.limits.shutdown_grace))
        if self.store is not None:
            await self._db(lambda s: s.close())
        self._executor.shutdown(wait=True)

    async def reload(self, ctx: QueueContext) -> None:
        """New delivery settings apply from the next attempt; ``max_concurrency`` needs a
        restart (it sizes a semaphore that connections in flight hold). The resolver is the
        one app.py rebuilt from the new ``[dns]``."""
        self.settings = ctx.settings
        self.resolver = ctx.services.resolver
        self.remote = self._make_remote(self.settings)
        d = self.settings.delivery
        self.runner.per_destination = d.max_concurrency_per_destination
        self.runner.scan_interval = float(d.queue_scan_interval)
        self.runner.wake()

    def _make_remote(self, settings: Settings) -> RemoteDelivery:
        sts = PolicyFetcher(
            self.resolver,
            client_context(True, settings.tls.ca),
            lambda domain: self._db(lambda s: s.sts_get(domain)),
            lambda d, pid, text, exp: self._db(lambda s: s.sts_put(d, pid, text, exp)),
            port=settings.delivery.mta_sts_port,
            timeout=min(10.0, float(settings.delivery.connect_timeout)),
        )
        return RemoteDelivery(
            settings, self.resolver, sts, rng=self.rng, downgrade=self._downgraded
        )

    def _make_runner(self, settings: Settings) -> Runner:
        d = settings.delivery
        return Runner(
            due=lambda now: self._db(lambda s: s.due(now)),
            next_due=lambda now: self._db(lambda s: s.next_due(now)),
            run_job=self._run_job,
            housekeeping=self._housekeeping,
            destination_of=lambda domain: self.remote.destination_key(domain),
            max_concurrency=d.max_concurrency,
            per_destination=d.max_concurrency_per_destination,
            scan_interval=float(d.queue_scan_interval),
        )

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(store, *args)`` on the DB thread."""
        loop = asyncio.get_running_loop()
        store = self.store
        if store is None:
            raise QueueError("the queue is not started")
        return await loop.run_in_executor(self._executor, fn, store, *args)

    # -- enqueue --------------------------------------------------------------------------

    async def enqueue(
        self,
        sender: str,
        recipients: Sequence[OutboundRecipient],
        message: Sequence[bytes | Path],
        *,
        envid: str | None = None,
        ret: str | None = None,
        queue_id: str | None = None,
    ) -> str:
        _check_enqueue_args(sender, recipients, envid, ret)
        sender = _a_label_domain(sender) if sender else sender
        recipients = [
            dataclasses.replace(r, address=_a_label_domain(r.address)) for r in recipients
        ]
        store = self.store
        if store is None:
            raise QueueError("the queue is not started")
        qid = queue_id or new_queue_id()
        if not is_queue_id(qid):
            raise QueueError(f"bad queue id {qid!r}")
        parts, signed = await self._signed(qid, sender, list(message))
        try:
            size, eightbit = await asyncio.to_thread(store.write_spool, qid, parts)
        except FileExistsError:
            raise QueueError(f"queue id {qid} is already in use") from None
        except OSError as exc:
            _log.error("spool write failed", queue_id=qid, error=str(exc))
            raise QueueError(f"cannot write the queue file: {exc}") from exc
        try:
            await self._db(
                lambda s: s.add_message(
                    qid, sender, recipients, size=size, eightbit=eightbit, envid=envid, ret=ret
                )
            )
        except Exception as exc:
            store.message_path(qid).unlink(missing_ok=True)
            _log.error("queue commit failed", queue_id=qid, error=str(exc))
            raise QueueError(f"cannot commit the queue entry: {exc}") from exc
        _log.info(
            "queued",
            queue_id=qid,
            sender=f"<{sender}>",
            recipients=len(recipients),
            size=size,
            signed=signed,
        )
        self.runner.wake()
        return qid

    async def _signed(
        self, qid: str, sender: str, parts: list[bytes | Path]
    ) -> tuple[list[bytes | Path], bool]:
        """``parts`` with DKIM-Signature fields in front when the message is ours to sign;
        and whether it was signed."""
        if not self.settings.mailauth.sign_outbound:
            return parts, False
        ours = set(self.settings.domains)
        sender_domain = sender.rpartition("@")[2].lower()
        if sender and sender_domain not in ours:
            return parts, False
        data = await asyncio.to_thread(_join_parts, parts)
        domain = next((d for d in from_domains(data) if d in ours), None)
        if domain is None:
            return [data], False
        try:
            keys = await asyncio.to_thread(dkim_keys.active_keys, self.settings.keys_dir, domain)
            if not keys:
                _log.warning("no dkim key, sending unsigned", queue_id=qid, domain=domain)
                return [data], False
            signature = await sign_async(data, domain, keys)
        except (SigningError, OSError, ValueError) as exc:
            _log.warning("dkim signing failed", queue_id=qid, domain=domain, error=str(exc))
            return [data], False
        return [signature, data], True

    async def _downgraded(self, message: Message, path: Path) -> Path:
        """A 7-bit copy of a queued message for a peer without 8BITMIME, DKIM-signed again
        (the conversion changes the body our signature covered). Raises DowngradeError."""
        store = self.store
        assert store is not None
        original = await asyncio.to_thread(
            _read_limited, path, self.settings.delivery.max_message_size * 2
        )
        unsigned = strip_leading_signatures(original, self.settings.domains)
        converted = await asyncio.to_thread(to_7bit, unsigned)
        parts, _ = await self._signed(message.id, message.sender, [converted])
        target = store.tmp_dir / f"{message.id}.7bit.{secrets.token_hex(4)}"
        await asyncio.to_thread(_write_parts, target, parts)
        return target

    # -- one attempt ----------------------------------------------------------------------

    async def _run_job(self, job: Job, slot: Slot) -> None:
        message = await self._db(lambda s: s.message(job.queue_id))
        if message is None:
            return  # deleted meanwhile
        wanted = set(job.recipient_ids)
        recipients = [
            r
            for r in await self._db(lambda s: s.recipients(job.queue_id))
            if r.id in wanted and r.state == QUEUED
        ]
        if not recipients:
            return
        path = await self._db(lambda s: s.message_path(job.queue_id))
        attempt_id = await self._db(
            lambda s: s.begin_attempt(job.queue_id, job.domain, [r.id for r in recipients])
        )
        started = time.time()
        try:
            results = await self.remote.deliver(message, path, recipients, slot)
        except FileNotFoundError:
            await self._db(lambda s: s.finish_attempt(attempt_id, [], "message file vanished"))
            return
        except Exception as exc:
            # A bug must not lose mail nor hot-loop: defer everything with backoff.
            _log.error("attempt crashed", queue_id=job.queue_id, exc_info=True)
            results = [
                RecipientResult(r, DEFERRED, f"4.3.0 internal error: {exc}") for r in recipients
            ]
        outcomes = [self._decide(message, result) for result in results]
        detail = "; ".join(f"<{r.recipient.address}> {r.kind}: {r.reply}" for r in results)
        await self._db(lambda s: s.finish_attempt(attempt_id, outcomes, detail))
        for result, outcome in zip(results, outcomes, strict=True):
            self._log_outcome(message, result, outcome, time.time() - started)
        await self._report(job.queue_id)

    def _decide(self, message: Message, result: RecipientResult) -> Outcome:
        r, now = result.recipient, time.time()
        d = self.settings.delivery
        if result.kind == SENT:
            relayed = "SUCCESS" in r.notify and not result.peer_dsn
            return Outcome(r.id, STATE_SENT, result.reply, result.remote_mta,
                           dsn=DSN_RELAYED if relayed else None)  # fmt: skip
        if result.kind == FAILED:
            wants = dsnlib.wants_report(r.notify, "failed")
            return Outcome(r.id, STATE_FAILED, result.reply, result.remote_mta,
                           dsn=DSN_FAILED if wants else None)  # fmt: skip
        expires = message.created + d.queue_lifetime
        if now >= expires:
            reply = f"4.4.7 message expired in the queue; last error: {result.reply}"
            wants = dsnlib.wants_report(r.notify, "failed")
            return Outcome(r.id, STATE_FAILED, reply, result.remote_mta,
                           dsn=DSN_FAILED if wants else None)  # fmt: skip
        retry_at = min(
            expires, now + backoff(r.attempts + 1, d.retry_initial, d.retry_max, self.rng)
        )
        warn = (
            not r.warned
            and d.delay_warning > 0
            and now - message.created >= d.delay_warning
            and dsnlib.wants_report(r.notify, "delayed")
        )
        return Outcome(r.id, QUEUED, result.reply, result.remote_mta, next_attempt=retry_at,
                       dsn=DSN_DELAYED if warn else None, warned=warn)  # fmt: skip

    def _log_outcome(
        self, message: Message, result: RecipientResult, outcome: Outcome, elapsed: float
    ) -> None:
        status = {STATE_SENT: "sent", STATE_FAILED: "bounced", QUEUED: "deferred"}[outcome.state]
        metrics.DELIVERIES.labels("remote", "delivered" if status == "sent" else status).inc()
        if outcome.state == STATE_SENT:
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - message.created))
        fields: dict[str, Any] = {
            "queue_id": message.id,
            "to": f"<{result.recipient.address}>",
            "relay": result.remote_mta or "none",
            "delay": f"{time.time() - message.created:.1f}",
            "attempt_time": f"{elapsed:.2f}",
            "reply": outcome.reply,
        }
        if outcome.state == QUEUED:
            fields["retry_in"] = f"{outcome.next_attempt - time.time():.0f}"
        (_log.warning if outcome.state == STATE_FAILED else _log.info)(status, **fields)

    # -- DSNs -----------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Periodic: reports left pending (crash, delivery service down) and, every ten
        minutes, spool files left by an enqueue that crashed before its commit."""
        now = time.monotonic()
        if now - self._last_orphan_sweep >= ORPHAN_AGE:
            self._last_orphan_sweep = now
            removed = await self._db(lambda s: s.remove_orphans(ORPHAN_AGE))
            if removed:
                _log.warning("orphan spool files removed", count=len(removed))
        await self._send_pending_reports()

    async def _send_pending_reports(self) -> None:
        for queue_id in await self._db(lambda s: s.pending_reports()):
            if not self.runner.in_flight(queue_id):
                await self._report(queue_id)

    async def _report(self, queue_id: str) -> None:
        """Send the DSNs pending for a message, then retire it if nothing is left to do.

        Serialised: two jobs of one message (two domains) finishing together must not both
        send the same pending report."""
        async with self._report_lock:
            await self._report_unlocked(queue_id)

    async def _report_unlocked(self, queue_id: str) -> None:
        message = await self._db(lambda s: s.message(queue_id))
        if message is None:
            return
        recipients = await self._db(lambda s: s.recipients(queue_id))
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
            await self._db(lambda s, ids=ids: s.clear_dsn(ids))
        if await self._db(lambda s: s.retire_if_done(queue_id)):
            _log.info("removed", queue_id=queue_id)

    async def _send_dsn(self, message: Message, recipients: list[Recipient], action: str) -> None:
        store = self.store
        assert store is not None
        path = store.message_path(message.id)
        limit = self.settings.delivery.max_message_size
        original = await asyncio.to_thread(_read_limited, path, limit)
        d = self.settings.delivery
        reports = [
            dsnlib.RecipientReport(
                address=r.address,
                action=action,
                status=_status(action, r.last_reply or ""),
                diagnostic=_diagnostic(r.last_reply),
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
        await self._deliver_report(message.sender, report, dsn_id)
        _log.info(
            "dsn sent",
            queue_id=message.id,
            action=action,
            to=f"<{message.sender}>",
            dsn_queue_id=dsn_id,
            recipients=len(recipients),
        )

    async def _deliver_report(self, to: str, report: bytes, dsn_id: str) -> None:
        """Hand a DSN (null sender) to the delivery service: local INBOX or the queue."""
        delivery = self.ctx.services.delivery
        if delivery is not None:
            outcome = await delivery.deliver("", [to], [report], queue_id=dsn_id)
            if "unknown" in outcome.values():
                # The local sender no longer exists: the report has nowhere to go.
                _log.warning("dsn undeliverable", to=f"<{to}>", queue_id=dsn_id)
            return
        # No delivery service wired (queue used alone): route it ourselves.
        delimiter = self.settings.delivery.recipient_delimiter
        resolution = await asyncio.to_thread(self.ctx.accounts.resolve, to, delimiter)
        for user in resolution.local_users:
            maildir = user_maildir(self.settings.mail_dir, user)
            await asyncio.to_thread(maildir_deliver, maildir, [report])
        if not resolution.found:
            _log.warning("dsn recipient unknown, sending it out", to=f"<{to}>", queue_id=dsn_id)
        if resolution.remote or not resolution.found:
            targets = list(resolution.remote) if resolution.found else [to]
            await self.enqueue(
                "", [OutboundRecipient(a) for a in targets], [report], queue_id=dsn_id
            )

    # -- control socket -------------------------------------------------------------------

    async def _control_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._db(list_entries)

    async def _control_show(self, params: dict[str, Any]) -> dict[str, Any]:
        queue_id = str(params.get("id", ""))
        entry = await self._db(lambda s: show_entry(s, queue_id))
        if entry is None:
            raise ControlError(f"no such message in the queue: {queue_id}")
        return entry

    async def _control_flush(self, params: dict[str, Any]) -> int:
        queue_id = str(params["id"]) if params.get("id") else None
        if queue_id is not None and await self._db(lambda s: s.message(queue_id)) is None:
            raise ControlError(f"no such message in the queue: {queue_id}")
        count = await self._db(lambda s: s.flush(queue_id))
        self.remote.resume()
        _log.info("flush", queue_id=queue_id or "all", recipients=count)
        self.runner.wake()
        return count

    async def _control_delete(self, params: dict[str, Any]) -> bool:
        queue_id = str(params.get("id", ""))
        if not await self._db(lambda s: s.delete(queue_id)):
            raise ControlError(f"no such message in the queue: {queue_id}")
        _log.info("deleted by admin", queue_id=queue_id)
        return True


# ---------------------------------------------------------------------------------------
# Helpers shared with the CLI (which calls them on a store it opens itself)


def list_entries(store: QueueStore) -> list[dict[str, Any]]:
    out = []
    for m in store.messages():
        recipients = store.recipients(m.id)
        out.append(
            {
                "id": m.id,
                "sender": m.sender,
                "created": m.created,
                "size": m.size,
                "recipients": [_recipient_dict(r) for r in recipients],
            }
        )
    return out


def show_entry(store: QueueStore, queue_id: str) -> dict[str, Any] | None:
    m = store.message(queue_id) if is_queue_id(queue_id) else None
    if m is None:
        return None
    header = b""
    with contextlib.suppress(OSError):
        header = dsnlib.header_block(_read_limited(store.message_path(queue_id), MAX_SHOW_HEADER))
    return {
        "id": m.id,
        "sender": m.sender,
        "created": m.created,
        "size": m.size,
        "envid": m.envid,
        "ret": m.ret,
        "eightbit": m.eightbit,
        "smtputf8": m.smtputf8,
        "recipients": [_recipient_dict(r) for r in store.recipients(queue_id)],
        "attempts": store.attempts(queue_id),
        "header": header.decode("utf-8", errors="replace"),
    }


def _recipient_dict(r: Recipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "state": r.state,
        "attempts": r.attempts,
        "next_attempt": r.next_attempt,
        "last_reply": r.last_reply,
        "remote_mta": r.remote_mta,
    }


def _check_enqueue_args(
    sender: str, recipients: Sequence[OutboundRecipient], envid: str | None, ret: str | None
) -> None:
    """Everything here ends up on an SMTP command line: refuse what could break out of it
    (CR, LF, spaces, angle brackets) however the caller validated it."""
    if not recipients:
        raise QueueError("no recipients")
    if sender and not _is_mailbox(sender):
        raise QueueError(f"bad sender address {sender!r}")
    if ret is not None and ret not in RET_KEYWORDS:
        raise QueueError(f"bad RET value {ret!r}")
    if envid is not None and not _is_xtext(envid):
        raise QueueError(f"bad ENVID value {envid!r}")
    for r in recipients:
        if not _is_mailbox(r.address):
            raise QueueError(f"bad recipient address {r.address!r}")
        if not r.notify <= NOTIFY_KEYWORDS or ("NEVER" in r.notify and len(r.notify) > 1):
            raise QueueError(f"bad NOTIFY for {r.address}: {sorted(r.notify)}")
        if r.orcpt is not None and not (_is_xtext(r.orcpt) and ";" in r.orcpt):
            raise QueueError(f"bad ORCPT for {r.address}: {r.orcpt!r}")


def _a_label_domain(address: str) -> str:
    """``local@domain`` with the domain in IDNA A-label form (RFC 5890), so that only a
    non-ASCII local part makes a message need SMTPUTF8 and routing keys are canonical."""
    local, _, domain = address.rpartition("@")
    if parse_literal(domain) is not None:
        return address
    try:
        return f"{local}@{normalize_domain(domain)}"
    except AddressError as exc:
        raise QueueError(f"bad domain in {address!r}: {exc}") from None


def _is_mailbox(address: str) -> bool:
    return (
        "@" in address
        and 0 < len(address) <= 998
        and not any(c in address for c in "<> ")
        and all(ord(c) > 31 and ord(c) != 127 for c in address)
    )


def _is_xtext(value: str) -> bool:
    """RFC 3461 §4: xtext is printable ASCII without "=" (escaped as +XX) and no spaces."""
    return 0 < len(value) <= 500 and all(33 <= ord(c) <= 126 and c != "=" for c in value)


def _join_parts(parts: Sequence[bytes | Path]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.read_bytes() for p in parts)


def _write_parts(target: Path, parts: Sequence[bytes | Path]) -> None:
    # A working copy for one attempt: no fsync (it is recreated if lost).
    with open(target, "wb") as f:
        for part in parts:
            f.write(part if isinstance(part, bytes) else part.read_bytes())


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _status(action: str, reply: str) -> str:
    status = dsnlib.status_of(reply, permanent=action == DSN_FAILED)
    if action == DSN_FAILED and status.startswith("2"):
        return "5.0.0"
    if action in (DSN_RELAYED,):
        return "2.0.0"
    if action == DSN_DELAYED and not status.startswith("4"):
        return "4.0.0"
    return status


def _diagnostic(reply: str | None) -> str | None:
    """The remote server's reply for the DSN's Diagnostic-Code (RFC 3464 §2.3.6), found at
    the start of the recorded reply or after "last error:" (expiry); our own texts (which
    start with a status code, not a reply code) give none."""
    if not reply:
        return None
    text = reply.rpartition("last error: ")[2]
    if re.match(r"^[2-5]\d\d[ -]", text):
        return text
    return None


def make_queue(ctx: QueueContext) -> OutboundQueue:
    """Component factory for app.py; also registers the service for other components."""
    queue = OutboundQueue(ctx)
    ctx.services.queue = queue
    return queue

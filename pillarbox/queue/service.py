"""The outbound queue component: enqueue, attempts and their outcomes, housekeeping.

``OutboundQueue`` is both the component app.py starts and the ``QueueService`` other
components find in ``services.queue``. The SQLite work runs on one dedicated thread
(the store is not thread-safe and commits fsync), spool writes on the default thread pool,
so the event loop never waits on the disk. Its parts live beside it: DKIM signing at
enqueue and the 7-bit copy in :mod:`~pillarbox.queue.signing`, bounces and other reports
in :mod:`~pillarbox.queue.reports`, the control-socket methods in
:mod:`~pillarbox.queue.control`.

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
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.control import ControlServer
from pillarbox.core.address import AddressError, normalize_domain
from pillarbox.core.ids import new_queue_id
from pillarbox.dns.resolver import Resolver
from pillarbox.metrics import registry as metrics
from pillarbox.queue import dsn as dsnlib
from pillarbox.queue import signing
from pillarbox.queue.api import NOTIFY_KEYWORDS, RET_KEYWORDS, OutboundRecipient, QueueError
from pillarbox.queue.control import QueueControl
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
from pillarbox.queue.reports import ReportContext, Reports, ReportServices
from pillarbox.queue.routing import parse_literal
from pillarbox.queue.runner import Job, Runner
from pillarbox.queue.store import (
    DSN_DELAYED,
    DSN_FAILED,
    DSN_RELAYED,
    QUEUED,
    Message,
    Outcome,
    QueueStoreBase,
    Recipient,
    is_queue_id,
    open_store,
)
from pillarbox.queue.store import FAILED as STATE_FAILED
from pillarbox.queue.store import SENT as STATE_SENT

_log = log.get("queue")
T = TypeVar("T")

ORPHAN_AGE = 600.0  # a spool file without rows this old is from a crashed enqueue


def backoff(attempts: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Seconds to the next try after ``attempts`` attempts: doubling, capped, ±20 % jitter."""
    base = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return max(1.0, min(maximum, base * rng.uniform(0.8, 1.2)))


class QueueServices(ReportServices, Protocol):
    """The app's services the queue reads and provides (``app.Services`` has them)."""

    queue: OutboundQueue | None

    @property
    def resolver(self) -> Resolver: ...


class QueueContext(ReportContext, Protocol):
    @property
    def settings(self) -> Settings: ...

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
        self.store: QueueStoreBase | None = None
        self.rng = random.SystemRandom()
        self.resolver: Resolver = ctx.services.resolver
        self.remote = self._make_remote(self.settings)
        self.runner = self._make_runner(self.settings)
        self.reports = Reports(ctx, self.settings, self._db, self, self.runner.in_flight)
        self.control = QueueControl(self._db, self._flushed)
        self._last_orphan_sweep = time.monotonic()  # start() sweeps once itself
        self._heartbeat: asyncio.Task[None] | None = None

    # -- component ------------------------------------------------------------------------

    def listeners(self) -> list[Any]:
        return []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(self._executor, self._open_store)
        if self.store.shared:
            # Claims a previous run under the same node_id left (killed): ours to redo.
            await self._db(lambda s: s.release_claims())
            self._heartbeat = asyncio.create_task(self._renew_claims(), name="queue-leases")
        interrupted = await self._db(lambda s: s.close_interrupted_attempts())
        orphans = await self._db(lambda s: s.remove_orphans(ORPHAN_AGE))
        if interrupted or orphans:
            _log.warning("recovered", interrupted_attempts=interrupted, orphans=len(orphans))
        self.control.register(self.ctx.control)
        self.runner.start()
        _log.info("queue started", queue_dir=str(self.settings.queue_dir))

    async def stop(self) -> None:
        await self.runner.stop(grace=float(self.settings.limits.shutdown_grace))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.store is not None:
            if self.store.shared:
                # Another node may take what this one had claimed at once, not after the lease.
                await self._db(lambda s: s.release_claims())
            await self._db(lambda s: s.close())
        self._executor.shutdown(wait=True)

    async def reload(self, ctx: QueueContext) -> None:
        """New delivery settings apply from the next attempt; ``max_concurrency`` needs a
        restart (it sizes a semaphore that connections in flight hold). The resolver is the
        one app.py rebuilt from the new ``[dns]``."""
        self.settings = self.reports.settings = ctx.settings
        self.resolver = ctx.services.resolver
        self.remote = self._make_remote(self.settings)
        d = self.settings.delivery
        self.runner.per_destination = d.max_concurrency_per_destination
        self.runner.scan_interval = float(d.queue_scan_interval)
        self.runner.wake()

    def _open_store(self) -> QueueStoreBase:
        store = open_store(self.settings)
        assert store is not None  # only a read-only open finds nothing
        return store

    async def _renew_claims(self) -> None:
        """Shared store: keep the leases of the jobs this node holds alive, every third of
        ``[store] queue_lease`` (so one missed renewal still leaves a third to spare)."""
        while True:
            await asyncio.sleep(float(self.settings.store.queue_lease) / 3)
            held = self.runner.held()
            try:
                await self._db(_renew, held)
            except Exception as exc:
                # The database away: the next turn tries again; past the lease, other
                # nodes may take the claims over (a duplicate at worst, never a loss).
                _log.warning("claim renewal failed", error=str(exc))

    def _flushed(self) -> None:
        """An admin flushed the queue: paused destinations get their chance at once."""
        self.remote.resume()
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
            due=self._due,
            next_due=lambda now: self._db(lambda s: s.next_due(now)),
            run_job=self._run_job,
            housekeeping=self._housekeeping,
            destination_of=lambda domain: self.remote.destination_key(domain),
            max_concurrency=d.max_concurrency,
            per_destination=d.max_concurrency_per_destination,
            scan_interval=float(d.queue_scan_interval),
        )

    async def _due(self, now: float) -> list[Recipient]:
        if self.store is not None and self.store.shared:
            # Before taking over a dead node's expired claims, close its open attempts
            # (it never comes back under its name): cheap, only open attempts are looked at.
            closed = await self._db(lambda s: s.close_interrupted_attempts())
            if closed:
                _log.warning("recovered", interrupted_attempts=closed)
        return await self._db(lambda s: s.due(now))

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
        parts, signed = await signing.signed(self.settings, qid, sender, list(message))
        try:
            size, eightbit = await asyncio.to_thread(store.write_spool, qid, parts)
        except FileExistsError:
            raise QueueError(f"queue id {qid} is already in use") from None
        except OSError as exc:
            _log.error("spool write failed", queue_id=qid, error=str(exc))
            raise QueueError(f"cannot write the queue file: {exc}") from exc
        try:
            claimed = await self._db(
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
        self.runner.take(claimed)
        return qid

    async def _downgraded(self, message: Message, path: Path) -> Path:
        """For RemoteDelivery: a re-signed 7-bit copy (see :mod:`pillarbox.queue.signing`)."""
        store = self.store
        assert store is not None
        return await signing.downgraded(
            self.settings, message.id, message.sender, path, store.tmp_dir
        )

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
        if recipients and self.store is not None and self.store.shared:
            # Our lease may have run out and another node taken the claim (the database
            # unreachable meanwhile, a long pause): leave those recipients to it.
            ours = set(await self._db(lambda s: s.still_claimed([r.id for r in recipients])))
            recipients = [r for r in recipients if r.id in ours]
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
        await self.reports.report(job.queue_id)

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

    # -- housekeeping ---------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Periodic: reports left pending (crash, delivery service down) and, every ten
        minutes, spool files left by an enqueue that crashed before its commit."""
        now = time.monotonic()
        if now - self._last_orphan_sweep >= ORPHAN_AGE:
            self._last_orphan_sweep = now
            removed = await self._db(lambda s: s.remove_orphans(ORPHAN_AGE))
            if removed:
                _log.warning("orphan spool files removed", count=len(removed))
        await self.reports.send_pending()


def _renew(store: QueueStoreBase, held: frozenset[tuple[str, str]]) -> int:
    return store.renew_claims(held)


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


def make_queue(ctx: QueueContext) -> OutboundQueue:
    """Component factory for app.py; also registers the service for other components."""
    queue = OutboundQueue(ctx)
    ctx.services.queue = queue
    return queue

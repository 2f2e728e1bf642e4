"""An SMTP intake worker process (see :mod:`pillarbox.delivery.intake`).

Started by the main process as ``python -m pillarbox.delivery.intake_worker CHANNEL_FD
NAME=FD...``: the channel to the main process and the listening sockets it bound for
this worker. The settings come as the channel's first frame. The worker builds what the
port-25 sessions need (accounts, resolver, spam filter, TLS for STARTTLS, the SMTP
backend) and serves until SIGTERM or until the channel closes.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pillarbox import log
from pillarbox.auth.sasl import Credentials
from pillarbox.config import Settings
from pillarbox.delivery.channel import Channel, ChannelClosed
from pillarbox.delivery.intake import WorkerStart
from pillarbox.delivery.local import LocalStore
from pillarbox.delivery.policy import Accepted, SmtpBackend
from pillarbox.delivery.service import DeliveryService
from pillarbox.delivery.wiring import WithoutServer
from pillarbox.dns.resolver import Resolver
from pillarbox.metrics import registry as metrics
from pillarbox.net.listener import (
    ConnectionLimits,
    Listeners,
    ListenerSpec,
    ProxySettings,
    name_connections,
)
from pillarbox.smtp import codes
from pillarbox.smtp.codes import Reply
from pillarbox.smtp.server import BUSY_REPLY, LISTENERS, SmtpServer
from pillarbox.store.accounts import Accounts, open_accounts
from pillarbox.tls.context import TlsProvider, quiet_bad_server_names

_log = log.get("intake")
COUNTS_INTERVAL = 1.0  # seconds between two reports of the counters to the main process


class IntakeBackend(SmtpBackend):
    """The SMTP backend of a worker: every check runs here; the commit of an accepted
    message, and the mailbox usage a quota check needs, are the main process's."""

    def __init__(self, settings: Settings, accounts: Accounts, services: WorkerServices,
                 channel: Channel, queue_available: bool):  # fmt: skip
        delivery = DeliveryService(
            accounts,
            LocalStore(WithoutServer()),
            WithoutServer(),
            delimiter=settings.delivery.recipient_delimiter,
            domains=settings.domains,
            hostname=settings.hostname,
        )  # fmt: skip: routing only: what is stored is stored by the main process
        super().__init__(settings, accounts, delivery, services)
        self.channel = channel
        self._queue_available = queue_available

    def queue_available(self) -> bool:
        return self._queue_available

    async def commit(self, accepted: Accepted) -> Reply:
        try:
            code, enhanced, text = await self.channel.ask("commit", accepted)
        except (ChannelClosed, RuntimeError) as exc:
            # Not stored, or not known to be: the client keeps the message and retries.
            _log.error("hand-over failed", queue_id=accepted.queue_id, reason=str(exc))
            return codes.LOCAL_ERROR
        return Reply(code, enhanced, text)


@dataclass
class RemoteQuota:
    """The quota check (``wiring.QuotaCheck``) of a worker: the limit from the accounts,
    as the main process's store reads it; the usage from the main process's index."""

    accounts: Accounts
    settings: Settings
    channel: Channel

    def quota_limit(self, user: str) -> int:
        return self.accounts.quota_of(user, self.settings.store.quota)

    async def usage(self, user: str) -> int:
        used: int = await self.channel.ask("usage", user)
        return used


@dataclass
class WorkerServices:
    """``wiring.InboundServices`` of a worker."""

    resolver: Resolver
    spam: Any  # SpamFilter | None (imported only when on, as the main process does)
    mail_store: RemoteQuota


@dataclass
class ChannelAdmission:
    """``net.listener.Admission``: the main process admits this worker's clients."""

    channel: Channel

    async def admit(self, listener: str, ip: str) -> str | None:
        refusal: str | None = await self.channel.ask("admit", (listener, ip))
        return refusal

    def release(self, listener: str, ip: str) -> None:
        self.channel.tell("release", (listener, ip))

    def replace(self, listener: str, ip: str, new_listener: str, new_ip: str) -> None:
        self.channel.tell("replace", (listener, ip, new_listener, new_ip))


class NoLogins:
    """Port 25 offers no AUTH (the submission ports stay in the main process)."""

    async def authenticate(self, credentials: Credentials, client: str) -> str | None:
        return None


class Worker:
    def __init__(self, sockets: Sequence[tuple[str, socket.socket]]):
        self.sockets = sockets
        self.started: asyncio.Future[WorkerStart] = asyncio.get_running_loop().create_future()
        self.stop_requested = asyncio.Event()
        self.backend: IntakeBackend | None = None
        self.services: WorkerServices | None = None
        self.accounts: Accounts | None = None
        self.server: SmtpServer | None = None
        self.listeners: Listeners | None = None

    async def handle(self, kind: str, payload: Any) -> Any:
        """The main process's notices."""
        if kind == "start" and not self.started.done():
            self.started.set_result(payload)
        elif kind == "accounts_changed" and self.accounts is not None:
            await asyncio.to_thread(self.accounts.forget_cached)
        elif kind == "spam_changed" and self.services is not None:
            if self.services.spam is not None:
                self.services.spam.forget_cached()
        elif kind == "settings":
            await self._reconfigure(payload)
        return None

    async def run(self, channel: Channel) -> None:
        reading = asyncio.get_running_loop().create_task(channel.run())
        reading.add_done_callback(lambda _: self.stop_requested.set())  # main process gone
        start = await self.started
        settings = start.settings
        name_connections(f"w{start.index}.")
        log.setup(settings.log_level)
        self.accounts = open_accounts(settings, follow=True)
        resolver = Resolver.from_settings(settings.dns)
        quota = RemoteQuota(self.accounts, settings, channel)
        services = self.services = WorkerServices(resolver, _spam_filter(settings, resolver), quota)
        self.backend = IntakeBackend(
            settings, self.accounts, services, channel, start.queue_available
        )
        tls = TlsProvider(settings.tls.cert, settings.tls.key)
        self.server = SmtpServer(settings, self.backend, NoLogins())
        self.listeners = Listeners(
            tls, ConnectionLimits(), proxy=_proxy(settings), admission=ChannelAdmission(channel)
        )
        for name, sock in self.sockets:
            host, port = sock.getsockname()[:2]
            _, tls_mode = LISTENERS[name]
            spec = ListenerSpec(name, host, port, tls_mode, self.server.handle, BUSY_REPLY)
            self.listeners.adopt(spec, sock)
        quiet_bad_server_names()
        await self.listeners.start()
        counts = metrics.CounterDeltas()
        reporting = asyncio.get_running_loop().create_task(_report_counts(channel, counts))
        _log.info("intake worker ready", worker=start.index)
        await self.stop_requested.wait()
        await self.listeners.stop(float(settings.limits.shutdown_grace))
        await self.server.stop()
        reporting.cancel()
        _send_counts(channel, counts)  # the last sessions' too
        await channel.finish(2)
        self.accounts.close()
        reading.cancel()

    async def _reconfigure(self, settings: Settings) -> None:
        """The main process reloaded: what ``Server.reload`` changes, for port 25 (a
        changed count of workers or listen address needs a restart)."""
        backend, services, server, listeners = (
            self.backend, self.services, self.server, self.listeners
        )  # fmt: skip
        if backend is None or services is None or server is None or listeners is None:
            return  # still starting: it runs with the settings it was started with
        backend.settings = settings
        resolver = Resolver.from_settings(settings.dns)
        services.resolver = resolver
        if services.spam is not None:
            services.spam.reconfigure(settings.spam, resolver)
        listeners.proxy = _proxy(settings)
        if listeners.tls is not None:
            listeners.tls.reload(settings.tls.cert, settings.tls.key)
        await server.reload(_Reloaded(settings))


async def _report_counts(channel: Channel, counts: metrics.CounterDeltas) -> None:
    """What this process's counters gained, to the main process, every interval."""
    while not channel.closed:
        await asyncio.sleep(COUNTS_INTERVAL)
        _send_counts(channel, counts)


def _send_counts(channel: Channel, counts: metrics.CounterDeltas) -> None:
    deltas = counts.take()
    if deltas:
        channel.tell("counts", deltas)


@dataclass(frozen=True)
class _Reloaded:
    settings: Settings


def _proxy(settings: Settings) -> ProxySettings:
    return ProxySettings.of(settings.listen.proxy_protocol, settings.listen.trusted_proxies)


def _spam_filter(settings: Settings, resolver: Resolver) -> Any:
    """The spam filter as ``spam.component`` builds it (its learning stays in the main
    process, which the IMAP moves reach; verdicts read the same spam.db)."""
    if not settings.spam.enabled:
        return None
    from pillarbox.spam.engine import SpamFilter
    from pillarbox.spam.reputation import open_reputation

    return SpamFilter(
        settings.spam, open_reputation(settings), resolver,
        authserv_id=settings.hostname,
        our_names=frozenset({settings.hostname.lower(), *settings.domains}),
        dns_timeout=float(settings.dns.timeout),
    )  # fmt: skip


async def main(channel_fd: int, listen: list[tuple[str, int]]) -> None:
    sockets = [(name, socket.socket(fileno=fd)) for name, fd in listen]
    worker = Worker(sockets)
    channel = await Channel.open(socket.socket(fileno=channel_fd), worker.handle)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_requested.set)
    # SIGHUP reaches the whole process group from a terminal: the main process reloads
    # and sends the new settings.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    await worker.run(channel)


def parse_args(argv: list[str]) -> tuple[int, list[tuple[str, int]]]:
    listen = []
    for arg in argv[1:]:
        name, _, fd = arg.partition("=")
        listen.append((name, int(fd)))
    return int(argv[0]), listen


if __name__ == "__main__":
    channel_fd, listen = parse_args(sys.argv[1:])
    asyncio.run(main(channel_fd, listen))

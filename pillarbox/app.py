"""Wiring: the one module that knows every other one.

``Server`` builds the shared services from the settings (accounts, authenticator, TLS,
control socket), asks each component factory for its component, binds all listeners, drops
privileges, and runs until told to stop. A *component* is one protocol or background service
(SMTP, IMAP, the outbound queue, HTTP, ACME): it declares its listeners and has start, stop
and reload. Adding a protocol means writing a factory and listing it in ``COMPONENTS``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pillarbox import config, log
from pillarbox.admin.component import make_web
from pillarbox.admin.sieve import SieveAccess, make_managesieve
from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.control import ControlServer
from pillarbox.core import gcpolicy, privileges
from pillarbox.delivery.component import make_smtp
from pillarbox.delivery.service import DeliveryService
from pillarbox.dns.resolver import Resolver
from pillarbox.exporter.component import make_metrics
from pillarbox.http.server import make_http
from pillarbox.imap.server import make_imap
from pillarbox.mailstore.api import MailService
from pillarbox.net.listener import (
    ConnectionLimits,
    Listeners,
    ListenerSpec,
    ProxySettings,
    format_address,
)
from pillarbox.pop3.server import make_pop3
from pillarbox.queue.service import OutboundQueue, make_queue
from pillarbox.spam.component import make_spam
from pillarbox.spam.engine import SpamFilter
from pillarbox.store.accounts import Accounts, open_accounts
from pillarbox.store.layout import ensure_layout
from pillarbox.store.mailbox import make_store
from pillarbox.store.sieve_scripts import SieveStore
from pillarbox.tls.acme import ChallengeBoard
from pillarbox.tls.context import TlsConfigError, TlsProvider, quiet_bad_server_names
from pillarbox.tls.manager import (
    CertificateManager,
    ensure_bootstrap_certificate,
    make_certificates,
)
from pillarbox.web.pages import WebPages

_log = log.get("server")


@dataclass
class Services:
    """What components provide to one another, one typed field each.

    The resolver is built here from ``[dns]`` (and rebuilt on every reload), so every DNS
    question of the server, inbound checks and outbound routing alike, goes where the
    config says. Every other field is set by its provider's factory, in COMPONENTS order,
    and stays None when that component is off (no spam filter with ``[spam] enabled =
    false``). Each package reads and writes these through a Protocol of its own
    (e.g. ``delivery.component.SmtpServices``), so no package imports this module.
    """

    resolver: Resolver
    mail_store: MailService | None = None  # IMAP's and POP3's backend (store)
    mailbox_events: MailService | None = None  # told of new mail by local delivery (store)
    spam: SpamFilter | None = None  # spam
    queue: OutboundQueue | None = None  # queue
    delivery: DeliveryService | None = None  # smtp
    sieve_scripts: SieveStore | None = None  # smtp, or the Sieve pages without it
    sieve: SieveAccess | None = None  # ManageSieve and the web pages (admin)
    challenges: ChallengeBoard | None = None  # ACME challenges http answers (certificates)
    certificates: CertificateManager | None = None  # certificates
    web: WebPages | None = None  # the /admin/ and /account/ pages http serves (web)
    # The server's listeners, which count the SMTP intake workers' clients (smtp).
    connections: Listeners | None = None


@dataclass
class AppContext:
    """Shared services handed to every component factory."""

    settings: Settings
    accounts: Accounts
    authenticator: Authenticator
    tls: TlsProvider
    control: ControlServer
    services: Services

    @classmethod
    def create(cls, settings: Settings) -> AppContext:
        accounts = open_accounts(settings, follow=True)
        ensure_bootstrap_certificate(settings)  # acme = true before the first issuance
        return cls(
            settings=settings,
            accounts=accounts,
            authenticator=Authenticator(
                accounts.password_hash,
                settings.limits,
                state_path=settings.data_dir / "bans.json",
            ),
            tls=TlsProvider(settings.tls.cert, settings.tls.key),
            control=ControlServer(settings.control_socket),
            services=Services(resolver=Resolver.from_settings(settings.dns)),
        )


class Component(Protocol):
    name: str

    def listeners(self) -> list[ListenerSpec]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def reload(self, ctx: AppContext) -> None: ...


ComponentFactory = Callable[[AppContext], "Component | None"]


@runtime_checkable
class HasProcesses(Protocol):
    """A component with processes of its own (SMTP intake workers), shut down together
    with the listeners, before any component stops."""

    async def stop_processes(self, grace: float) -> None: ...


@runtime_checkable
class HearsAccountChanges(Protocol):
    """A component that remembers accounts elsewhere than in ``ctx.accounts`` (the
    intake workers' own) and must be told when the CLI or the web admin changed them;
    it returns once they forgot."""

    async def accounts_changed(self) -> None: ...


def make_mail_store(ctx: AppContext) -> Component:
    """The mail store ``[store] backend`` names: Maildir + SQLite indexes, or the index in
    PostgreSQL (``pillarbox.pgmail``, imported only then: an SQLite node never loads the
    driver) with the files in the same Maildir layout."""
    if ctx.settings.store.backend == "postgresql":
        from pillarbox.pgmail.store import make_pg_store

        return make_pg_store(ctx)
    return make_store(ctx)


# Every component, in start order: providers of services before their users.
COMPONENTS: tuple[ComponentFactory, ...] = (
    make_mail_store,  # provides services.mail_store and .mailbox_events
    make_spam,  # provides services.spam; gives the mail store its learning hook
    make_queue,  # provides services.queue
    make_smtp,  # 25/587/465 and local delivery; provides services.delivery, .sieve_scripts
    make_imap,  # 143 (STARTTLS), 993, over the mail store
    make_pop3,  # 110 (STLS), 995, over the same mail store
    make_managesieve,  # 4190 (STARTTLS): users manage their Sieve scripts; services.sieve
    make_certificates,  # ACME and certificate reloads; services.challenges, .certificates
    make_web,  # /admin/ and /account/ pages (served by http's https listener); services.web
    make_http,  # 80/443: ACME challenges, MTA-STS policy, client autoconfiguration
    make_metrics,  # listen.metrics: Prometheus /metrics
)


class Server:
    """A running Pillarbox: see the module docstring."""

    def __init__(self, settings: Settings, *, store_factory: ComponentFactory = make_mail_store):
        """``store_factory`` replaces ``make_mail_store`` (the store ``[store] backend``
        names): the test harness passes ``memstore``'s to run the IMAP and POP3 suites on
        memory; no configuration value can, so no server loses mail by a typo."""
        self.settings = settings
        self._factories = tuple(store_factory if f is make_mail_store else f for f in COMPONENTS)
        ensure_layout(settings.data_dir)  # before any database opens (and migrates)
        self.ctx = AppContext.create(settings)
        self.components: list[Component] = []
        # Factories that gave no component (e.g. POP3 switched off): asked again on reload.
        self._absent: list[ComponentFactory] = []
        self._started = time.monotonic()
        self.listeners = Listeners(
            self.ctx.tls,
            connection_limits(settings),
            is_banned=self.ctx.authenticator.is_banned,
            proxy=proxy_settings(settings),
        )
        self.ctx.services.connections = self.listeners
        self._stop_requested = asyncio.Event()

    async def start(self) -> dict[str, tuple[str, int]]:
        """Build components, bind, drop privileges, start serving; returns bound addresses."""
        for factory in self._factories:
            component = factory(self.ctx)
            if component is not None:
                self.components.append(component)
            else:
                self._absent.append(factory)
        specs = [spec for c in self.components for spec in c.listeners()]
        quiet_bad_server_names()
        addresses = await self.listeners.bind(specs)
        drop_privileges(self.settings)
        await self.ctx.control.start()
        self.ctx.control.register("server.status", self._status)
        self.ctx.control.register("server.reload", self._reload_method)
        self.ctx.control.register("accounts.changed", self._accounts_changed)
        for name, method in self.ctx.authenticator.control_methods().items():
            self.ctx.control.register(name, method)  # bans.list, bans.del
        for component in self.components:
            await component.start()
        await self.listeners.start()
        _log.info(
            "started",
            hostname=self.settings.hostname,
            pid=os.getpid(),
            components=",".join(c.name for c in self.components),
        )
        return addresses

    async def stop(self) -> None:
        grace = float(self.settings.limits.shutdown_grace)
        _log.info("stopping", grace=grace, connections=self.listeners.active_connections)
        # Worker processes wind down beside our own sessions; the components that commit
        # what they accept meanwhile stop after both.
        await asyncio.gather(
            self.listeners.stop(grace),
            *(c.stop_processes(grace) for c in self.components if isinstance(c, HasProcesses)),
        )
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                _log.error("component stop failed", component=component.name, exc_info=True)
        await self.ctx.control.stop()
        await self.ctx.authenticator.saved()  # a ban made in the last moment survives
        self.ctx.accounts.close()
        scripts = self.ctx.services.sieve_scripts  # shared by delivery and ManageSieve
        if scripts is not None:
            scripts.close()  # on PostgreSQL: its pool and its listener
        _log.info("stopped")

    async def reload(self) -> bool:
        """Re-read the config and certificates; a bad config is refused, the old one stays."""
        try:
            new = config.load(self.settings.source) if self.settings.source else self.settings
            # Swaps the certificate only if the new pair loads; else the old one stays.
            self.ctx.tls.reload(new.tls.cert, new.tls.key)
        except (config.ConfigError, TlsConfigError) as exc:
            _log.error("reload refused", reason=str(exc))
            return False
        self.settings = new
        self.ctx.settings = new
        self.listeners.limits = connection_limits(new)
        self.listeners.proxy = proxy_settings(new)
        self.ctx.authenticator.reconfigure(new.limits)
        # Before the components reload: they take the new resolver from the services.
        self.ctx.services.resolver = Resolver.from_settings(new.dns)
        for component in self.components:
            try:
                await component.reload(self.ctx)
            except Exception:
                _log.error("component reload failed", component=component.name, exc_info=True)
        await self._add_components()
        errors = await self.listeners.rebind([s for c in self.components for s in c.listeners()])
        _log.info("reloaded", config=str(new.source), listen_errors=len(errors) or None)
        return True

    async def _add_components(self) -> None:
        """Start the components a reload switched on (a listener that was off)."""
        absent = []
        for factory in self._absent:
            component = factory(self.ctx)
            if component is None:
                absent.append(factory)
                continue
            await component.start()
            self.components.append(component)
            _log.info("component started", component=component.name)
        self._absent = absent

    async def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started, 1),
            "connections": self.listeners.active_connections,
            "listeners": {
                name: [format_address(h, p) for h, p in addresses]
                for name, addresses in self.listeners.all_addresses().items()
            },
            "components": [c.name for c in self.components],
        }

    async def _accounts_changed(self, params: dict[str, Any]) -> bool:
        """The CLI changed users or aliases: forget remembered recipients (in a thread: on
        PostgreSQL that reads the accounts again)."""
        await asyncio.to_thread(self.ctx.accounts.forget_cached)
        for component in self.components:
            if isinstance(component, HearsAccountChanges):
                await component.accounts_changed()
        return True

    async def _reload_method(self, params: dict[str, Any]) -> bool:
        return await self.reload()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self._stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()


def proxy_settings(settings: Settings) -> ProxySettings:
    listen = settings.listen
    return ProxySettings.of(listen.proxy_protocol, listen.trusted_proxies)


def connection_limits(settings: Settings) -> ConnectionLimits:
    limits = settings.limits
    return ConnectionLimits(
        max_total=limits.max_connections,
        max_per_listener=limits.max_connections_per_listener,
        max_per_ip=limits.max_connections_per_ip,
        reserved_for_authenticated=limits.reserved_for_authenticated,
    )


def drop_privileges(settings: Settings) -> None:
    """After binding privileged ports as root, continue as ``settings.user``."""
    if os.getuid() != 0 or not settings.user:
        return
    try:
        privileges.become(settings.user, settings.data_dir)
    except privileges.PrivilegeError as exc:
        raise config.ConfigError(str(exc), key="user", path=settings.source) from None


async def serve(settings: Settings) -> None:
    server = Server(settings)
    await server.start()
    gcpolicy.settle_after_start()  # see core/gcpolicy.py: full collections after big commands
    await server.run_until_stopped()

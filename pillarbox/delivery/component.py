"""Wiring of SMTP receiving and local delivery into the server (``app.py`` lists
:func:`make_smtp`).

The factory registers ``services.delivery`` (a
:class:`~pillarbox.delivery.service.DeliveryService`) as soon as it runs, so components
started later (and the queue, which looks it up when it has a bounce to deliver) find it,
and returns the ``smtp`` component: the SMTP listeners plus the sendmail pickup directory
(see :mod:`pillarbox.delivery.pickup`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from pillarbox import log
from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.control import ControlServer
from pillarbox.delivery.intake import IntakeServices, IntakeWorkers
from pillarbox.delivery.local import LocalStore
from pillarbox.delivery.pickup import Pickup
from pillarbox.delivery.policy import SmtpBackend
from pillarbox.delivery.service import DeliveryService
from pillarbox.delivery.sieve import SieveFilter
from pillarbox.delivery.wiring import (
    DeliveryStore,
    InboundServices,
    LocalServices,
    RoutingServices,
)
from pillarbox.net.listener import ListenerSpec
from pillarbox.smtp.server import SmtpServer
from pillarbox.store.accounts import Accounts
from pillarbox.store.sieve_scripts import SieveStore, open_sieve_scripts

_log = log.get("delivery")

# Seconds a Sieve script's mailboxexists waits for the store (a lookup, not I/O of size).
FOLDER_EXISTS_WAIT = 10.0


class SmtpServices(InboundServices, RoutingServices, LocalServices, IntakeServices, Protocol):
    """The app's services this component reads and provides (``app.Services`` has them)."""

    delivery: DeliveryService | None
    sieve_scripts: SieveStore | None

    @property
    def mail_store(self) -> DeliveryStore | None: ...


Learner = Callable[[str, list[bytes], bool], Awaitable[None]]


@runtime_checkable
class LearningStore(Protocol):
    """The mail store's learning hook (set by the spam component)."""

    learner: Learner | None

    def set_learner(self, learner: Learner | None) -> None: ...


class SmtpContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def accounts(self) -> Accounts: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def control(self) -> ControlServer: ...

    @property
    def services(self) -> SmtpServices: ...


class SmtpComponent:
    name = "smtp"

    def __init__(self, ctx: SmtpContext):
        settings = ctx.settings
        # Made while the app starts, on its loop: the loop Sieve's thread asks the store on.
        self._loop = asyncio.get_running_loop()
        self.local = LocalStore(ctx.services)
        # Users' Sieve scripts (shared with ManageSieve and the web pages through services).
        scripts = ctx.services.sieve_scripts
        if scripts is None:
            scripts = ctx.services.sieve_scripts = open_sieve_scripts(settings, follow=True)
        self.sieve = SieveFilter(
            scripts, settings.delivery.recipient_delimiter, self._folder_exists
        )
        self.delivery = DeliveryService(
            ctx.accounts,
            self.local,
            ctx.services,
            delimiter=settings.delivery.recipient_delimiter,
            domains=settings.domains,
            hostname=settings.hostname,
            sieve=self.sieve,
        )
        ctx.services.delivery = self.delivery
        self.backend = SmtpBackend(settings, ctx.accounts, self.delivery, ctx.services)
        # Port 25 in worker processes (intake.py), from 2 of them on.
        self.intake = (
            IntakeWorkers(settings, self.backend, ctx.services)
            if settings.smtp.intake_workers >= 2
            else None
        )
        self.server = SmtpServer(
            settings, self.backend, ctx.authenticator,
            handoff=self.intake.handoff if self.intake is not None else None,
        )  # fmt: skip
        self.pickup = Pickup(settings, self.delivery)
        ctx.control.register("sendmail.pickup", self.pickup.control_method)
        ctx.control.register("sieve.changed", self._sieve_changed)  # `pillarbox sieve`
        if self.intake is not None:
            self._tell_workers_of_spam_changes(ctx, self.intake)

    @staticmethod
    def _tell_workers_of_spam_changes(ctx: SmtpContext, intake: IntakeWorkers) -> None:
        """The workers' spam filters re-read thresholds and lessons when told: after the
        CLI's or the web pages' ``spam.changed``, and after an IMAP move taught the
        filter (the learning itself is the main process's)."""
        changed = ctx.control.registered("spam.changed")
        if changed is not None:
            previous = changed

            async def spam_changed(params: dict[str, Any]) -> Any:
                result = await previous(params)
                await intake.ask_all("spam_changed")  # taken in before the change is done
                return result

            ctx.control.register("spam.changed", spam_changed)
        store = ctx.services.mail_store
        if isinstance(store, LearningStore) and store.learner is not None:
            learn = store.learner

            async def learned(user: str, messages: list[bytes], spam: bool) -> None:
                await learn(user, messages, spam)
                intake.tell_all("spam_changed")

            store.set_learner(learned)

    def _folder_exists(self, user: str, folder: str) -> bool:
        """RFC 5490 mailboxexists, asked of the mail store. A Sieve plan is blocking work
        run in a thread, the store lives on the event loop: the thread waits for the loop's
        answer. No answer (the store failing, too slow) counts as no such folder."""
        asked = asyncio.run_coroutine_threadsafe(self.local.folder_exists(user, folder), self._loop)
        try:
            return asked.result(timeout=FOLDER_EXISTS_WAIT)
        except Exception:
            asked.cancel()
            _log.warning("mailboxexists unanswered", user=user, folder=folder, exc_info=True)
            return False

    def listeners(self) -> list[ListenerSpec]:
        return self.server.listeners()

    async def start(self) -> None:
        await self.server.start()
        await self.pickup.start()
        if self.intake is not None:
            await self.intake.start()

    async def stop_processes(self, grace: float) -> None:
        """Shut the intake workers down; the app calls it beside its own listeners' stop,
        while this component still commits what the workers accept meanwhile."""
        if self.intake is not None:
            await self.intake.stop(grace)

    async def accounts_changed(self) -> None:
        """The CLI or the web admin changed users or aliases: the workers forget what
        they remembered (before the change is reported done, so the next RCPT on any of
        them sees it). A deleted user's scripts went with it (``Accounts.delete_user``)."""
        await asyncio.to_thread(self.sieve.scripts.reload_active)
        if self.intake is not None:
            await self.intake.ask_all("accounts_changed")

    async def _sieve_changed(self, params: dict[str, Any]) -> bool:
        """Another process (the CLI) changed who has an active script: delivery asks the
        store's in-memory set (``SieveStore.has_active``), read again here before the
        CLI's command returns, so the very next message sees the change."""
        await asyncio.to_thread(self.sieve.scripts.reload_active)
        return True

    async def stop(self) -> None:
        await self.pickup.stop()
        await self.server.stop()

    async def reload(self, ctx: SmtpContext) -> None:
        settings = ctx.settings
        if self.intake is not None:
            self.intake.reload(settings)
        self.backend.settings = settings
        self.delivery.delimiter = settings.delivery.recipient_delimiter
        self.sieve.delimiter = settings.delivery.recipient_delimiter
        await self.server.reload(ctx)


def make_smtp(ctx: SmtpContext) -> SmtpComponent:
    """The SMTP component. Always made: with every SMTP listener disabled it still provides
    the delivery service (queue DSNs, sendmail) and simply binds no port."""
    return SmtpComponent(ctx)

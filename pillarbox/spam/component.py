"""The spam filter as an app component (``app.py`` lists :func:`make_spam` after the store).

It has no listeners: it provides ``services.spam`` (a
:class:`~pillarbox.spam.engine.SpamFilter`) for the SMTP backend, and hands the mail store
its learning hook (``services.mail_store.set_learner``), so IMAP moves teach the filter
without the store or IMAP importing this package. Its DNS questions (DNSBL, PTR) go through
the server's one resolver, ``services.resolver``, which a reload rebuilds from ``[dns]``.
``[spam] enabled = false`` makes no component: no scoring, no learning, no ``spam.db``
(or database pool) opened (a reload that enables it starts one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pillarbox.config import Settings
from pillarbox.control import ControlServer
from pillarbox.dns.resolver import Resolver
from pillarbox.spam.engine import SpamFilter
from pillarbox.spam.reputation import open_reputation

# What the mail store calls when a user files messages into Junk or out of it:
# (user, messages, spam).
Learner = Callable[[str, list[bytes], bool], Awaitable[None]]


class LearningStore(Protocol):
    """The part of the mail store this component uses."""

    def set_learner(self, learner: Learner | None) -> None: ...


class SpamServices(Protocol):
    """The app's services this component reads and provides (``app.Services`` has them)."""

    spam: SpamFilter | None

    @property
    def resolver(self) -> Resolver: ...

    @property
    def mail_store(self) -> LearningStore | None: ...


class SpamContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def control(self) -> ControlServer: ...

    @property
    def services(self) -> SpamServices: ...


class SpamComponent:
    name = "spam"

    def __init__(self, ctx: SpamContext):
        settings = ctx.settings
        self.filter = SpamFilter(
            settings.spam,
            open_reputation(settings),
            ctx.services.resolver,
            authserv_id=settings.hostname,
            our_names=frozenset({settings.hostname.lower(), *settings.domains}),
            dns_timeout=float(settings.dns.timeout),
        )
        ctx.services.spam = self.filter
        ctx.control.register("spam.changed", self._changed)  # `pillarbox user spam`
        store = ctx.services.mail_store
        if store is not None:
            store.set_learner(self.filter.learn)

    async def _changed(self, params: dict[str, Any]) -> bool:
        self.filter.forget_cached()
        return True

    def listeners(self) -> list[Any]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.filter.close()

    async def reload(self, ctx: SpamContext) -> None:
        self.filter.reconfigure(ctx.settings.spam, ctx.services.resolver)


def make_spam(ctx: SpamContext) -> SpamComponent | None:
    if not ctx.settings.spam.enabled:
        return None
    return SpamComponent(ctx)

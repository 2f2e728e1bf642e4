"""The spam filter as an app component (``app.py`` lists :func:`make_spam` after the store).

It has no listeners: it provides ``ctx.services["spam"]`` (a
:class:`~pillarbox.spam.engine.SpamFilter`) for the SMTP backend, and hands the mail store
its learning hook (``mail_store.set_learner``), so IMAP moves teach the filter without the
store or IMAP importing this package. ``[spam] enabled = false`` makes no component: no
scoring, no learning, no ``spam.db`` opened (a reload that enables it starts one).
"""

from __future__ import annotations

from typing import Any

from pillarbox.dns.resolver import Resolver
from pillarbox.spam.engine import SpamFilter


class SpamComponent:
    name = "spam"

    def __init__(self, ctx: Any):
        settings = ctx.settings
        self.filter = SpamFilter(
            settings.spam,
            settings.data_dir,
            self._resolver(ctx),
            authserv_id=settings.hostname,
            our_names=frozenset({settings.hostname.lower(), *settings.domains}),
            dns_timeout=float(settings.dns.timeout),
        )
        ctx.services["spam"] = self.filter
        ctx.control.register("spam.changed", self._changed)  # `pillarbox user spam`
        store = ctx.services.get("mail_store")
        if store is not None and hasattr(store, "set_learner"):
            store.set_learner(self.filter.learn)

    async def _changed(self, params: dict[str, Any]) -> bool:
        self.filter.forget_cached()
        return True

    @staticmethod
    def _resolver(ctx: Any) -> Any:
        return ctx.services.get("resolver") or Resolver.from_settings(ctx.settings.dns)

    def listeners(self) -> list[Any]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.filter.close()

    async def reload(self, ctx: Any) -> None:
        self.filter.reconfigure(ctx.settings.spam, self._resolver(ctx))


def make_spam(ctx: Any) -> SpamComponent | None:
    if not ctx.settings.spam.enabled:
        return None
    return SpamComponent(ctx)

"""The web pages as a server component: no listener of their own (the https listener
serves them, ``pillarbox.http``), a backend over the server's parts, reloaded with it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pillarbox.admin.backend import AdminBackend
from pillarbox.admin.sieve import SieveContext, SieveServices, sieve_access
from pillarbox.control import ControlServer
from pillarbox.net.listener import ListenerSpec
from pillarbox.store.accounts import Accounts
from pillarbox.web.pages import WebPages


class WebServices(SieveServices, Protocol):
    """The app's services this component reads and provides (``app.Services`` has them)."""

    web: WebPages | None  # served by pillarbox.http's https listener


class WebContext(SieveContext, Protocol):
    @property
    def accounts(self) -> Accounts: ...

    @property
    def control(self) -> ControlServer: ...

    @property
    def services(self) -> WebServices: ...


class WebComponent:
    name = "web"

    def __init__(self, ctx: WebContext):
        self.backend = AdminBackend(
            ctx.settings, ctx.accounts, ctx.authenticator, ctx.control, sieve_access(ctx)
        )
        self.pages = WebPages(self.backend)

    def listeners(self) -> list[ListenerSpec]:
        return []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.to_thread(self.backend.close)

    async def reload(self, ctx: WebContext) -> None:
        self.backend.reconfigure(ctx.settings)
        self.pages.sessions.lifetime = float(ctx.settings.web.session_lifetime)
        self.pages.sessions.idle = float(ctx.settings.web.session_idle)


def make_web(ctx: WebContext) -> WebComponent:
    """The web pages, registered for make_http. Always made (threads and the write
    connection start only when used), so that a reload switching https on serves them."""
    component = WebComponent(ctx)
    ctx.services.web = component.pages
    return component

"""The web pages as a server component: no listener of their own (the https listener
serves them, ``pillarbox.http``), a backend over the server's parts, reloaded with it."""

from __future__ import annotations

import asyncio
from typing import Any

from pillarbox.admin.backend import AdminBackend
from pillarbox.admin.sieve import sieve_access
from pillarbox.http.server import WEB_SERVICE
from pillarbox.net.listener import ListenerSpec
from pillarbox.web.pages import WebPages


class WebComponent:
    name = "web"

    def __init__(self, ctx: Any):
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

    async def reload(self, ctx: Any) -> None:
        self.backend.reconfigure(ctx.settings)
        self.pages.sessions.lifetime = float(ctx.settings.web.session_lifetime)
        self.pages.sessions.idle = float(ctx.settings.web.session_idle)


def make_web(ctx: Any) -> WebComponent:
    """The web pages, registered for make_http. Always made (threads and the write
    connection start only when used), so that a reload switching https on serves them."""
    component = WebComponent(ctx)
    ctx.services[WEB_SERVICE] = component.pages
    return component

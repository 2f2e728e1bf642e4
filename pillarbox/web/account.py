"""``/account/``: what every user can do for themselves.

Change their password (the current one first, checked through the same throttled login
as every mail listener), see their quota, and download the client setup: Thunderbird's
autoconfig XML and an Apple ``.mobileconfig`` profile (the same documents the autoconfig
URLs serve, :mod:`pillarbox.http.clientconfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pillarbox.core.address import parse_address
from pillarbox.http import clientconfig
from pillarbox.web.backend import WebError

if TYPE_CHECKING:
    from pillarbox.web.pages import Page, WebPages


def routes(web: WebPages) -> list[Route]:
    pages = AccountPages(web)
    return [
        Route("/account", lambda request: RedirectResponse("/account/", status_code=308)),
        Route("/account/", web.guard(pages.overview, "user"), methods=["GET", "HEAD"]),
        Route("/account/password", web.guard(pages.password, "user"), methods=["POST"]),
        Route("/account/autoconfig.xml", web.guard(pages.autoconfig, "user")),
        Route("/account/mail.mobileconfig", web.guard(pages.mobileconfig, "user")),
    ]


class AccountPages:
    def __init__(self, web: WebPages):
        self.web = web
        self.backend = web.backend

    async def overview(self, page: Page) -> Response:
        return self.web.render(
            page,
            "account.html",
            me=await self.backend.user(page.user),
            services=clientconfig.services(self.backend.settings()),
        )

    async def password(self, page: Page) -> Response:
        current, new = page.form.get("current", ""), page.form.get("new", "")
        if new != page.form.get("repeat", ""):
            raise WebError("The two new passwords differ.")
        # Through the login's throttle: a stolen session cannot guess the password fast.
        if await self.backend.login(page.user, current, page.client_ip) is None:
            raise WebError("The current password is wrong.")
        await self.backend.set_password(page.user, new)
        ended = self.web.sessions.end_user(page.user, keep=page.session)
        self.web.done(page, "account.password", "Password changed.", other_sessions_ended=ended)
        return RedirectResponse("/account/", status_code=303)

    async def autoconfig(self, page: Page) -> Response:
        domain = parse_address(page.user).domain
        body = clientconfig.thunderbird_autoconfig(self.backend.settings(), domain)
        return _download(body, "application/xml; charset=utf-8", "config-v1.1.xml")

    async def mobileconfig(self, page: Page) -> Response:
        address = parse_address(page.user)
        try:
            body = clientconfig.apple_mobileconfig(self.backend.settings(), address)
        except ValueError as exc:
            raise WebError(str(exc)) from None
        return _download(body, "application/x-apple-aspen-config", f"{address.domain}.mobileconfig")


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

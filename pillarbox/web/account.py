"""``/account/``: what every user can do for themselves.

Change their password (the current one first, checked through the same throttled login
as every mail listener), see their quota, and download the client setup: Thunderbird's
autoconfig XML and an Apple ``.mobileconfig`` profile (the same documents the autoconfig
URLs serve, :mod:`pillarbox.http.clientconfig`).

Filters and vacation: the vacation form writes a generated Sieve script
(:mod:`pillarbox.web.vacation`), the raw editor any script; both through the same script
storage ManageSieve serves. A refused script (a syntax error, with its line and column)
is shown again with the error, so the user's text is never lost to a redirect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pillarbox.core.address import parse_address
from pillarbox.http import clientconfig
from pillarbox.web import vacation as v
from pillarbox.web.backend import SieveScript, WebError

if TYPE_CHECKING:
    from pillarbox.web.pages import Page, WebPages


def routes(web: WebPages) -> list[Route]:
    pages = AccountPages(web)
    return [
        Route("/account", lambda request: RedirectResponse("/account/", status_code=308)),
        Route("/account/", web.guard(pages.overview, "user"), methods=["GET", "HEAD"]),
        Route("/account/password", web.guard(pages.password, "user"), methods=["POST"]),
        Route("/account/vacation", web.guard(pages.vacation, "user"), methods=["POST"]),
        Route("/account/sieve", web.guard(pages.sieve, "user"), methods=["POST"]),
        Route("/account/sieve/activate", web.guard(pages.activate, "user"), methods=["POST"]),
        Route("/account/autoconfig.xml", web.guard(pages.autoconfig, "user")),
        Route("/account/mail.mobileconfig", web.guard(pages.mobileconfig, "user")),
    ]


class AccountPages:
    def __init__(self, web: WebPages):
        self.web = web
        self.backend = web.backend

    async def overview(self, page: Page) -> Response:
        return await self._render(page)

    async def _render(self, page: Page, status: int = 200, **shown: object) -> Response:
        """The page; ``shown`` overrides the Sieve forms' values (a refused save)."""
        context: dict[str, object] = {}
        if self.backend.sieve_available():
            context = await self._sieve_context(page)
        context.update(shown)
        return self.web.render(
            page,
            "account.html",
            status=status,
            me=await self.backend.user(page.user),
            services=clientconfig.services(self.backend.settings()),
            sieve=self.backend.sieve_available(),
            **context,
        )

    async def _sieve_context(self, page: Page) -> dict[str, object]:
        scripts = await self.backend.sieve_scripts(page.user)
        active = _active(scripts)
        wanted = page.request.query_params.get("script", "")
        names = [s.name for s in scripts]
        # The editor shows the script asked for, else the active one, else a new one.
        edit = wanted if wanted in names else (active or "")
        text = (await self.backend.sieve_get(page.user, edit) or "") if edit else ""
        saved = await self.backend.sieve_get(page.user, v.SCRIPT_NAME)
        managesieve = self.backend.settings().listen.addresses("managesieve")
        return {
            "managesieve_port": managesieve[0][1] if managesieve else None,
            "scripts": scripts,
            "active": active,
            "vacation": (v.from_script(saved) if saved else None) or v.Vacation(),
            "vacation_on": active == v.SCRIPT_NAME,
            "vacation_name": v.SCRIPT_NAME,
            "edit_name": edit or "filters",
            "edit_text": text,
            "sieve_error": "",
            "vacation_error": "",
        }

    async def vacation(self, page: Page) -> Response:
        """Save the form as the vacation script; on: it becomes the active script, off:
        the script active before it is again (see pillarbox.web.vacation)."""
        self._require_sieve()
        user = page.user
        scripts = await self.backend.sieve_scripts(user)
        active = _active(scripts)
        saved = await self.backend.sieve_get(user, v.SCRIPT_NAME)
        before = v.from_script(saved) if saved else None
        if saved and before is None:
            return await self._vacation_refused(
                page,
                f"A script named {v.SCRIPT_NAME} that this page did not write exists: "
                "rename it first (below, or in your mail app).",
            )
        previous = (before.previous if before else "") if active == v.SCRIPT_NAME else active
        try:
            settings = v.from_form(page.form, previous or "")
        except v.VacationError as exc:
            return await self._vacation_refused(page, str(exc))
        try:
            await self.backend.sieve_save(user, v.SCRIPT_NAME, v.to_script(settings))
        except WebError as exc:
            return await self._vacation_refused(page, str(exc))
        if settings.enabled:
            await self.backend.sieve_activate(user, v.SCRIPT_NAME)
        elif active == v.SCRIPT_NAME:
            names = {s.name for s in scripts}
            await self.backend.sieve_activate(
                user, settings.previous if settings.previous in names else None
            )
        self.web.done(
            page,
            "account.vacation",
            "Vacation reply on." if settings.enabled else "Vacation reply off.",
            enabled=settings.enabled,
            days=settings.days,
        )
        return RedirectResponse("/account/#filters", status_code=303)

    async def _vacation_refused(self, page: Page, error: str) -> Response:
        form = page.form
        shown = v.Vacation(
            enabled=form.get("enabled") == "on",
            subject=form.get("subject", ""),
            message=form.get("message", ""),
            days=v.DEFAULT_DAYS,
        )
        return await self._render(page, 400, vacation=shown, vacation_error=error)

    async def sieve(self, page: Page) -> Response:
        """The raw editor: store the script (a syntax error refused with line and
        column, the text shown again), and make it active when asked."""
        self._require_sieve()
        name, text = page.field("name"), page.form.get("script", "")
        activate = page.form.get("activate") == "on"
        try:
            if not name:
                raise WebError("Give the script a name.")
            await self.backend.sieve_save(page.user, name, text)
        except WebError as exc:
            return await self._render(
                page, 400, edit_name=name, edit_text=text, sieve_error=str(exc)
            )
        if activate:
            await self.backend.sieve_activate(page.user, name)
        self.web.done(page, "account.sieve", f"Script {name} saved.", script=name, active=activate)
        return RedirectResponse(f"/account/?script={quote(name)}#filters", status_code=303)

    async def activate(self, page: Page) -> Response:
        self._require_sieve()
        name = page.field("name")
        await self.backend.sieve_activate(page.user, name or None)
        text = f"Script {name} is active." if name else "No script is active now."
        self.web.done(page, "account.sieve.activate", text, script=name)
        return RedirectResponse("/account/#filters", status_code=303)

    def _require_sieve(self) -> None:
        if not self.backend.sieve_available():
            raise WebError("Sieve filters are not part of this build.")

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


def _active(scripts: list[SieveScript]) -> str | None:
    return next((s.name for s in scripts if s.active), None)


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

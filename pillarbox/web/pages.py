"""The web pages as a Starlette application, and the guard every page goes through.

The https front (``pillarbox.http``) calls :attr:`WebPages.app` for the paths
:meth:`WebPages.owns`. Every route is wrapped by :meth:`WebPages.guard`, which decides, in
this order, before the page's own code runs:

1. who is signed in: the session cookie (``sessions.py``); a page for users without one
   redirects a GET to ``/login`` and refuses anything else with 403;
2. for ``/admin/``: ``[web] admin`` is on, the account has the admin flag *now* (asked
   on every request, so ``user admin ADDRESS off`` counts at once), and the address and
   the client are in ``[web] admin_allow`` when it lists any;
3. for a POST: the body is a form, its ``Origin`` (when the browser sends one) is ours,
   and its ``csrf`` field is the session's token (constant-time compare).

Refusals and every change are logged with the user and the client address. Responses
carry a strict Content-Security-Policy (no script at all, forms only to us), no framing
and no referrer.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pillarbox import log
from pillarbox.web.backend import WebBackend, WebError
from pillarbox.web.forms import FormError, parse_form
from pillarbox.web.sessions import COOKIE, LOGIN_COOKIE, Session, Sessions, new_token, same_token

_log = log.get("web")

HERE = Path(__file__).parent
Level = Literal["public", "user", "admin"]
OWNED_PREFIXES = ("/admin/", "/account/", "/static/")
OWNED_PATHS = frozenset({"/", "/login", "/logout", "/admin", "/account"})

SECURITY_HEADERS = {
    # No script anywhere: plain forms. Styles only from our own file.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser posts "Origin: null".
    "Referrer-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",  # RFC 6797: https from now on
}


@dataclass
class Page:
    """One request as the page code sees it, after the guard."""

    request: Request
    client_ip: str
    session: Session | None
    form: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        assert self.session is not None
        return self.session.user

    def field(self, name: str) -> str:
        return self.form.get(name, "").strip()


Handler = Callable[[Page], Awaitable[Response]]


def admin_allowed(allow: tuple[str, ...], user: str, client_ip: str) -> bool:
    """``[web] admin_allow``: listed addresses limit who, listed networks limit where."""
    addresses = {a for a in allow if "@" in a}
    networks = [ipaddress.ip_network(n) for n in allow if "@" not in n]
    if addresses and user not in addresses:
        return False
    if networks:
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(ip in net for net in networks)
    return True


def format_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def safe_next(target: str | None) -> str | None:
    """A post-login destination only if it is a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target if urllib.parse.urlsplit(target).netloc == "" else None


class WebPages:
    """The application and its state (sessions, templates): see the module docstring."""

    timeout = 120.0  # a live check or a certificate order may take a while

    def __init__(self, backend: WebBackend):
        self.backend = backend
        web = backend.settings().web
        self.sessions = Sessions(float(web.session_lifetime), float(web.session_idle))
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["timestamp"] = format_time
        self.stylesheet = (HERE / "static" / "style.css").read_bytes()
        from pillarbox.web import account, admin  # the page modules name routes of ours

        routes = [
            Route("/", self.guard(self._home, "public")),
            Route("/static/style.css", self._style),
            Route("/login", self.guard(self._login_form, "public"), methods=["GET", "HEAD"]),
            Route("/login", self.guard(self._login, "public", csrf=False), methods=["POST"]),
            Route("/logout", self.guard(self._logout, "user"), methods=["POST"]),
            *account.routes(self),
            *admin.routes(self),
        ]
        self.app = Starlette(routes=routes)

    def owns(self, path: str) -> bool:
        return path in OWNED_PATHS or path.startswith(OWNED_PREFIXES)

    # -- the guard -------------------------------------------------------------------

    def guard(self, handler: Handler, level: Level, *, csrf: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            response = await self._guarded(request, handler, level, csrf)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return endpoint

    async def _guarded(
        self, request: Request, handler: Handler, level: Level, csrf: bool
    ) -> Response:
        client_ip = request.client.host if request.client else ""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None and not self.backend.user_exists(session.user):
            self.sessions.end_user(session.user)  # deleted meanwhile
            session = None
        page = Page(request, client_ip, session)
        if level != "public" and session is None:
            if request.method in ("GET", "HEAD"):
                target = urllib.parse.quote(request.url.path)
                return RedirectResponse(f"/login?next={target}", status_code=303)
            return self.refuse(page, 403, "Sign in first.")
        if level == "admin" and (refusal := self._admin_refusal(page)) is not None:
            return refusal
        if request.method == "POST":
            refusal = await self._read_form(page, check_csrf=csrf)
            if refusal is not None:
                return refusal
        try:
            return await handler(page)
        except WebError as exc:
            # A refused action: say why on the page it came from.
            if page.session is not None and request.method == "POST":
                self.flash(page, "error", str(exc))
                return self.back(page)
            return self.refuse(page, 400, str(exc))

    def _admin_refusal(self, page: Page) -> Response | None:
        settings = self.backend.settings()
        if not settings.web.admin:
            return self.refuse(page, 404, "The admin pages are turned off ([web] admin = false).")
        if not self.backend.is_admin(page.user):
            _log.warning(
                "admin refused", user=page.user, client=page.client_ip, reason="no admin flag"
            )
            return self.refuse(page, 403, "This account has no admin rights.")
        if not admin_allowed(settings.web.admin_allow, page.user, page.client_ip):
            _log.warning(
                "admin refused", user=page.user, client=page.client_ip, reason="admin_allow"
            )
            return self.refuse(page, 403, "Not allowed from here ([web] admin_allow).")
        return None

    async def _read_form(self, page: Page, *, check_csrf: bool) -> Response | None:
        request = page.request
        origin = request.headers.get("origin")
        if origin is not None and not self._our_origin(origin, request):
            _log.warning(
                "csrf refused", client=page.client_ip, reason="origin", origin=origin[:100]
            )
            return self.refuse(page, 403, "This form came from another site.")
        try:
            page.form = parse_form(request.headers.get("content-type"), await request.body())
        except FormError as exc:
            return self.refuse(page, 415 if "expected a form" in str(exc) else 400, str(exc))
        if check_csrf:
            assert page.session is not None
            if not same_token(page.form.get("csrf"), page.session.csrf):
                _log.warning(
                    "csrf refused", user=page.session.user, client=page.client_ip, reason="token"
                )
                return self.refuse(page, 403, "The form's security token is missing or stale.")
        return None

    @staticmethod
    def _our_origin(origin: str, request: Request) -> bool:
        host = request.headers.get("host", "")
        return origin == f"https://{host}"

    # -- rendering -------------------------------------------------------------------

    def render(self, page: Page, template: str, status: int = 200, **context: Any) -> Response:
        session = page.session
        flashes = session.flashes if session else []
        body = self.templates.get_template(template).render(
            user=session.user if session else None,
            csrf=session.csrf if session else "",
            is_admin=bool(session and self._admin_link(session.user)),
            flashes=list(flashes),
            path=page.request.url.path,
            hostname=self.backend.settings().hostname,
            **context,
        )
        flashes.clear()
        return HTMLResponse(body, status_code=status)

    def _admin_link(self, user: str) -> bool:
        return self.backend.settings().web.admin and self.backend.is_admin(user)

    def refuse(self, page: Page, status: int, message: str) -> Response:
        return self.render(page, "error.html", status=status, message=message)

    def flash(self, page: Page, kind: str, text: str) -> None:
        if page.session is not None:
            page.session.flashes.append((kind, text))

    def back(self, page: Page, default: str = "/account/") -> Response:
        """303 to the page a form was posted from (``back`` field: one of our paths)."""
        return RedirectResponse(safe_next(page.form.get("back")) or default, status_code=303)

    def done(self, page: Page, action: str, text: str, **fields: Any) -> None:
        """Log an action with who did it, and tell the user."""
        _log.info("web action", action=action, user=page.user, client=page.client_ip, **fields)
        self.flash(page, "ok", text)

    # -- sign in and out -------------------------------------------------------------

    async def _home(self, page: Page) -> Response:
        if page.session is None:
            return RedirectResponse("/login", status_code=303)
        target = "/admin/" if self._admin_link(page.user) else "/account/"
        return RedirectResponse(target, status_code=303)

    async def _style(self, request: Request) -> Response:
        return Response(
            self.stylesheet, media_type="text/css", headers={"Cache-Control": "max-age=3600"}
        )

    async def _login_form(self, page: Page, error: str = "", status: int = 200) -> Response:
        nonce = new_token()
        response = self.render(
            page,
            "login.html",
            status=status,
            login_csrf=nonce,
            error=error,
            next=safe_next(page.request.query_params.get("next")) or "",
        )
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=3600, secure=True, httponly=True, samesite="strict"
        )
        return response

    async def _login(self, page: Page) -> Response:
        if not same_token(page.form.get("csrf"), page.request.cookies.get(LOGIN_COOKIE) or "\0"):
            _log.warning("csrf refused", client=page.client_ip, reason="login token")
            return self.refuse(page, 403, "The login form's security token is missing or stale.")
        address, password = page.field("address"), page.form.get("password", "")
        user = await self.backend.login(address, password, page.client_ip) if address else None
        if user is None:
            _log.info("web login failed", user=address[:100], client=page.client_ip)
            page.session = None
            return await self._login_form(page, "Wrong address or password.", status=401)
        token, session = self.sessions.create(user)
        _log.info("web login", user=user, client=page.client_ip)
        page.session = session
        home = "/admin/" if self._admin_link(user) else "/account/"
        target = safe_next(page.form.get("next")) or home
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, secure=True, httponly=True, samesite="strict")
        return response

    async def _logout(self, page: Page) -> Response:
        self.sessions.end(page.request.cookies.get(COOKIE))
        _log.info("web logout", user=page.user, client=page.client_ip)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, secure=True, httponly=True, samesite="strict")
        return response

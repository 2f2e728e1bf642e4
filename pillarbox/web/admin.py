"""``/admin/``: the dashboard (the live ``check``), users, aliases, DKIM, certificates, the
outbound queue and recent log events. Every page needs the admin flag (see the guard in
``pages.py``); every change is logged with who made it (``WebPages.done``).

The queue and certificate pages call the server's control methods (``queue.list``,
``queue.flush``, ``cert.renew`` ...), the very code ``pillarbox queue`` and ``pillarbox
cert`` reach over the control socket, so the web and the CLI cannot disagree.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pillarbox.check.findings import CATEGORIES, Status
from pillarbox.core.sizes import format_size
from pillarbox.web.backend import WebError

if TYPE_CHECKING:
    from pillarbox.web.pages import Page, WebPages

MAX_LOG_LINES = 300
GET = ["GET", "HEAD"]
POST = ["POST"]


def routes(web: WebPages) -> list[Route]:
    p = AdminPages(web)
    admin = [
        ("/admin/", p.dashboard, GET),
        ("/admin/check", p.check, POST),
        ("/admin/users", p.users, GET),
        ("/admin/users/add", p.user_add, POST),
        ("/admin/users/password", p.user_password, POST),
        ("/admin/users/admin", p.user_admin, POST),
        ("/admin/users/quota", p.user_quota, POST),
        ("/admin/users/delete", p.user_delete, POST),
        ("/admin/aliases", p.aliases, GET),
        ("/admin/aliases/add", p.alias_add, POST),
        ("/admin/aliases/delete", p.alias_delete, POST),
        ("/admin/dkim", p.dkim, GET),
        ("/admin/dkim/rotate", p.dkim_rotate, POST),
        ("/admin/certs", p.certs, GET),
        ("/admin/certs/renew", p.cert_renew, POST),
        ("/admin/queue", p.queue, GET),
        ("/admin/queue/flush", p.queue_flush, POST),
        ("/admin/queue/delete", p.queue_delete, POST),
        ("/admin/queue/{queue_id:str}", p.queue_show, GET),
        ("/admin/spam", p.spam, GET),
        ("/admin/spam/user", p.spam_user, POST),
        ("/admin/log", p.log, GET),
    ]
    return [
        Route("/admin", lambda request: RedirectResponse("/admin/", status_code=308)),
        *(Route(path, web.guard(fn, "admin"), methods=methods) for path, fn, methods in admin),
    ]


class AdminPages:
    def __init__(self, web: WebPages):
        self.web = web
        self.backend = web.backend

    # -- dashboard: the live check ---------------------------------------------------

    async def dashboard(self, page: Page) -> Response:
        result = self.backend.last_check()
        if result is None and not self.backend.check_running():
            self.backend.start_check()  # the first visit starts one; the page refreshes
        findings = result.report.findings if result else []
        groups = [
            (title, [f for f in findings if f.category == category])
            for category, title in CATEGORIES.items()
        ]
        return self.web.render(
            page,
            "admin/dashboard.html",
            result=result,
            running=self.backend.check_running(),
            groups=[(title, items) for title, items in groups if items],
            counts={s.value: sum(1 for f in findings if f.status is s) for s in Status},
        )

    async def check(self, page: Page) -> Response:
        result = await self.backend.run_check()
        self.web.done(page, "check", f"Check done: score {result.report.score:g}/10.")
        return RedirectResponse("/admin/", status_code=303)

    # -- users -----------------------------------------------------------------------

    async def users(self, page: Page) -> Response:
        return self.web.render(page, "admin/users.html", users=await self.backend.users())

    async def user_add(self, page: Page) -> Response:
        password = page.form.get("password", "")
        if password != page.form.get("repeat", password):
            raise WebError("The two passwords differ.")
        admin = page.form.get("admin") == "on"
        address = await self.backend.add_user(page.field("address"), password, admin=admin)
        self.web.done(page, "user.add", f"Added {address}.", target=address, admin=admin)
        return RedirectResponse("/admin/users", status_code=303)

    async def user_password(self, page: Page) -> Response:
        address = page.field("address")
        await self.backend.set_password(address, page.form.get("password", ""))
        self.web.sessions.end_user(address, keep=page.session)
        self.web.done(page, "user.password", f"New password set for {address}.", target=address)
        return RedirectResponse("/admin/users", status_code=303)

    async def user_admin(self, page: Page) -> Response:
        address, on = page.field("address"), page.form.get("state") == "on"
        if address == page.user and not on:
            raise WebError("You cannot withdraw your own admin flag here (use the CLI).")
        await self.backend.set_admin(address, on)
        text = f"{address} is {'now' if on else 'no longer'} an admin."
        self.web.done(page, "user.admin", text, target=address, admin=on)
        return RedirectResponse("/admin/users", status_code=303)

    async def user_quota(self, page: Page) -> Response:
        address = page.field("address")
        size = page.form.get("quota", "").strip()
        limit = await self.backend.set_quota(address, size)
        shown = format_size(limit) if limit else "no limit"
        self.web.done(page, "user.quota", f"Quota of {address}: {shown}.", target=address,
                      quota=limit)  # fmt: skip
        return RedirectResponse("/admin/users", status_code=303)

    async def user_delete(self, page: Page) -> Response:
        address = page.field("address")
        if address == page.user:
            raise WebError("You cannot delete your own account here.")
        if page.form.get("confirm") != address:
            raise WebError(f"Type the address ({address}) in the box to confirm the deletion.")
        await self.backend.delete_user(address)
        self.web.sessions.end_user(address)
        self.web.done(
            page, "user.delete", f"Deleted {address} (its mail stays on disk).", target=address
        )
        return RedirectResponse("/admin/users", status_code=303)

    # -- the spam filter ---------------------------------------------------------------

    async def spam(self, page: Page) -> Response:
        return self.web.render(page, "admin/spam.html", spam=await self.backend.spam_overview())

    async def spam_user(self, page: Page) -> Response:
        address = page.field("address")
        if page.form.get("default") == "on":
            junk = reject = None
        else:
            junk, reject = _score(page.form.get("junk", "")), _score(page.form.get("reject", ""))
        row = await self.backend.set_spam_thresholds(address, junk, reject)
        where = "own" if row.own else "the configured ones"
        text = f"{row.address}: junk from {row.junk:g}, refused from {row.reject:g} ({where})."
        self.web.done(page, "spam.thresholds", text, target=row.address,
                      junk=row.junk, reject=row.reject)  # fmt: skip
        return RedirectResponse("/admin/spam", status_code=303)

    # -- aliases and catch-alls ------------------------------------------------------

    async def aliases(self, page: Page) -> Response:
        return self.web.render(page, "admin/aliases.html", aliases=self.backend.aliases())

    async def alias_add(self, page: Page) -> Response:
        targets = [t.strip() for t in page.field("targets").replace("\n", ",").split(",")]
        key, added = await self.backend.add_alias(page.field("alias"), [t for t in targets if t])
        text = f"{key} -> {', '.join(added)}"
        self.web.done(page, "alias.add", f"Alias {text}.", target=key, to=",".join(added))
        return RedirectResponse("/admin/aliases", status_code=303)

    async def alias_delete(self, page: Page) -> Response:
        alias = page.field("alias")
        await self.backend.delete_alias(alias)
        self.web.done(page, "alias.delete", f"Deleted alias {alias}.", target=alias)
        return RedirectResponse("/admin/aliases", status_code=303)

    # -- DKIM ------------------------------------------------------------------------

    async def dkim(self, page: Page) -> Response:
        result = self.backend.last_check()
        published = [f for f in result.report.findings if f.check == "dns.dkim"] if result else []
        return self.web.render(
            page,
            "admin/dkim.html",
            keys=await self.backend.dkim_keys(),
            domains=self.backend.settings().domains,
            published=published,
            checked=result.when if result else None,
        )

    async def dkim_rotate(self, page: Page) -> Response:
        domain, stage = page.field("domain"), page.form.get("stage") == "1"
        new = await self.backend.dkim_rotate(domain, stage=stage)
        selectors = ", ".join(k.selector for k in new)
        what = "Staged (published, not signing yet)" if stage else "Now signing with"
        self.web.done(
            page,
            "dkim.rotate",
            f"{what}: {selectors}. Publish the records below.",
            domain=domain,
            stage=stage,
            selectors=selectors,
        )
        return RedirectResponse("/admin/dkim", status_code=303)

    # -- certificates ----------------------------------------------------------------

    async def certs(self, page: Page) -> Response:
        status = await self.backend.control("cert.status", {})
        return self.web.render(page, "admin/certs.html", cert=status)

    async def cert_renew(self, page: Page) -> Response:
        force = page.form.get("force") == "on"
        # Shielded: a page that times out must not cancel an ACME order half-way (the
        # certificate page then shows the order's stage).
        renewal = self.backend.control("cert.renew", {"force": force})
        result: dict[str, Any] = await asyncio.shield(renewal)
        if result.get("mode") == "files":
            text = (
                "Certificate files reloaded."
                if result.get("reloaded")
                else ("The certificate files have not changed (nothing to reload).")
            )
        else:
            text = "Renewed." if result.get("renewed") else "Not due for renewal yet."
        self.web.done(page, "cert.renew", text, force=force)
        return RedirectResponse("/admin/certs", status_code=303)

    # -- the outbound queue ----------------------------------------------------------

    async def queue(self, page: Page) -> Response:
        entries = await self.backend.control("queue.list", {})
        return self.web.render(page, "admin/queue.html", entries=entries or [])

    async def queue_show(self, page: Page) -> Response:
        queue_id = page.request.path_params["queue_id"]
        try:
            entry = await self.backend.control("queue.show", {"id": queue_id})
        except WebError as exc:  # "no such message in the queue"
            return self.web.refuse(page, 404, str(exc))
        if entry is None:
            return self.web.refuse(page, 404, f"No message {queue_id} in the queue.")
        return self.web.render(page, "admin/queue_show.html", entry=entry)

    async def queue_flush(self, page: Page) -> Response:
        queue_id = page.field("id")
        count = await self.backend.control("queue.flush", {"id": queue_id} if queue_id else {})
        text = f"Flushed: {count} recipient(s) scheduled for immediate delivery."
        self.web.done(page, "queue.flush", text, queue_id=queue_id or "all")
        return RedirectResponse("/admin/queue", status_code=303)

    async def queue_delete(self, page: Page) -> Response:
        queue_id = page.field("id")
        if not await self.backend.control("queue.delete", {"id": queue_id}):
            raise WebError(f"No message {queue_id} in the queue.")
        self.web.done(page, "queue.delete", f"Deleted {queue_id} (no bounce).", queue_id=queue_id)
        return RedirectResponse("/admin/queue", status_code=303)

    # -- recent log events -----------------------------------------------------------

    async def log(self, page: Page) -> Response:
        needle = page.request.query_params.get("q", "").strip()[:200]
        lines = self.backend.recent_log(needle, MAX_LOG_LINES)
        return self.web.render(page, "admin/log.html", q=needle, lines=lines)


def _score(text: str) -> float | None:
    """A threshold from a form field: "" keeps the configured one."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WebError(f"Not a score: {text!r} (a number such as 5 or 7.5).") from None
    if not -1000 < value < 1000:
        raise WebError(f"A score between -1000 and 1000, not {value:g}.")
    return value

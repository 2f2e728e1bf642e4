"""The POP3 component: listeners ``pop3`` (110, STLS) and ``pop3s`` (995, implicit TLS).

``app.py`` builds it with :func:`make_pop3` after the mail store service is registered (the
same ``services.mail_store`` IMAP uses, so both see one store); each accepted
connection runs one :class:`~pillarbox.pop3.session.Session`. Both listeners share one
:class:`~pillarbox.pop3.maildrop.MaildropLocks`: one POP3 session per user at a time.
"""

from __future__ import annotations

from typing import Any, Protocol

from pillarbox import log
from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.net.listener import Connection, ListenerSpec, TlsMode
from pillarbox.pop3.backend import Pop3Backend
from pillarbox.pop3.maildrop import MaildropLocks
from pillarbox.pop3.session import MIN_IDLE_TIMEOUT, Session, SessionConfig

_log = log.get("pop3")

LISTENERS = (("pop3", TlsMode.STARTTLS), ("pop3s", TlsMode.IMPLICIT))
BUSY_REPLY = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"


def session_config(settings: Any) -> SessionConfig:
    limits = settings.limits
    return SessionConfig(
        hostname=settings.hostname,
        # RFC 1939 §3: an autologout timer MUST allow at least 10 minutes of inactivity.
        idle_timeout=max(float(limits.idle_timeout), MIN_IDLE_TIMEOUT),
        preauth_timeout=float(limits.preauth_timeout),
        max_commands=limits.max_commands,
        max_bad_commands=limits.max_bad_commands,
    )


class Pop3Services(Protocol):
    """The app's services this package reads (``app.Services`` has them)."""

    @property
    def mail_store(self) -> Pop3Backend | None: ...


class Pop3Context(Protocol):
    """The part of the app context this package uses (app.AppContext provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def services(self) -> Pop3Services: ...


class Pop3Component:
    name = "pop3"

    def __init__(self, ctx: Pop3Context, backend: Pop3Backend):
        self.ctx = ctx
        self.backend = backend
        self.config = session_config(ctx.settings)
        self.locks = MaildropLocks()

    def listeners(self) -> list[ListenerSpec]:
        listen = self.ctx.settings.listen
        return [
            ListenerSpec(name, host, port, mode, self.handle, BUSY_REPLY, own_transport=True)
            for name, mode in LISTENERS
            for host, port in listen.addresses(name)
        ]

    async def handle(self, conn: Connection) -> None:
        session = Session(conn, self.config, self.ctx.authenticator, self.backend, self.locks)
        await session.run()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def reload(self, ctx: Pop3Context) -> None:
        self.ctx = ctx
        self.config = session_config(ctx.settings)


def make_pop3(ctx: Pop3Context) -> Pop3Component | None:
    """The POP3 component, or None when neither POP3 listener is enabled."""
    enabled = ctx.settings.listen.enabled()
    if not any(name in enabled for name, _ in LISTENERS):
        return None
    backend = ctx.services.mail_store
    if backend is None:
        _log.warning("pop3 disabled", reason="no mail store service")
        return None
    return Pop3Component(ctx, backend)

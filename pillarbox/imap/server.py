"""The IMAP component: listeners ``imap`` (143, STARTTLS) and ``imaps`` (993, implicit TLS).

``app.py`` builds it with :func:`make_imap` once the mail store service is registered; each
accepted connection runs one :class:`~pillarbox.imap.session.Session`.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from pillarbox import log
from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.imap.backend import MailBackend
from pillarbox.imap.grammar import Limits
from pillarbox.imap.session import Session, SessionConfig
from pillarbox.net.listener import Connection, ListenerSpec, TlsMode

_log = log.get("imap")

LISTENERS = (("imap", TlsMode.STARTTLS), ("imaps", TlsMode.IMPLICIT))
# Sent before closing a connection refused or cut for the connection caps.
BUSY_REPLY = b"* BYE too many connections\r\n"


def session_config(settings: Any) -> SessionConfig:
    limits = settings.limits
    return SessionConfig(
        hostname=settings.hostname,
        idle_timeout=float(limits.imap_idle_timeout),
        preauth_timeout=float(limits.preauth_timeout),
        data_timeout=float(limits.data_timeout),
        min_data_rate=float(limits.min_data_rate),
        limits=Limits(
            max_line=limits.imap_max_line,
            max_message_literal=limits.imap_max_literal,
            max_command=limits.imap_max_literal + (1 << 20),
        ),
    )


class ImapServices(Protocol):
    """The app's services this package reads (``app.Services`` has them)."""

    @property
    def mail_store(self) -> MailBackend | None: ...


class ImapContext(Protocol):
    """The part of the app context this package uses (app.AppContext provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def services(self) -> ImapServices: ...


class ImapComponent:
    name = "imap"

    def __init__(self, ctx: ImapContext, backend: MailBackend):
        self.ctx = ctx
        self.backend = backend
        self.config = session_config(ctx.settings)

    def listeners(self) -> list[ListenerSpec]:
        listen = self.ctx.settings.listen
        return [
            # TLS on the socket itself: what an idle IMAP connection costs is mostly TLS.
            ListenerSpec(name, host, port, mode, self.handle, BUSY_REPLY, own_transport=True)
            for name, mode in LISTENERS
            for host, port in listen.addresses(name)
        ]

    def handle(self, conn: Connection) -> Coroutine[Any, Any, None]:
        # The session's own coroutine, not one awaiting it: a frame less for each of
        # thousands of idle sessions.
        return Session(conn, self.config, self.ctx.authenticator, self.backend).run()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def reload(self, ctx: ImapContext) -> None:
        self.ctx = ctx
        self.config = session_config(ctx.settings)


def make_imap(ctx: ImapContext) -> ImapComponent | None:
    """The IMAP component, or None when neither IMAP listener is enabled."""
    enabled = ctx.settings.listen.enabled()
    if not any(name in enabled for name, _ in LISTENERS):
        return None
    backend = ctx.services.mail_store
    if backend is None:
        _log.warning("imap disabled", reason="no mail store service")
        return None
    return ImapComponent(ctx, backend)

"""The ManageSieve component: listener ``managesieve`` (4190, STARTTLS before AUTHENTICATE).

``app.py`` builds it with :func:`make_managesieve`, handing it the Sieve backend (the
script storage and the checker, see :mod:`pillarbox.managesieve.backend`); each accepted
connection runs one :class:`~pillarbox.managesieve.session.Session`.
"""

from __future__ import annotations

from typing import Any, Protocol

from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.managesieve.backend import SieveBackend
from pillarbox.managesieve.session import Session, SessionConfig
from pillarbox.net.listener import Connection, ListenerSpec, TlsMode

LISTENER = "managesieve"
# Sent before closing a connection refused or cut for the connection caps (RFC 5804 §1.3).
BUSY_REPLY = b'BYE (TRYLATER) "too many connections, try again later"\r\n'


def session_config(settings: Any) -> SessionConfig:
    limits = settings.limits
    return SessionConfig(
        hostname=settings.hostname,
        idle_timeout=float(limits.idle_timeout),
        preauth_timeout=float(limits.preauth_timeout),
        data_timeout=float(limits.data_timeout),
        min_data_rate=float(limits.min_data_rate),
        max_commands=limits.max_commands,
        max_bad_commands=limits.max_bad_commands,
    )


class ManageSieveContext(Protocol):
    """The part of the app context this package uses (app.AppContext provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def authenticator(self) -> Authenticator: ...


class ManageSieveComponent:
    name = "managesieve"

    def __init__(self, ctx: ManageSieveContext, backend: SieveBackend):
        self.ctx = ctx
        self.backend = backend
        self.config = session_config(ctx.settings)

    def listeners(self) -> list[ListenerSpec]:
        return [
            ListenerSpec(LISTENER, host, port, TlsMode.STARTTLS, self.handle, BUSY_REPLY)
            for host, port in self.ctx.settings.listen.addresses(LISTENER)
        ]

    async def handle(self, conn: Connection) -> None:
        await Session(conn, self.config, self.ctx.authenticator, self.backend).run()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def reload(self, ctx: ManageSieveContext) -> None:
        self.ctx = ctx
        self.config = session_config(ctx.settings)

"""The SMTP component: listeners for ports 25, 587 and 465 running our own sessions.

Why our own session rather than aiosmtpd
----------------------------------------
aiosmtpd is a fine library, but three of its design choices conflict with requirements here:

* DATA is collected in memory (``Envelope.content`` holds the whole message, and its line
  loop appends one ``bytes`` per line), so a 50 MB message costs 50 MB+ of RAM per session
  and a Python iteration per line. We need streaming to disk with bounded memory and a
  per-*chunk*, not per-line, cost: ``smtp/dataread.py`` scans 64 KiB chunks with
  ``bytes.find``/``count``/``replace`` and spills big messages to a spool file from a
  worker thread.
* Commands are dispatched by reflection (``smtp_*`` methods found with ``dir()``, handler
  hooks the same way) and reply texts are literals at each use site. We want the allowed
  commands per state as data, every reply a named constant with its enhanced code
  (``codes.py``), and parsing separate from semantics (``parse.py`` is pure).
* Policy hooks return reply strings, which makes it easy for internals to reach the wire;
  our backend returns ``Reply`` constants, and an exception becomes a generic 451.

The session is about 650 lines; the gain is control over memory, CPU per message, the
STARTTLS buffer discard (RFC 3207 §4.2), bare-LF handling (SMTP smuggling) and BDAT.

Performance notes
-----------------
The hot path per message is: one bounded ``readline`` per command from our own buffer
(one watchdog timer per connection instead of a timeout context per read), pipelined
replies joined into one write, DATA checked per 64 KiB chunk with C-speed bytes methods
(no regex, no per-line Python), one primary-key SQLite read per recipient at RCPT (WAL: no
writer blocks it; the result is reused at delivery), and the Maildir write in
``store/maildir.py``: ``O_TMPFILE`` + fsync + ``linkat`` into new/ in parallel
worker threads, with the fsyncs of new/ group-committed across concurrent deliveries,
then the index row (``MailStore.deliver``: one WAL commit, no fsync, per batch of
concurrent deliveries to a user). Measured before the index row (bench/smtp_compare.py, 20
sessions of 4 KB messages on the 2-core box, same run for both): 1.3-2.0x Postfix's
throughput at 0.25-0.45x its CPU per message; a 50 MB message raises the server's RSS by
about 2 MB.

Several processes: every piece of per-message state is either in the session or on disk
under names that embed the queue id (time + random, unique across processes), so the MX
listener runs in N intake worker processes (``[smtp] intake_workers``, one per core by
default) on ``SO_REUSEPORT`` sockets: ``handoff`` makes its ``ListenerSpec`` one the main
process binds and hands over instead of accepting on it. The workers' backend hands
accepted messages to the main process, which stores them; see
``pillarbox/delivery/intake.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.net.listener import Connection, ListenerSpec, SocketHandoff, TlsMode
from pillarbox.smtp.session import (
    Authenticator,
    ListenerKind,
    MailBackend,
    SmtpConfig,
    SmtpSession,
)

_log = log.get("smtp")

BUSY_REPLY = b"421 4.7.0 Too many connections, try again later\r\n"
# Listener name -> (kind, TLS mode). RFC 8314 §3.3: 465 is submission over implicit TLS.
LISTENERS: dict[str, tuple[ListenerKind, TlsMode]] = {
    "smtp": (ListenerKind.MX, TlsMode.STARTTLS),
    "submission": (ListenerKind.SUBMISSION, TlsMode.STARTTLS),
    "submissions": (ListenerKind.SUBMISSION, TlsMode.IMPLICIT),
}
STALE_SPOOL_AGE = 3600.0


class _HasSettings(Protocol):
    @property
    def settings(self) -> Settings: ...


def spool_dir(settings: Settings) -> Path:
    """Where DATA of messages too big for memory is spooled while it is received."""
    return settings.data_dir / "spool" / "smtp"


def session_config(settings: Settings, kind: ListenerKind) -> SmtpConfig:
    limits = settings.limits
    return SmtpConfig(
        hostname=settings.hostname,
        kind=kind,
        spool_dir=spool_dir(settings),
        max_message_size=settings.delivery.max_message_size,
        max_recipients=limits.max_recipients,
        max_command_line=limits.max_command_line,
        max_data_line=limits.max_data_line,
        max_commands=limits.max_commands,
        max_bad_commands=limits.max_bad_commands,
        idle_timeout=float(limits.idle_timeout),
        command_timeout=float(limits.command_timeout),
        preauth_timeout=float(limits.preauth_timeout),
        data_timeout=float(limits.data_timeout),
        min_data_rate=float(limits.min_data_rate),
        trusted_networks=tuple(ipaddress.ip_network(n) for n in settings.smtp.trusted_networks),
        require_tls=settings.smtp.require_tls,
    )


class SmtpServer:
    """The ``smtp`` component (see the module docstring)."""

    name = "smtp"

    def __init__(
        self,
        settings: Settings,
        backend: MailBackend,
        authenticator: Authenticator,
        handoff: Callable[[str], SocketHandoff] | None = None,
    ):
        self.settings = settings
        self.backend = backend
        self.authenticator = authenticator
        # The MX listener served by intake worker processes (pillarbox.delivery.intake):
        # bound here, accepted there.
        self.handoff = handoff
        self._configs = self._build_configs(settings)
        self._sessions: set[SmtpSession] = set()
        self._closing_watch: asyncio.Task[None] | None = None

    @staticmethod
    def _build_configs(settings: Settings) -> dict[str, SmtpConfig]:
        return {name: session_config(settings, kind) for name, (kind, _) in LISTENERS.items()}

    def listeners(self) -> list[ListenerSpec]:
        listen = self.settings.listen
        return [
            ListenerSpec(
                name, host, port, tls, self.handle, BUSY_REPLY, handoff=self._handoff(name)
            )
            for name, (_, tls) in LISTENERS.items()
            for host, port in listen.addresses(name)
        ]

    def _handoff(self, listener: str) -> SocketHandoff | None:
        """Only port 25 goes to the workers: it has no AUTH, so no login state to share;
        submission stays here with the authenticator."""
        if self.handoff is None or LISTENERS[listener][0] is not ListenerKind.MX:
            return None
        return self.handoff(listener)

    async def handle(self, conn: Connection) -> None:
        config = self._configs[conn.listener]
        session = SmtpSession(conn, config, self.backend, self.authenticator)
        if self._closing_watch is None:
            self._closing_watch = asyncio.create_task(self._on_closing(conn.closing))
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)

    async def _on_closing(self, closing: asyncio.Event) -> None:
        """One task for all sessions: on shutdown, idle sessions answer 421 at once."""
        await closing.wait()
        for session in list(self._sessions):
            session.interrupt_if_idle()

    async def start(self) -> None:
        directory = spool_dir(self.settings)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        removed = remove_stale_spool_files(directory, STALE_SPOOL_AGE)
        if removed:
            _log.info("removed stale spool files", count=removed)

    async def stop(self) -> None:
        if self._closing_watch is not None:
            self._closing_watch.cancel()

    async def reload(self, ctx: _HasSettings) -> None:
        self.settings = ctx.settings
        self._configs = self._build_configs(ctx.settings)


def remove_stale_spool_files(directory: Path, max_age: float) -> int:
    """Spool files of sessions that died with the process (never acknowledged to anyone)."""
    cutoff = time.time() - max_age
    removed = 0
    for entry in os.scandir(directory):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed

"""Listeners: the one seam through which every protocol receives connections.

A protocol package exposes an async ``handler(conn: Connection)``; ``app`` pairs it with a
``ListenerSpec`` (name, address, TLS mode) and ``Listeners`` runs them all: it accepts,
enforces the connection caps (in total and per client IP), does the implicit-TLS handshake
with the *current* server context, and on shutdown stops accepting, tells sessions to wind
down, and cancels those still busy after the grace period.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import itertools
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from pillarbox import log
from pillarbox.tls.context import TlsInfo, TlsProvider

_log = log.get("net")
_conn_ids = itertools.count(1)

# Seconds a client has to finish the TLS handshake; slow-loris protection.
HANDSHAKE_TIMEOUT = 30.0
# asyncio's StreamReader buffer limit: protocol readers read bounded lines themselves.
STREAM_LIMIT = 1 << 16

# asyncio keeps a receive buffer of SSLProtocol.max_size (256 KiB) for the whole life of
# every TLS connection, idle or not: 13 idle IMAP clients would cost more than a DATA
# transfer. 4 KiB keeps an idle TLS session near 20 KB (measured; see docs/BENCHMARKS.md)
# and only means more, smaller socket reads for bulk transfers.
TLS_RECEIVE_BUFFER = 4096
asyncio.sslproto.SSLProtocol.max_size = TLS_RECEIVE_BUFFER


class TlsMode(Enum):
    NONE = "none"  # plain only (e.g. http)
    STARTTLS = "starttls"  # plain, upgraded by a protocol command
    IMPLICIT = "implicit"  # TLS from the first byte (465, 993, 995, 443)


class Connection:
    """One accepted client connection, handed to a protocol handler."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: str,
        tls: TlsProvider | None,
        closing: asyncio.Event,
    ):
        self.reader = reader
        self.writer = writer
        self.listener = listener
        self.id = f"{next(_conn_ids):x}"
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        self.peer_ip: str = peer[0]
        self.peer_port: int = peer[1]
        self.local_ip: str = local[0]
        self.local_port: int = local[1]
        self._tls = tls
        self.tls: TlsInfo | None = TlsInfo.of(writer.get_extra_info("ssl_object"))
        # Set when the server shuts down: sessions say goodbye at the next command.
        self.closing = closing

    @property
    def tls_available(self) -> bool:
        return self._tls is not None

    async def start_tls(self) -> None:
        """Upgrade to TLS with the current server context (STARTTLS).

        Call ``prepare_starttls`` before answering the command, then this after."""
        if self._tls is None:
            raise RuntimeError("TLS is not configured for this listener")
        await asyncio.wait_for(self.writer.start_tls(self._tls.current()), HANDSHAKE_TIMEOUT)
        self.tls = TlsInfo.of(self.writer.get_extra_info("ssl_object"))

    def prepare_starttls(self) -> int:
        """Call before answering a STARTTLS/STLS command: stop reading, then drop what was
        already read; returns how many bytes were dropped.

        The order matters. Plaintext pipelined behind the command must never count as
        sent under TLS (RFC 3207 §4.2, RFC 2595 §3.1: the 2011 command-injection bugs),
        and the ClientHello the client sends after our answer must stay in the socket for
        the TLS layer; dropping the buffer *after* answering races with it."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.Transport)  # a stream socket: reads and writes
        transport.pause_reading()
        # StreamReader has no public way to drop its buffer; it is a bytearray.
        buffer = getattr(self.reader, "_buffer", None)
        if buffer is None:
            return 0
        dropped = len(buffer)
        buffer.clear()
        return dropped

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


Handler = Callable[[Connection], Awaitable[None]]


@dataclass
class ListenerSpec:
    name: str
    host: str
    port: int
    tls: TlsMode
    handler: Handler
    # Optional text sent, then the socket closed, when the connection caps are exceeded
    # (for SMTP a 421 reply, RFC 5321 §3.8; for IMAP a BYE).
    busy_reply: bytes = b""


@dataclass
class ConnectionLimits:
    max_total: int = 1000
    max_per_ip: int = 50


@dataclass
class _Bound:
    spec: ListenerSpec
    server: asyncio.Server
    address: tuple[str, int] = ("", 0)


@dataclass
class Listeners:
    """Runs a set of listeners; see the module docstring."""

    tls: TlsProvider | None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    _bound: list[_Bound] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _per_ip: Counter[str] = field(default_factory=Counter)

    async def bind(self, specs: list[ListenerSpec]) -> dict[str, tuple[str, int]]:
        """Bind every listener (before privileges are dropped); returns the real addresses."""
        for spec in specs:
            sock = _make_socket(spec.host, spec.port)
            # Implicit TLS is done by asyncio itself: calling start_tls after accepting would
            # lose a ClientHello already read into the stream buffer.
            implicit = spec.tls is TlsMode.IMPLICIT and self.tls is not None
            server = await asyncio.start_server(
                functools.partial(self._accept, spec),
                sock=sock,
                limit=STREAM_LIMIT,
                start_serving=False,
                ssl=self.tls.front() if implicit and self.tls else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None,
            )
            address = sock.getsockname()[:2]
            self._bound.append(_Bound(spec, server, (address[0], address[1])))
        return self.addresses()

    def addresses(self) -> dict[str, tuple[str, int]]:
        return {b.spec.name: b.address for b in self._bound}

    async def start(self) -> None:
        for bound in self._bound:
            await bound.server.start_serving()
            _log.info(
                "listening",
                listener=bound.spec.name,
                address=f"{bound.address[0]}:{bound.address[1]}",
                tls=bound.spec.tls.value,
            )

    async def _accept(
        self, spec: ListenerSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(
            reader,
            writer,
            spec.name,
            self.tls if spec.tls is not TlsMode.NONE else None,
            self.closing,
        )
        if (
            len(self._tasks) >= self.limits.max_total
            or self._per_ip[conn.peer_ip] >= self.limits.max_per_ip
        ):
            _log.warning(
                "connection refused",
                listener=spec.name,
                client=conn.peer_ip,
                reason="too many connections",
            )
            if spec.busy_reply and spec.tls is not TlsMode.IMPLICIT:
                with contextlib.suppress(Exception):
                    writer.write(spec.busy_reply)
            await conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._per_ip[conn.peer_ip] += 1
        try:
            await self._run(spec, conn)
        finally:
            self._tasks.discard(task)
            self._per_ip[conn.peer_ip] -= 1
            if self._per_ip[conn.peer_ip] <= 0:
                del self._per_ip[conn.peer_ip]
            await conn.close()

    async def _run(self, spec: ListenerSpec, conn: Connection) -> None:
        try:
            await spec.handler(conn)
        except (TimeoutError, ssl.SSLError, ConnectionError) as exc:
            _log.info(
                "connection ended",
                listener=spec.name,
                conn=conn.id,
                client=conn.peer_ip,
                reason=type(exc).__name__,
            )
        except asyncio.CancelledError:
            # Only ``stop`` cancels sessions (after the grace period). The task must end
            # normally: asyncio 3.11's stream callback calls task.exception() on it, which
            # re-raises a cancellation and prints a traceback.
            _log.info(
                "session cut off",
                listener=spec.name,
                conn=conn.id,
                client=conn.peer_ip,
                reason="shutdown grace period over",
            )
        except Exception:
            _log.error("session crashed", listener=spec.name, conn=conn.id, exc_info=True)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let sessions finish for up to ``grace`` seconds, cancel the rest."""
        for bound in self._bound:
            bound.server.close()
        self.closing.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        for bound in self._bound:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bound.server.wait_closed(), 1)

    @property
    def active_connections(self) -> int:
        return len(self._tasks)


def _make_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(512)
    sock.setblocking(False)
    return sock

"""Listeners: the one seam through which every protocol receives connections.

A protocol package exposes an async ``handler(conn: Connection)``; ``app`` pairs it with a
``ListenerSpec`` (name, address, TLS mode) and ``Listeners`` runs them all. Each listener
has its own accept loop, so every decision about a new client is made on the bare socket,
before a byte of TLS is spent on it: a banned address is closed at once, and the
connection caps (:class:`ConnectionLimits`: in total, per listener, per client — an IPv6
client by its /64 — with the last slots of the total kept for sessions that have logged
in) are applied. When a cap is reached, the oldest connection that is idle and has not
logged in is cut to make room, so a crowd of silent connections cannot lock real users
out; only when none can be cut is the newcomer refused. The implicit-TLS handshake is then
done by asyncio with the *current* server context; on shutdown the listeners stop
accepting, tell sessions to wind down, and cancel those still busy after the grace period.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ipaddress
import itertools
import socket
import ssl
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from pillarbox import log
from pillarbox.core.clientaddr import client_key, in_networks
from pillarbox.net import deflate
from pillarbox.net.proxyproto import (
    PEEK,
    ProxiedAddress,
    ProxyHeaderError,
    header_length,
    parse_header,
)
from pillarbox.net.stream import LineStream
from pillarbox.net.transport import SocketTransport
from pillarbox.tls.context import TlsInfo, TlsProvider

_log = log.get("net")
_conn_ids = itertools.count(1)
_conn_prefix = ""


def name_connections(prefix: str) -> None:
    """Connection ids of this process begin with ``prefix`` (an SMTP intake worker's
    number), so that the log lines of several processes never share a ``conn=``."""
    global _conn_prefix
    _conn_prefix = prefix


# Seconds a client has to finish the TLS handshake; slow-loris protection.
HANDSHAKE_TIMEOUT = 30.0
# Seconds a trusted proxy has to send its PROXY header: it sends it at once.
PROXY_HEADER_TIMEOUT = 5.0
# asyncio's StreamReader buffer limit: protocol readers read bounded lines themselves.
STREAM_LIMIT = 1 << 16
# Why a new client is refused for the caps (``Listeners._admit``); told to those who are.
CLIENT_FULL = "too many connections from this address"
LISTENER_FULL = "too many connections on this listener"
SERVER_FULL = "too many connections"
# Connections taken in one go after a wait in accept (asyncio's own servers take up to
# their backlog): bounded, so a flood of connects cannot keep the loop from the sessions.
ACCEPT_BURST = 32

# Seconds a closing connection may take to send what is queued (then it is dropped).
CLOSE_TIMEOUT = 2.0
# Output a session may leave unsent before it waits for the client to read (asyncio's
# default high-water mark is 64 KiB).
WRITE_BACKLOG = 1 << 16

# asyncio keeps a receive buffer of SSLProtocol.max_size (256 KiB) for the whole life of
# every TLS connection, idle or not: 13 idle IMAP clients would cost more than a DATA
# transfer. 4 KiB keeps an idle TLS session near 20 KB (measured; see docs/BENCHMARKS.md)
# and only means more, smaller socket reads for bulk transfers.
TLS_RECEIVE_BUFFER = 4096
asyncio.sslproto.SSLProtocol.max_size = TLS_RECEIVE_BUFFER


def _send_alert_then_complete(
    complete: Callable[[asyncio.sslproto.SSLProtocol, BaseException | None], None],
) -> Callable[[asyncio.sslproto.SSLProtocol, BaseException | None], None]:
    """asyncio drops the alert OpenSSL writes when a handshake fails (it closes without
    sending what is left in the TLS output), so a TLS 1.0/1.1 client saw a silent close
    instead of the protocol_version alert RFC 8446 §6.2 and RFC 5246 §7.2.2 call for, and
    could not tell "too old" from "network trouble". Send that output first."""

    def on_handshake_complete(
        protocol: asyncio.sslproto.SSLProtocol, handshake_exc: BaseException | None
    ) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                protocol._process_outgoing()  # type: ignore[attr-defined]
        complete(protocol, handshake_exc)

    return on_handshake_complete


_SSLProtocol: Any = asyncio.sslproto.SSLProtocol  # patching a private method: untyped
_SSLProtocol._on_handshake_complete = _send_alert_then_complete(_SSLProtocol._on_handshake_complete)


class TlsMode(Enum):
    NONE = "none"  # plain only (e.g. http)
    STARTTLS = "starttls"  # plain, upgraded by a protocol command
    IMPLICIT = "implicit"  # TLS from the first byte (465, 993, 995, 443)


class AsyncioStreams:
    """A connection's I/O through asyncio's streams (``StreamReader``/``StreamWriter``): the
    listeners whose protocols read the streams themselves (SMTP, HTTP, ManageSieve)."""

    __slots__ = ("_wait", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self._wait: asyncio.Timeout | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.writer.get_extra_info(name, default)

    @property
    def transport(self) -> asyncio.Transport:
        transport = self.writer.transport
        assert isinstance(transport, asyncio.Transport)  # a stream socket: reads and writes
        return transport

    async def read_line(self, seconds: float) -> bytes:
        async with asyncio.timeout(seconds) as wait:
            self._wait = wait
            try:
                return await self.reader.readuntil(b"\n")
            finally:
                self._wait = None

    async def read_exactly(self, size: int, seconds: float) -> bytes:
        async with asyncio.timeout(seconds):
            return await self.reader.readexactly(size)

    def interrupt(self) -> None:
        if self._wait is not None and not self._wait.expired():
            self._wait.reschedule(asyncio.get_running_loop().time())

    def buffered(self) -> int:
        # StreamReader has no public way to look at its buffer; it is a bytearray.
        return len(getattr(self.reader, "_buffer", b""))

    def drop_buffered(self) -> int:
        # StreamReader has no public way to drop its buffer; it is a bytearray.
        buffer = getattr(self.reader, "_buffer", None)
        if buffer is None:
            return 0
        dropped = len(buffer)
        buffer.clear()
        return dropped

    def write(self, data: bytes | bytearray) -> None:
        self.writer.write(data)

    def write_backlog(self) -> int:
        return self.transport.get_write_buffer_size()

    async def drain(self, seconds: float) -> None:
        if self.write_backlog() <= WRITE_BACKLOG:
            await self.writer.drain()  # nothing to wait for: no timer on the hot path
            return
        await asyncio.wait_for(self.writer.drain(), seconds)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    async def start_tls(self, context: ssl.SSLContext, seconds: float) -> None:
        await asyncio.wait_for(self.writer.start_tls(context), seconds)

    def start_deflate(self) -> None:
        self.writer = deflate.start(self.reader, self.writer)

    def abort(self) -> None:
        self.transport.abort()

    async def close(self, seconds: float) -> None:
        self.writer.close()
        try:
            # asyncio.timeout, not wait_for: no extra task per connection closed.
            async with asyncio.timeout(seconds):
                await self.writer.wait_closed()
        except TimeoutError:
            # A client that does not read keeps the output (and the socket) queued for
            # ever: drop them.
            self.transport.abort()


# How a Connection reads and writes: LineStream (net/stream.py) on the listeners with the own
# transport, asyncio's streams on the others; both have the methods Connection delegates to.
ConnectionIO = LineStream | AsyncioStreams


class Connection:
    """One accepted client connection, handed to a protocol handler.

    Sessions tell the listener two things about it: ``idle`` while they wait for a command
    before login (such a connection may be cut to make room, see :class:`Listeners`), and
    ``mark_authenticated()`` once a user has logged in (it then counts against the slots
    reserved for logged-in sessions, and is never cut).

    Reading and writing: :meth:`read_line`, :meth:`read_exactly`, :meth:`write` and
    :meth:`drain` work on every listener; ``reader``/``writer`` (asyncio's streams) only on
    a listener without ``own_transport``, whose protocols use the streams themselves."""

    # Slots: one of these lives as long as each connection (2,000 idle IMAP sessions).
    __slots__ = (
        "_io",
        "_tls",
        "authenticated",
        "client",
        "closing",
        "compressed",
        "id",
        "idle",
        "listener",
        "local_ip",
        "local_port",
        "on_authenticated",
        "peer_ip",
        "peer_port",
        "tls",
        "via",
    )

    def __init__(
        self,
        io: ConnectionIO,
        listener: str,
        tls: TlsProvider | None,
        closing: asyncio.Event,
        proxied: ProxiedAddress | None = None,
    ):
        self._io = io
        self.listener = listener
        self.id = f"{_conn_prefix}{next(_conn_ids):x}"
        # Behind a proxy, the client and the address it reached are the ones the PROXY
        # header names; the socket's own peer is the proxy (kept in ``via``).
        own_peer = io.get_extra_info("peername") or ("", 0)
        peer = proxied.client if proxied and proxied.client else own_peer
        local = (proxied.server if proxied else None) or io.get_extra_info("sockname")
        local = local or ("", 0)
        self.via: str = own_peer[0] if proxied else ""
        # Interned: the connections from one client, or to one address, share the string.
        self.peer_ip: str = sys.intern(peer[0])
        self.peer_port: int = peer[1]
        self.local_ip: str = sys.intern(local[0])
        self.local_port: int = local[1]
        self.client = sys.intern(client_key(self.peer_ip))
        self._tls = tls
        self.tls: TlsInfo | None = TlsInfo.of(io.get_extra_info("ssl_object"))
        # Set when the server shuts down: sessions say goodbye at the next command.
        self.closing = closing
        # Waiting for a command with nothing in progress, before login.
        self.idle = False
        self.authenticated = False
        self.compressed = False
        self.on_authenticated: Callable[[Connection], None] | None = None

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._streams().reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self._streams().writer

    def _streams(self) -> AsyncioStreams:
        if not isinstance(self._io, AsyncioStreams):
            raise TypeError(f"{self.listener}: no asyncio streams on the own transport")
        return self._io

    @property
    def transport(self) -> asyncio.Transport:
        """The transport under the session (a DeflateTransport once COMPRESS is on)."""
        return self._io.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._io.get_extra_info(name, default)

    @property
    def tls_available(self) -> bool:
        return self._tls is not None

    def mark_authenticated(self) -> None:
        if not self.authenticated:
            self.authenticated = True
            self.idle = False
            if self.on_authenticated is not None:
                self.on_authenticated(self)

    async def start_tls(self) -> None:
        """Upgrade to TLS with the current server context (STARTTLS).

        Call ``prepare_starttls`` before answering the command, then this after."""
        if self._tls is None:
            raise RuntimeError("TLS is not configured for this listener")
        await self._io.start_tls(self._tls.current(), HANDSHAKE_TIMEOUT)
        self.tls = TlsInfo.of(self._io.get_extra_info("ssl_object"))

    def read_line(self, seconds: float) -> Awaitable[bytes]:
        """Await it for the next line from the client; TimeoutError after ``seconds`` or
        at :meth:`interrupt`. The wait runs in the caller's task: an idle session holds no
        helper task and no future per thing it waits for (2,000 IDLE sessions add up),
        and no frame of this method (it hands over the stream's future).
        ``asyncio.LimitOverrunError`` for a line beyond the stream's limit,
        ``asyncio.IncompleteReadError`` at the client's EOF."""
        if self.closing.is_set():
            raise TimeoutError
        return self._io.read_line(seconds)

    async def read_exactly(self, size: int, seconds: float) -> bytes:
        """``size`` bytes (a literal); TimeoutError after ``seconds``."""
        return await self._io.read_exactly(size, seconds)

    def interrupt(self) -> None:
        """End the current :meth:`read_line` now (shutdown; news for an IDLE session).
        What was already read of a line stays buffered for the next read."""
        self._io.interrupt()

    def write(self, data: bytes | bytearray) -> None:
        """Queue ``data`` for the client (sent at once if the socket takes it; the caller
        must not change a bytearray it handed over)."""
        self._io.write(data)

    def start_deflate(self) -> None:
        """From now on, inflate what the client sends and deflate what we send (IMAP
        COMPRESS, RFC 4978). Call after the OK has been written, with nothing buffered."""
        self._io.start_deflate()
        self.compressed = True

    def buffered_input(self) -> int:
        """How many bytes the client sent that no one has read yet."""
        return self._io.buffered()

    def prepare_starttls(self) -> int:
        """Call before answering a STARTTLS/STLS command: stop reading, then drop what was
        already read; returns how many bytes were dropped.

        The order matters. Plaintext pipelined behind the command must never count as
        sent under TLS (RFC 3207 §4.2, RFC 2595 §3.1: the 2011 command-injection bugs),
        and the ClientHello the client sends after our answer must stay in the socket for
        the TLS layer; dropping the buffer *after* answering races with it."""
        self._io.pause_reading()
        return self._io.drop_buffered()

    async def drain(self, seconds: float) -> None:
        """Wait until the output is down to the stream's high-water mark, for at most
        ``seconds``: a client that stops reading must not hold a session (and its
        buffers) for ever. TimeoutError ends the session."""
        await self._io.drain(seconds)

    def cut(self, goodbye: bytes) -> None:
        """End the connection now (to make room for others): say ``goodbye`` if there is
        one, then close without waiting for a client that may not read. The session sees
        the connection end and finishes normally."""
        with contextlib.suppress(Exception):
            if goodbye:
                self._io.write(goodbye)
            self._io.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._io.close(CLOSE_TIMEOUT)


Handler = Callable[[Connection], Awaitable[None]]


@dataclass
class ListenerSpec:
    name: str
    host: str
    port: int
    tls: TlsMode
    handler: Handler
    # Optional text sent when a connection is cut to make room or refused for the caps,
    # then the socket closed (for SMTP a 421 reply, RFC 5321 §3.8; for IMAP a BYE). A
    # refused client on an implicit-TLS listener gets no text: it is refused before the
    # handshake, which is the point.
    busy_reply: bytes = b""
    # Pillarbox's own SocketTransport (net/transport.py: TLS on the socket, a few KiB less
    # per idle connection) instead of asyncio's socket and SSL transports.
    own_transport: bool = False
    # Accepted by other processes (SMTP intake workers): bind that many sockets and hand
    # them over instead of accepting here. See :class:`SocketHandoff`.
    handoff: SocketHandoff | None = None


@dataclass(frozen=True)
class SocketHandoff:
    """A listener served by ``count`` other processes, each accepting on a socket of its
    own bound to the same address with ``SO_REUSEPORT``: the kernel spreads connections
    over them, with no thundering herd and no lock. The sockets are bound here (before
    privileges are dropped: port 25) and given to ``adopt``; this process keeps them open,
    so a worker that dies leaves its queued connections waiting for its successor."""

    count: int
    adopt: Callable[[list[socket.socket]], None]


class Admission(Protocol):
    """Who admits an intake worker's clients: the main process, over its channel, so the
    caps and bans hold for the server as a whole (see ``Listeners.admit_remote``)."""

    async def admit(self, listener: str, ip: str) -> str | None: ...

    def release(self, listener: str, ip: str) -> None: ...

    def replace(self, listener: str, ip: str, new_listener: str, new_ip: str) -> None:
        """A connection was cut to make room: the newcomer takes its counted place."""
        ...


@dataclass
class ConnectionLimits:
    max_total: int = 1000
    max_per_listener: int = 500
    max_per_ip: int = 50  # per client key: an IPv4 address or an IPv6 /64
    # The last slots of max_total, usable only by sessions that have logged in: a crowd of
    # connections that never log in cannot take them.
    reserved_for_authenticated: int = 100

    @property
    def max_unauthenticated(self) -> int:
        return max(1, self.max_total - self.reserved_for_authenticated)


def _never_banned(ip: str) -> bool:
    return False


@dataclass(eq=False, slots=True)
class _Entry:
    """An open connection as the caps see it; ``conn`` is None during the TLS handshake.
    It is its connection's ``on_authenticated`` callback (no closure per connection)."""

    owner: Listeners
    spec: ListenerSpec
    client: str
    task: asyncio.Task[None]
    conn: Connection | None = None
    ip: str = ""  # what an intake worker tells the main process when the client is gone

    @property
    def authenticated(self) -> bool:
        return self.conn is not None and self.conn.authenticated

    def may_be_cut(self, listener: str | None) -> bool:
        """Idle before login (or still in its handshake), on ``listener`` if one is named."""
        if listener is not None and self.spec.name != listener:
            return False
        return self.conn is None or (self.conn.idle and not self.conn.authenticated)

    def __call__(self, conn: Connection) -> None:
        self.owner._on_authenticated(self, conn)

    def cut(self) -> None:
        if self.conn is None:
            self.task.cancel()  # a handshake cannot be told goodbye
        else:
            self.conn.cut(self.spec.busy_reply)


@dataclass
class _Bound:
    spec: ListenerSpec
    sock: socket.socket
    address: tuple[str, int] = ("", 0)
    accepting: asyncio.Task[None] | None = None
    handed_off: bool = False  # accepted on by another process (``SocketHandoff``)
    adopted: bool = False  # bound by another process (this is an intake worker)


@dataclass(frozen=True)
class ProxySettings:
    """Which listeners sit behind a proxy that speaks the PROXY protocol, and which
    addresses such a proxy connects from (nobody else may connect to those listeners)."""

    listeners: frozenset[str] = frozenset()
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def of(cls, listeners: tuple[str, ...], trusted: tuple[str, ...]) -> ProxySettings:
        return cls(frozenset(listeners), tuple(ipaddress.ip_network(n) for n in trusted))


@dataclass
class Listeners:
    """Runs a set of listeners; see the module docstring."""

    tls: TlsProvider | None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Whether a client address is banned (the authenticator's bans); checked per accept.
    is_banned: Callable[[str], bool] = _never_banned
    proxy: ProxySettings = field(default_factory=ProxySettings)
    # In an intake worker: the main process admits every client instead of the caps here.
    admission: Admission | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    _bound: list[_Bound] = field(default_factory=list)
    # Connections from a proxy whose PROXY header is still being read: not yet admitted.
    _unheard: set[asyncio.Task[None]] = field(default_factory=set)
    # Open connections in accept order (oldest first), which is the order they are cut in.
    _open: dict[asyncio.Task[None], _Entry] = field(default_factory=dict)
    _per_client: Counter[str] = field(default_factory=Counter)
    _per_listener: Counter[str] = field(default_factory=Counter)
    _unauthenticated: int = 0
    # Connections open in intake workers, which the caps count with this process's own.
    _remote: int = 0

    async def bind(self, specs: list[ListenerSpec]) -> dict[str, tuple[str, int]]:
        """Bind every listener (before privileges are dropped); returns the real addresses."""
        for spec in specs:
            if spec.handoff is not None:
                self._bind_handoff(spec, spec.handoff)
                continue
            sock = _make_socket(spec.host, spec.port)
            address = sock.getsockname()[:2]
            self._bound.append(_Bound(spec, sock, (address[0], address[1])))
        return self.addresses()

    def _bind_handoff(self, spec: ListenerSpec, handoff: SocketHandoff) -> None:
        """``handoff.count`` sockets on one address (the first fixes the port when the
        config says 0); kept in ``_bound`` for the addresses and for ``stop``."""
        socks = [_make_socket(spec.host, spec.port, reuse_port=True)]
        address = socks[0].getsockname()[:2]
        for _ in range(handoff.count - 1):
            socks.append(_make_socket(spec.host, address[1], reuse_port=True))
        for sock in socks:
            self._bound.append(_Bound(spec, sock, (address[0], address[1]), handed_off=True))
        handoff.adopt(socks)

    def adopt(self, spec: ListenerSpec, sock: socket.socket) -> None:
        """Serve ``spec`` on a socket bound elsewhere (an intake worker's, by the main
        process); ``start`` accepts on it like on one of ours."""
        sock.setblocking(False)
        address = sock.getsockname()[:2]
        self._bound.append(_Bound(spec, sock, (address[0], address[1]), adopted=True))

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> its first bound address (see :meth:`all_addresses`)."""
        first: dict[str, tuple[str, int]] = {}
        for bound in self._bound:
            first.setdefault(bound.spec.name, bound.address)
        return first

    def all_addresses(self) -> dict[str, list[tuple[str, int]]]:
        """Listener name -> every address it is bound to, in config order."""
        every: dict[str, list[tuple[str, int]]] = {}
        for bound in self._bound:
            addresses = every.setdefault(bound.spec.name, [])
            if bound.address not in addresses:  # intake workers' sockets share one
                addresses.append(bound.address)
        return every

    async def start(self) -> None:
        announced: set[tuple[str, int]] = set()
        for bound in self._bound:
            if not bound.handed_off:
                self._start_accepting(bound)
            elif bound.address not in announced:  # one line for the workers' sockets
                announced.add(bound.address)
                self._announce(bound, workers=bound.spec.handoff.count if bound.spec.handoff else 0)

    def _start_accepting(self, bound: _Bound) -> None:
        bound.accepting = asyncio.get_running_loop().create_task(self._accept_loop(bound))
        if not bound.adopted:  # the main process announced it
            self._announce(bound)

    def _announce(self, bound: _Bound, workers: int = 0) -> None:
        _log.info(
            "listening",
            listener=bound.spec.name,
            address=format_address(*bound.address),
            tls=bound.spec.tls.value,
            proxy_protocol="yes" if bound.spec.name in self.proxy.listeners else None,
            intake_workers=workers or None,
        )

    async def rebind(self, specs: list[ListenerSpec]) -> list[str]:
        """Make the sockets match ``specs`` (a reload): an address no longer wanted stops
        accepting (its sessions go on), a new one is bound and started, one that stays
        keeps its socket, so no client is refused meanwhile. Returns the errors: an address
        that cannot be bound (in use; a port below 1024 after privileges were dropped
        without CAP_NET_BIND_SERVICE) is reported and skipped, the rest still applies."""
        wanted = {_spec_key(spec): spec for spec in specs}
        kept: list[_Bound] = []
        for bound in self._bound:
            spec = wanted.pop(_spec_key(bound.spec), None)
            if spec is None:
                self._stop_accepting(bound)
                continue
            bound.spec = spec  # the same address; the handler may be a new component's
            kept.append(bound)
        errors = []
        for spec in wanted.values():
            if spec.handoff is not None:
                where = format_address(spec.host, spec.port)
                errors.append(f"{spec.name} on {where}: its intake workers need a restart")
                _log.error("cannot listen", listener=spec.name, address=where,
                           reason="served by intake workers: restart to move it")  # fmt: skip
                continue
            try:
                sock = _make_socket(spec.host, spec.port)
            except OSError as exc:
                where = format_address(spec.host, spec.port)
                errors.append(f"{spec.name} on {where}: {exc.strerror or exc}")
                _log.error("cannot listen", listener=spec.name, address=where, reason=str(exc))
                continue
            address = sock.getsockname()[:2]
            bound = _Bound(spec, sock, (address[0], address[1]))
            kept.append(bound)
            self._start_accepting(bound)
        self._bound = kept
        return errors

    def _stop_accepting(self, bound: _Bound) -> None:
        if bound.accepting is not None:
            bound.accepting.cancel()
        bound.sock.close()
        _log.info(
            "stopped listening", listener=bound.spec.name, address=format_address(*bound.address)
        )

    async def _accept_loop(self, bound: _Bound) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(bound.sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                _log.warning("accept failed", listener=bound.spec.name, reason=str(exc))
                await asyncio.sleep(0.1)
                continue
            self._take(bound.spec, client, peer[0])
            # The connections that queued up meanwhile are taken at once: each wait in
            # sock_accept costs a future and a reader added and removed (two epoll_ctl
            # calls). An error here is left for sock_accept to meet and report.
            for _ in range(ACCEPT_BURST):
                try:
                    client, peer = bound.sock.accept()
                except OSError:
                    break
                client.setblocking(False)
                self._take(bound.spec, client, peer[0])

    def _take(self, spec: ListenerSpec, client: socket.socket, ip: str) -> None:
        if spec.name in self.proxy.listeners:
            self._accept_from_proxy(spec, client, ip)
            return
        if self.admission is not None:
            task = asyncio.get_running_loop().create_task(self._serve_admitted(spec, client, ip))
            self._unheard.add(task)
            task.add_done_callback(self._unheard.discard)
            return
        refusal = self._admit(spec.name, ip)
        if refusal is not None:
            self._refuse(spec, client, ip, refusal)
            return
        task = asyncio.get_running_loop().create_task(self._serve(spec, client))
        self._register(_Entry(self, spec, sys.intern(client_key(ip)), task))

    async def _serve_admitted(
        self, spec: ListenerSpec, client: socket.socket, ip: str,
        proxied: ProxiedAddress | None = None,
    ) -> None:  # fmt: skip
        """An intake worker's client: served once the main process admitted it."""
        assert self.admission is not None
        try:
            refusal = await self.admission.admit(spec.name, ip)
        except (ConnectionError, EOFError) as exc:  # the main process is gone
            refusal = f"no main process to admit it: {type(exc).__name__}"
        except asyncio.CancelledError:
            client.close()
            return
        if refusal is not None:
            refusal = self._make_room(spec.name, refusal, ip)
        if refusal is not None:
            self._refuse(spec, client, ip, refusal)
            return
        task = asyncio.current_task()
        assert task is not None
        self._unheard.discard(task)
        self._register(_Entry(self, spec, sys.intern(client_key(ip)), task, ip=ip))
        await self._serve(spec, client, proxied)

    # -- behind a proxy ----------------------------------------------------------------

    def _accept_from_proxy(self, spec: ListenerSpec, client: socket.socket, ip: str) -> None:
        """A listener behind a proxy: only a trusted proxy may connect, and the caps and
        bans apply to the client its PROXY header names, once it is read."""
        if not in_networks(ip, self.proxy.trusted):
            self._refuse(spec, client, ip, "not a trusted proxy (listen.trusted_proxies)")
            return
        task = asyncio.get_running_loop().create_task(self._serve_proxied(spec, client, ip))
        self._unheard.add(task)
        task.add_done_callback(self._unheard.discard)

    async def _serve_proxied(self, spec: ListenerSpec, client: socket.socket, proxy: str) -> None:
        try:
            async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                proxied = await read_proxy_header(client)
        except (ProxyHeaderError, TimeoutError, OSError) as exc:
            reason = str(exc) if isinstance(exc, ProxyHeaderError) else type(exc).__name__
            self._refuse(spec, client, proxy, f"PROXY header: {reason}")
            return
        except asyncio.CancelledError:
            client.close()  # shutdown while the header was awaited
            return
        ip = proxied.client[0] if proxied.client else proxy
        if self.admission is not None:
            await self._serve_admitted(spec, client, ip, proxied)
            return
        refusal = self._admit(spec.name, ip)
        if refusal is not None:
            self._refuse(spec, client, ip, refusal)
            return
        task = asyncio.current_task()
        assert task is not None
        self._unheard.discard(task)
        self._register(_Entry(self, spec, sys.intern(client_key(ip)), task))
        await self._serve(spec, client, proxied)

    # -- admission ---------------------------------------------------------------------

    def _admit(self, listener: str, ip: str) -> str | None:
        """None to accept a new client from ``ip`` on ``listener``, else why it is refused.

        Before refusing for a full listener or a full server, cut the oldest idle
        connection that has not logged in (on the same listener for the listener cap)."""
        if self.is_banned(ip):
            return "banned"
        limits = self.limits
        if self._per_client[client_key(ip)] >= limits.max_per_ip:
            return CLIENT_FULL
        listener_full = self._per_listener[listener] >= limits.max_per_listener
        if listener_full and not self._cut_oldest_idle(listener):
            return LISTENER_FULL
        server_full = (
            self._unauthenticated >= limits.max_unauthenticated
            or len(self._open) + self._remote >= limits.max_total
        )
        if server_full and not self._cut_oldest_idle(None):
            return SERVER_FULL
        return None

    def _cut_oldest_idle(self, listener: str | None, *, release: bool = True) -> _Entry | None:
        """Cut the oldest connection that may be cut (on ``listener`` if one is named);
        ``release=False`` (an intake worker) keeps its slot in the main process's count
        for the newcomer instead of giving it back."""
        for entry in self._open.values():
            if entry.may_be_cut(listener):
                conn = entry.conn
                _log.info(
                    "connection cut", listener=entry.spec.name, conn=conn.id if conn else None,
                    client=conn.peer_ip if conn else entry.client,
                    reason="idle before login, room needed",
                )  # fmt: skip
                self._forget(entry.task, release=release)
                entry.cut()
                return entry
        return None

    def _make_room(self, listener: str, refusal: str, ip: str) -> str | None:
        """An intake worker's client the main process refused for a full listener or
        server: cut this worker's oldest idle connection, and the newcomer takes its
        place in the main process's count (``Admission.replace``). Other workers' idle
        connections are not cut for it: only this process knows which of its are idle."""
        assert self.admission is not None
        if refusal not in (LISTENER_FULL, SERVER_FULL):
            return refusal
        victim = self._cut_oldest_idle(listener if refusal == LISTENER_FULL else None,
                                       release=False)  # fmt: skip
        if victim is None:
            return refusal
        self.admission.replace(victim.spec.name, victim.ip, listener, ip)
        return None

    def _register(self, entry: _Entry) -> None:
        self._open[entry.task] = entry
        self._per_client[entry.client] += 1
        self._per_listener[entry.spec.name] += 1
        self._unauthenticated += 1
        entry.task.add_done_callback(self._forget)

    # -- clients of intake workers (the main process's side) -----------------------------

    def admit_remote(self, listener: str, ip: str) -> str | None:
        """An intake worker asks to serve a new client: the same decision as for one of
        ours (bans, the per-client, per-listener and total caps), counted here until
        :meth:`release_remote`. A worker's connections cannot be cut from here; a full
        server still cuts one of this process's idle ones to make room."""
        refusal = self._admit(listener, ip)
        if refusal is None:
            self._remote += 1
            self._unauthenticated += 1  # port 25 has no login (the MX listener only)
            self._per_client[client_key(ip)] += 1
            self._per_listener[listener] += 1
        return refusal

    def replace_remote(self, listener: str, ip: str, new_listener: str, new_ip: str) -> None:
        """A worker cut one of its clients to make room for a newcomer the caps refused:
        the newcomer is counted in its place (bans and the per-client cap were passed)."""
        self._uncount(self._per_client, client_key(ip))
        self._uncount(self._per_listener, listener)
        self._per_client[client_key(new_ip)] += 1
        self._per_listener[new_listener] += 1

    def release_remote(self, listener: str, ip: str) -> None:
        """A client :meth:`admit_remote` admitted is gone (or its worker is)."""
        self._remote -= 1
        self._unauthenticated -= 1
        self._uncount(self._per_client, client_key(ip))
        self._uncount(self._per_listener, listener)

    @staticmethod
    def _uncount(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def _on_authenticated(self, entry: _Entry, conn: Connection) -> None:
        if self._open.get(entry.task) is entry:
            self._unauthenticated -= 1

    def _forget(self, task: asyncio.Task[None], *, release: bool = True) -> None:
        entry = self._open.pop(task, None)
        if entry is None:
            return
        if entry.conn is not None:
            entry.conn.on_authenticated = None
        if not entry.authenticated:
            self._unauthenticated -= 1
        self._uncount(self._per_client, entry.client)
        self._uncount(self._per_listener, entry.spec.name)
        if self.admission is not None and release:
            self.admission.release(entry.spec.name, entry.ip)

    def _refuse(self, spec: ListenerSpec, client: socket.socket, ip: str, reason: str) -> None:
        _log.warning("connection refused", listener=spec.name, client=ip, reason=reason)
        with contextlib.suppress(OSError):
            # Only the caps are explained: a banned client or a stranger on a proxied
            # listener learns nothing.
            busy = reason.startswith("too many")
            if busy and spec.busy_reply and spec.tls is not TlsMode.IMPLICIT:
                client.send(spec.busy_reply)  # non-blocking: a few bytes to an empty buffer
        client.close()

    # -- one connection ----------------------------------------------------------------

    async def _serve(
        self, spec: ListenerSpec, client: socket.socket, proxied: ProxiedAddress | None = None
    ) -> None:
        conn = await self._open_streams(spec, client, proxied)
        if conn is None:
            return
        task = asyncio.current_task()
        entry = self._open.get(task) if task is not None else None
        if entry is not None:
            entry.conn = conn
            conn.on_authenticated = entry
        # The handler is awaited here, not in a helper coroutine: every frame on the chain
        # of an idle session is kept for its whole life (2,000 IDLE sessions).
        try:
            await spec.handler(conn)
        except (Exception, asyncio.CancelledError) as exc:
            # A cancelled session (shutdown) must end normally, so that nothing prints a
            # cancellation traceback; any other failure ends this session only.
            self._log_end(spec, conn, exc)
        finally:
            await conn.close()

    async def _open_streams(
        self, spec: ListenerSpec, client: socket.socket, proxied: ProxiedAddress | None
    ) -> Connection | None:
        """The client as a Connection, after the implicit-TLS handshake where there is one."""
        implicit = spec.tls is TlsMode.IMPLICIT and self.tls is not None
        context = self.tls.front() if implicit and self.tls else None
        io: ConnectionIO
        try:
            if spec.own_transport:
                io = await _line_stream(client, context)
            else:
                io = await _asyncio_streams(client, context)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            peer = proxied.client if proxied and proxied.client else ("", 0)
            _log.info(
                "connection ended", listener=spec.name, client=peer[0] or _peer_ip(client),
                reason=f"TLS handshake failed: {type(exc).__name__}",
            )  # fmt: skip
            client.close()
            return None
        except asyncio.CancelledError:
            client.close()  # cut to make room, or shutdown, during the handshake
            return None
        tls = self.tls if spec.tls is not TlsMode.NONE else None
        return Connection(io, spec.name, tls, self.closing, proxied)

    @staticmethod
    def _log_end(spec: ListenerSpec, conn: Connection, exc: BaseException) -> None:
        """Log why a session's handler ended with ``exc`` (call in the except clause)."""
        if isinstance(exc, asyncio.CancelledError):  # only ``stop`` cancels, after its grace
            _log.info(
                "session cut off", listener=spec.name, conn=conn.id, client=conn.peer_ip,
                reason="shutdown grace period over",
            )  # fmt: skip
        elif isinstance(exc, TimeoutError | ssl.SSLError | ConnectionError):
            _log.info(
                "connection ended", listener=spec.name, conn=conn.id, client=conn.peer_ip,
                reason=type(exc).__name__,
            )  # fmt: skip
        else:
            _log.error("session crashed", listener=spec.name, conn=conn.id, exc_info=True)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let sessions finish for up to ``grace`` seconds, cancel the rest."""
        for bound in self._bound:
            if bound.accepting is not None:
                bound.accepting.cancel()
            bound.sock.close()
        for task in list(self._unheard):
            task.cancel()
        self.closing.set()
        for entry in self._open.values():
            if entry.conn is not None:
                entry.conn.interrupt()
        if self._open:
            _, pending = await asyncio.wait(set(self._open), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)

    @property
    def active_connections(self) -> int:
        return len(self._open) + self._remote


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, with the list of tasks waiting in ``drain`` made a list:
    asyncio makes it a deque (760 bytes, a 64-slot block) for every connection, and only
    appends, removes and iterates over it, which a list does in 56 bytes."""

    def __init__(self, reader: asyncio.StreamReader, connected: Any) -> None:
        super().__init__(reader, connected)
        self._drain_waiters: Any = []


async def _asyncio_streams(client: socket.socket, context: ssl.SSLContext | None) -> AsyncioStreams:
    """``client`` as asyncio's streams, on asyncio's transports (TLS by ``sslproto``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    # The callback marks the protocol as server side (StreamWriter.start_tls asks) and
    # hands over the writer the protocol makes for itself; the protocol keeps that writer
    # alive, which must outlive a writer replaced by COMPRESS (a StreamWriter closes its
    # transport when it is collected).
    writers: list[asyncio.StreamWriter] = []
    protocol = _StreamProtocol(reader, lambda _, writer: writers.append(writer))
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol,
        client,
        ssl=context,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
    )
    writer = writers[0] if writers else asyncio.StreamWriter(transport, protocol, reader, loop)
    return AsyncioStreams(reader, writer)


async def _line_stream(client: socket.socket, context: ssl.SSLContext | None) -> LineStream:
    """``client`` as a :class:`LineStream` on a :class:`SocketTransport`, after the TLS
    handshake if ``context``."""
    loop = asyncio.get_running_loop()
    transport = SocketTransport(loop, client)
    if context is not None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await transport.start_tls(context)
        except BaseException:
            transport.abort()
            raise
    stream = LineStream(loop, STREAM_LIMIT)
    transport.attach(stream)
    return stream


def format_address(host: str, port: int) -> str:
    """ "host:port", with IPv6 in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _spec_key(spec: ListenerSpec) -> tuple[str, str, int]:
    return (spec.name, spec.host, spec.port)


def _peer_ip(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""


async def read_proxy_header(sock: socket.socket) -> ProxiedAddress:
    """Take the PROXY header off ``sock`` and nothing more: what follows it (a TLS
    ClientHello, the first command) stays in the socket for the protocol. The header is
    measured on peeked bytes, then exactly that many are read."""
    pause = 0.005
    while True:
        await _readable(sock)
        prefix = sock.recv(PEEK, socket.MSG_PEEK)
        if not prefix:
            raise ProxyHeaderError("the proxy closed the connection before the header")
        length = header_length(prefix)
        if length is not None and len(prefix) >= length:
            return parse_header(sock.recv(length))
        # Part of a header: the socket stays readable, so wait a little before peeking
        # again rather than spinning (a proxy sends the header in one segment).
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _make_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # Linux: only sockets of the same user may share the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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

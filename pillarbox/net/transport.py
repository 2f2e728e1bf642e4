"""A lean asyncio transport over a non-blocking socket, plaintext or TLS on the socket itself.

asyncio's TLS (``sslproto``) runs OpenSSL over two memory BIOs and keeps, per connection, an
``SSLProtocol`` with a receive buffer, a write backlog deque and an application transport:
about 14 KiB of an idle IMAPS connection besides OpenSSL's own state (measured with 2,000
connections, see docs/BENCHMARKS.md). :class:`SocketTransport` lets OpenSSL read and write
the socket directly (``ssl.SSLSocket``, a socket BIO), so an idle TLS connection is the SSL
object and this small object: no memory BIOs, no buffer while nothing is pending
(CPython sets ``SSL_MODE_RELEASE_BUFFERS``, so OpenSSL frees its record buffers too).

It is an ordinary ``asyncio.Transport`` for the stream objects above it
(``StreamReaderProtocol``/``StreamWriter``, and ``net/deflate.py``), driven by the loop's
``add_reader``/``add_writer``:

- reads: one ``recv`` per readiness, then whatever OpenSSL already holds decrypted
  (``pending``), which the socket's readiness no longer signals; ``pause_reading`` stops both;
- writes: sent at once when nothing is queued, the rest queued and sent on writability,
  with the protocol paused above the high-water mark (asyncio's defaults). A TLS write that
  could not finish is retried with at least the same bytes, as ``SSL_write`` requires;
- a TLS read may need the socket writable and a TLS write may need it readable
  (``SSLWantWriteError``/``SSLWantReadError``); both are waited for;
- ``start_tls`` upgrades the same socket in place (STARTTLS, RFC 3501 §6.2.1), after the
  plaintext queued before it is sent, and runs the handshake before reading resumes;
- ``close`` sends what is queued, then TLS close_notify (RFC 8446 §6.1) without waiting for
  the peer's, then half-closes and lingers (below); ``abort`` closes at once. An EOF from
  the peer (its close_notify, or a TCP FIN) goes to ``eof_received``; a plaintext
  connection may stay half-open for writing when the protocol asks for it, as asyncio's
  does.

A lingering close: a socket closed with input still unread makes the kernel answer RST,
and a client that receives the RST while it is still sending (a line far beyond the
limit, a pipelined batch after the goodbye) may lose our last reply unread. So the close
half-closes (FIN after our last bytes), then reads and drops what the client still sends
until its own FIN, for at most ``LINGER`` seconds (Apache's lingering close, RFC 7230
§6.6's advice for HTTP).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any, Final

# Bytes asked of the socket per read: a TLS record holds at most 16 KiB of plaintext
# (RFC 8446 §5.1); plaintext bursts (an APPEND literal) come in bigger reads.
TLS_READ_SIZE: Final = 16 * 1024
PLAIN_READ_SIZE: Final = 64 * 1024
# asyncio's default write-buffer limits: the protocol is paused above HIGH, resumed below LOW.
HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024
# At most this much of the queue is handed to one send: a TLS write is retried with at
# least the length it failed with, which this bounds.
SEND_CHUNK: Final = 256 * 1024

# The longest a closed connection keeps reading (and dropping) the client's input.
LINGER: Final = 2.0
LINGER_READ_SIZE: Final = 64 * 1024

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantWriteError)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _ssl_connection(context: ssl.SSLContext, sock: socket.socket, owner: object) -> Any:
    """OpenSSL's server-side connection on ``sock`` itself, without ``ssl.SSLSocket``.

    ``SSLSocket`` is a Python object with an instance dict (eight attributes, ~400 bytes)
    around this very object (``_ssl._SSLSocket``, made by the same ``_wrap_socket`` call in
    ``SSLSocket._create``); the transport needs only its read, write, pending, shutdown,
    cipher and version. ``owner`` is what the context's SNI callback is handed."""
    return context._wrap_socket(sock, True, owner=owner)  # type: ignore[attr-defined]


class SocketTransport(asyncio.Transport):
    """See the module docstring. Made with the accepted socket; :meth:`start_tls` (optional),
    then :meth:`attach` hands it to its protocol and starts reading."""

    __slots__ = (
        "__weakref__",  # the TLS connection's owner is a weak reference to it
        "_attempt",
        "_closing",
        "_eof_sent",
        "_fd",
        "_flushed",
        "_high",
        "_linger",
        "_loop",
        "_lost",
        "_low",
        "_out",
        "_protocol",
        "_protocol_paused",
        "_read_wants_write",
        "_reader_added",
        "_reading",
        "_sock",
        "_tls",
        "_waiter",
        "_write_wants_read",
        "_writer_added",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket):
        # No super().__init__(): BaseTransport would make an ``_extra`` dict per connection;
        # get_extra_info answers from the socket instead.
        self._loop = loop
        self._sock: socket.socket = sock
        self._fd = sock.fileno()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Every write goes out at once, as on asyncio's own transports: with Nagle's
            # algorithm a small write behind unacknowledged data waits for the client's
            # delayed ACK (40 ms on Linux), a tagged OK after a FETCH's lines, say.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._protocol: Any = None  # a Protocol: data_received, eof_received, ...
        # OpenSSL's connection (``_ssl._SSLSocket``, below): reads, writes, the handshake.
        self._tls: Any = None
        self._out: bytearray | None = None  # queued output; None while empty (idle)
        self._attempt = 0  # length of the TLS write that last failed (must be retried)
        self._reading = False
        self._reader_added = False
        self._writer_added = False
        self._read_wants_write = False
        self._write_wants_read = False
        self._closing = False
        self._eof_sent = False
        self._lost = False
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._flushed: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        # The handshake's wait for the socket, with the loop watching the socket for it.
        self._waiter: asyncio.Future[None] | None = None

    # -- setting up ----------------------------------------------------------------------

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the connection to ``protocol`` and start reading."""
        self._protocol = protocol
        protocol.connection_made(self)
        self._reading = True
        self._update_reader()
        self._read_pending_soon()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Become TLS on the same socket (server side) and run the handshake.

        What was written before is sent in plaintext first; reading (for the protocol)
        stays off during the handshake, which does its own waiting."""
        if self._tls is not None:
            raise RuntimeError("TLS is already on")
        await self.wait_flushed()
        self._remove_reader()
        self._tls = tls = _ssl_connection(context, self._sock, self)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._ready(readable=True)
            except ssl.SSLWantWriteError:
                await self._ready(readable=False)
        self._update_reader()
        self._read_pending_soon()

    async def wait_flushed(self) -> None:
        """Wait until everything written so far has reached the socket."""
        while self._out and not self._lost:
            if self._flushed is None:
                self._flushed = self._loop.create_future()
            await asyncio.shield(self._flushed)

    async def _ready(self, readable: bool) -> None:
        """Wait until the socket is readable (or writable), during the handshake."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        if readable:
            self._loop.add_reader(self._fd, _wake, waiter)
        else:
            self._loop.add_writer(self._fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._end_wait(readable)

    def _end_wait(self, readable: bool) -> None:
        if self._waiter is None:
            return  # already ended by _force_close
        self._waiter = None
        if readable:
            self._loop.remove_reader(self._fd)
        else:
            self._loop.remove_writer(self._fd)

    @property
    def context(self) -> ssl.SSLContext | None:
        """The TLS connection's context. This object stands for the connection in the
        context's SNI callback (``sni_callback(ssl_object, name, context)``), which may move
        the handshake to another context by setting it, as on an ``SSLSocket``."""
        return self._tls.context if self._tls is not None else None

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._tls.context = context

    # -- asyncio.Transport -----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return self._sock
        if name == "ssl_object":
            return self._tls if self._tls is not None else default
        if name == "sslcontext":
            return self._tls.context if self._tls is not None else default
        if name == "peercert" and self._tls is not None:
            return self._tls.getpeercert()
        if name == "cipher" and self._tls is not None:
            return self._tls.cipher()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False
        self._update_reader()

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        self._update_reader()
        self._read_pending_soon()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._pause_protocol_if_full()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return len(self._out) if self._out else 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._eof_sent:
            return  # as asyncio's transports: writing after close is ignored
        if not self._out:
            sent = self._send(data)
            if sent < 0 or sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._out = bytearray(data)
        else:
            self._out += data
        self._update_writer()
        self._pause_protocol_if_full()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return self._tls is None  # TLS has no half-close: close_notify ends both ways

    def write_eof(self) -> None:
        if self._tls is not None:
            raise RuntimeError("TLS cannot half-close")
        if self._closing or self._eof_sent:
            return
        self._eof_sent = True
        if not self._out:
            self._shutdown_write()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reading = False
        self._update_reader()
        if not self._out:
            self._finish_close()
        # else: _on_writable finishes once the queue is sent

    def abort(self) -> None:
        self._force_close(None)

    # -- reading ----------------------------------------------------------------------

    def _read_pending_soon(self) -> None:
        """Deliver what OpenSSL already decrypted: the socket will not signal it."""
        if self._tls is not None and self._tls.pending():
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        if self._write_wants_read:
            # A TLS write waited for the peer (a renegotiation or key update in progress).
            self._write_wants_read = False
            self._on_writable()
            self._update_reader()
        if not self._reading or self._closing:
            return
        size = TLS_READ_SIZE if self._tls is not None else PLAIN_READ_SIZE
        while True:
            try:
                data = self._recv(size)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._update_writer()
                return
            except OSError as exc:
                self._force_close(exc)
                return
            if not data:
                self._on_eof()
                return
            if not self._deliver(data):
                return
            # One recv per readiness, except for plaintext OpenSSL holds decrypted already.
            if self._tls is None or not self._tls.pending() or not self._reading:
                return

    def _recv(self, size: int) -> bytes:
        if self._tls is None:
            return self._sock.recv(size)
        try:
            data: bytes = self._tls.read(size)
        except ssl.SSLEOFError:
            return b""  # a TCP FIN without close_notify: an EOF all the same (as SSLSocket)
        return data

    def _deliver(self, data: bytes) -> bool:
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._force_close(exc)
            return False
        return not self._closing

    def _on_eof(self) -> None:
        self._reading = False
        self._update_reader()
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._force_close(exc)
            return
        if not keep_open or self._tls is not None:
            self.close()

    # -- writing ----------------------------------------------------------------------

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes of ``data`` sent now; 0 when the socket is full; -1 if the connection
        failed (and is being closed)."""
        try:
            return self._sock.send(data) if self._tls is None else self._tls.write(data)
        except _WOULD_BLOCK:
            pass
        except ssl.SSLWantReadError:
            self._write_wants_read = True
            self._update_reader()
        except OSError as exc:
            self._force_close(exc)
            return -1
        if self._tls is not None:
            # SSL_write must be called again with (at least) these bytes: OpenSSL has
            # already put part of them into a record.
            self._attempt = len(data)
        return 0

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            self._on_readable()
        while self._out:
            chunk = max(min(len(self._out), SEND_CHUNK), self._attempt)
            with memoryview(self._out) as view:
                sent = self._send(view[:chunk])
            if sent <= 0:
                break
            self._attempt = 0
            del self._out[:sent]
        if self._lost:
            return
        if not self._out:
            self._out = None
            self._on_flushed()
        self._update_writer()
        self._resume_protocol_if_drained()

    def _on_flushed(self) -> None:
        if self._flushed is not None:
            if not self._flushed.done():
                self._flushed.set_result(None)
            self._flushed = None
        if self._closing:
            self._finish_close()
        elif self._eof_sent:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._force_close(exc)

    def _pause_protocol_if_full(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high:
            return
        self._protocol_paused = True
        self._call_protocol("pause_writing")

    def _resume_protocol_if_drained(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, method: str) -> None:
        try:
            getattr(self._protocol, method)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {"message": f"protocol.{method}() failed", "exception": exc, "transport": self}
            )

    # -- the loop's interest in the socket -------------------------------------------------

    def _update_reader(self) -> None:
        wanted = not self._lost and (
            (self._reading and not self._closing) or self._write_wants_read
        )
        if wanted and not self._reader_added:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reader_added = True
        elif not wanted:
            self._remove_reader()

    def _remove_reader(self) -> None:
        if self._reader_added:
            self._loop.remove_reader(self._fd)
            self._reader_added = False

    def _update_writer(self) -> None:
        # A TLS write that wants the peer's data first waits for readability, not here
        # (the socket is writable, so waiting here would spin).
        queued = bool(self._out) and not self._write_wants_read
        wanted = not self._lost and (queued or self._read_wants_write)
        if wanted and not self._writer_added:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writer_added = True
        elif not wanted and self._writer_added:
            self._loop.remove_writer(self._fd)
            self._writer_added = False

    # -- the end ----------------------------------------------------------------------

    def _finish_close(self) -> None:
        """Everything is sent: say close_notify (TLS), half-close, then linger."""
        if self._tls is not None:
            try:
                # Sends our close_notify; a second SSL_shutdown inside would wait for the
                # peer's (SSLWantReadError), which RFC 8446 §6.1 does not require.
                self._tls.shutdown()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._force_close(None)
            return
        self._remove_reader()
        self._loop.add_reader(self._fd, self._drop_input)
        self._reader_added = True  # removed by _force_close
        self._linger = self._loop.call_later(LINGER, self._force_close, None)

    def _drop_input(self) -> None:
        """Lingering: read and drop the client's bytes (raw, TLS records too) until its EOF."""
        while True:
            try:
                data = os.read(self._fd, LINGER_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._force_close(None)
                return

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._reading = False
        self._out = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._remove_reader()
        self._read_wants_write = self._write_wants_read = False
        self._update_writer()
        if self._waiter is not None:
            # A handshake waits: the loop must stop watching the descriptor now, before
            # it is closed and perhaps reused, and the handshake must end.
            waiter, self._waiter = self._waiter, None
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            if not waiter.done():
                waiter.set_exception(ConnectionAbortedError("connection closed in the handshake"))
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol is not None:
                self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._protocol = None

"""One small object per connection for line protocols on :class:`SocketTransport`.

asyncio's stream trio (``StreamReader``, ``StreamReaderProtocol``, ``StreamWriter``) costs an
idle connection three objects with instance dicts, two futures that are made at once and
kept (the protocol's "closed" future, the writer's completion future), the connect
callback's closure and two coroutine frames on every waiting read (``readuntil`` and
``_wait_for_data``), and a read with a deadline adds ``asyncio.timeout``'s object. With
thousands of idle IMAP sessions (RFC 2177 IDLE keeps one open per folder a client watches)
that was about a third of what a session's Python objects cost.

:class:`LineStream` is the transport's protocol and the session's reader and writer in one
slotted object:

- :meth:`read_line` and :meth:`read_exactly` take a deadline of their own, kept by one
  timer per stream (not one made and cancelled per read); :meth:`interrupt` ends the
  waiting read early (news for an IDLE session, shutdown). A timed-out or interrupted
  line stays buffered;
- a line longer than ``limit`` raises ``asyncio.LimitOverrunError`` and an EOF in the
  middle of a line or literal ``asyncio.IncompleteReadError``, as ``StreamReader`` does, so
  the sessions' error handling is the same on either kind of connection;
- flow control: reading is paused while more than ``2 * limit`` bytes (or the literal
  being read, if larger) are buffered and resumed when the session has taken them, so a
  client can never make the server buffer more than that; writing follows the transport's
  ``pause_writing``/``resume_writing`` (its high-water mark) and :meth:`drain` waits;
- the buffer is dropped while empty, so an idle connection holds none.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from pillarbox.net import deflate
from pillarbox.net.transport import SocketTransport


class LineStream(asyncio.Protocol):
    """See the module docstring. Made before the transport; ``attach`` connects them."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_deadline",
        "_deflate",
        "_drainer",
        "_eof",
        "_error",
        "_expired",
        "_limit",
        "_line",
        "_loop",
        "_lost",
        "_read_paused",
        "_scanned",
        "_timer",
        "_transport",
        "_waiter",
        "_want",
        "_write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self._loop = loop
        self._limit = limit
        self._transport: Any = None  # SocketTransport, or a DeflateTransport over one
        self._buffer: bytearray | None = None  # None while empty
        self._want = 0  # bytes the waiting read needs (a literal): buffered without pausing
        self._line: asyncio.Future[bytes] | None = None  # the waiting read_line's result
        self._scanned = 0  # how much of the buffer that read has searched for its LF
        self._waiter: asyncio.Future[None] | None = None  # read_exactly waiting for data
        self._deadline = 0.0  # when the waiting read times out (loop time); 0: none waits
        self._timer: asyncio.TimerHandle | None = None  # see _schedule_timer
        self._expired = False  # the deadline passed (or interrupt) while the read waited
        self._eof = False
        self._error: BaseException | None = None
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._drainer: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._deflate: deflate.DeflateTransport | None = None  # once COMPRESS is on

    # -- the transport's protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data
        self._wake()
        if not self._read_paused and self.buffered() > max(2 * self._limit, self._want):
            self._read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Stay open for writing: a plaintext client may half-close and still read the
        # answers (TLS has no half-close; the transport closes it itself).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._stop_timer()  # else the loop's heap would keep this object until it fires
        if exc is not None:
            # For the session any failure of the socket or TLS (an SSLEOFError from a write
            # to a client that left) means the client is gone: a ConnectionError.
            if not isinstance(exc, ConnectionError):
                lost = ConnectionResetError(f"connection lost: {exc!r}")
                lost.__cause__ = exc
                exc = lost
            self._error = exc
        self._wake()
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_exception(ConnectionResetError("connection lost"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_result(None)

    # -- reading ---------------------------------------------------------------------------

    def read_line(self, seconds: float) -> asyncio.Future[bytes]:
        """A future of the next line with its LF; TimeoutError after ``seconds`` or at
        :meth:`interrupt`. Not a coroutine: the line is made up as data arrives, so a
        session waiting for its next command (or in IDLE) keeps no frame for the read."""
        self._end_wait()  # a read cancelled by its caller leaves nothing behind
        line: asyncio.Future[bytes] = self._loop.create_future()
        self._line = line
        self._scanned = 0
        if not self._settle_line():
            self._start_wait(seconds)
        return line

    async def read_exactly(self, size: int, seconds: float) -> bytes:
        """``size`` bytes (a literal); TimeoutError after ``seconds``."""
        self._end_wait()
        self._want = size
        try:
            while self._buffer is None or len(self._buffer) < size:
                self._raise_if_ended(size)
                await self._data(seconds)
            return self._take(size)
        finally:
            self._want = 0
            self._end_wait()

    def _settle_line(self) -> bool:
        """Settle the waiting line read if what is buffered allows: True if it did."""
        line = self._line
        assert line is not None
        if line.done():  # cancelled by its caller: the data stays for the next read
            self._end_wait()
            return True
        try:
            data = self._buffered_line()
        except Exception as exc:
            self._end_wait()
            if not line.done():  # not cancelled meanwhile by its caller
                line.set_exception(exc)
            return True
        if data is None:
            return False
        self._end_wait()
        if not line.done():
            line.set_result(data)
        return True

    def _buffered_line(self) -> bytes | None:
        """The next whole line from the buffer, or None; raises for an overlong line and
        at the end of the input (as StreamReader.readuntil does)."""
        buffer = self._buffer
        if buffer is not None:
            end = buffer.find(b"\n", self._scanned)  # only the bytes not searched yet
            if end >= 0:
                return self._take(end + 1)
            if len(buffer) > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", len(buffer)
                )
            self._scanned = len(buffer)
        self._raise_if_ended(None)
        return None

    def interrupt(self) -> None:
        """End the waiting read now with TimeoutError (what it read stays buffered)."""
        if self._deadline:
            self._time_out()

    def buffered(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def drop_buffered(self) -> int:
        """Forget what was read and not taken (STARTTLS); how many bytes that was."""
        dropped = self.buffered()
        self._buffer = None
        return dropped

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        assert buffer is not None
        if size == len(buffer):
            self._buffer = None
            data = bytes(buffer)
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        if self._read_paused and self.buffered() <= self._limit:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    def _raise_if_ended(self, expected: int | None) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            partial = bytes(self._buffer or b"")
            self._buffer = None
            raise asyncio.IncompleteReadError(partial, expected)

    def _data(self, seconds: float) -> asyncio.Future[None]:
        """A future for more data (read_exactly), within the read's deadline (set by its
        first wait). Awaited by the read itself, not through a helper coroutine."""
        if self._expired:
            raise TimeoutError
        if not self._deadline:
            self._start_wait(seconds)
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        return self._waiter

    def _start_wait(self, seconds: float) -> None:
        """A read waits for the client: start its deadline and let the client send."""
        self._deadline = self._loop.time() + seconds
        self._schedule_timer()
        if self._deflate is not None:
            self._deflate.rest()  # the inflater is not needed until the client sends
        if self._read_paused:
            # The read needs more than is buffered: the client may send again.
            self._read_paused = False
            self._transport.resume_reading()

    def _schedule_timer(self) -> None:
        """One timer per stream, left running when a read ends: the next read moves it
        on when it fires. A timer made and cancelled per read would leave the cancelled
        handles in the loop's heap (asyncio drops them only once they are half of it)."""
        if self._timer is not None:
            if self._timer.when() <= self._deadline:
                return  # fires first; _on_timer then waits on until this deadline
            self._timer.cancel()  # a shorter deadline than the last read's
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._deadline:
            return  # no read waits: the next one starts a timer
        # asyncio runs a timer up to its clock's resolution early: a deadline less than
        # a millisecond away counts as reached.
        if self._deadline > self._loop.time() + 0.001:
            self._schedule_timer()  # a later read's deadline
            return
        self._time_out()

    def _wake(self) -> None:
        """New data, or the end of the input: the waiting read may go on."""
        if self._line is not None:
            self._settle_line()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _time_out(self) -> None:
        line = self._line
        if line is not None:
            self._end_wait()
            if not line.done():
                line.set_exception(TimeoutError())
            return
        self._expired = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())

    def _end_wait(self) -> None:
        self._line = None
        self._waiter = None
        self._deadline = 0.0
        self._expired = False

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        self._transport.write(data)

    def write_backlog(self) -> int:
        size: int = self._transport.get_write_buffer_size()
        return size

    async def drain(self, seconds: float) -> None:
        """Wait until the transport is below its high-water mark, for at most ``seconds``
        (TimeoutError); ConnectionResetError once the connection is gone."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        drainer = self._loop.create_future()
        self._drainer = drainer
        try:
            async with asyncio.timeout(seconds):
                await drainer
        finally:
            self._drainer = None

    # -- the connection ----------------------------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport:
        transport: asyncio.Transport = self._transport
        return transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    async def start_tls(self, context: ssl.SSLContext, seconds: float) -> None:
        """TLS on the same socket (STARTTLS); reading was paused by :meth:`pause_reading`."""
        transport = self._transport
        assert isinstance(transport, SocketTransport)  # never under COMPRESS (RFC 4978 §4)
        async with asyncio.timeout(seconds):
            await transport.start_tls(context)
        transport.resume_reading()

    def start_deflate(self) -> None:
        """Inflate what the client sends and deflate what we send from now on (RFC 4978)."""
        self._transport = self._deflate = deflate.wrap(self._transport)

    def abort(self) -> None:
        self._transport.abort()

    async def close(self, seconds: float) -> None:
        """Close (the transport sends what is queued first) and wait until it is closed, for
        at most ``seconds``: then the output is dropped and the socket closed at once."""
        if self._lost:
            return
        self._closed = self._loop.create_future()
        self._transport.close()
        try:
            async with asyncio.timeout(seconds):
                await self._closed
        except TimeoutError:
            self._transport.abort()

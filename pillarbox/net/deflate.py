"""A DEFLATE layer under an asyncio stream pair: IMAP COMPRESS=DEFLATE (RFC 4978).

After ``COMPRESS DEFLATE`` is answered, everything the client sends is raw DEFLATE
(RFC 1951, no zlib header) and everything the server sends must be too. The layer sits
between the transport (the socket, or TLS when it is on: RFC 4978 §3 orders compression
above TLS) and the session's protocol (``net/stream.py``'s ``LineStream``, or asyncio's
``StreamReaderProtocol``), so the session keeps reading lines and literals and writing as
before:

- incoming bytes are inflated in bounded chunks, and inflation stops while the reader is
  over its limit (its flow control pauses this layer, not only the socket), so a small
  compressed "bomb" cannot make the server hold more than the reader's usual buffer;
- every write is compressed and ended with a sync flush (RFC 4978 §4: the peer must be
  able to decode each response without waiting for more).

Memory: each write is compressed by a compressor of its own, with a 4 KiB window and a
small hash (about 24 KiB of zlib state), made for the write and dropped after its sync
flush: an idle session holds no compressor at all. That is valid DEFLATE (RFC 1951): the
stream is a series of blocks, a sync flush ends on a byte boundary, and blocks may only
refer back to data the decompressor has seen, which a fresh compressor never does; the
cost is that one write's matches cannot point into an earlier one (RFC 4978 §4 lets the
sender choose its window). The decompressor must accept whatever window the client uses
(up to 32 KiB, RFC 1951 §2 and RFC 4978 §4: raw DEFLATE does not say which), and with its
own state that is ~17 KiB per session once used. An idle session does not keep it: while
the session waits for input (``rest``), the inflater is dropped if it can be made again
exactly, by inflating the client's input so far once more (inflation is deterministic: the
same input leaves the same state, window and bit position included). That input is kept for
it (a few dozen bytes for a session that selected a folder and went into IDLE) until it has
inflated to more than ``REPLAY_LIMIT``; a session that sends more keeps its inflater.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Final

# Sender side: 2**12-byte window, memLevel 4: compresses IMAP's repetitive responses well at
# a fraction of zlib's default 256 KiB of state per connection.
_SEND_WINDOW_BITS: Final = 12
_SEND_MEM_LEVEL: Final = 4
_LEVEL: Final = 6
# Receive side: raw DEFLATE with the largest window the client may use (RFC 1951).
_RECEIVE_WINDOW_BITS: Final = 15
# At most this much inflated data is handed to the reader per step.
CHUNK: Final = 16 * 1024
# An idle session's inflater is dropped and made again by replaying the client's input
# while that input inflated to at most this many bytes (a few microseconds of zlib).
REPLAY_LIMIT: Final = 16 * 1024


class _Inflating(asyncio.Protocol):
    """The protocol the transport now talks to: inflates and forwards to the session's.

    While the session waits for input, :meth:`rest` drops the inflater (see the module
    docstring) if it can be made again exactly: by inflating the same input anew, which
    is kept for that as long as it inflated to no more than ``REPLAY_LIMIT`` bytes."""

    __slots__ = (
        "_eof",
        "_full",
        "_history",
        "_inflated",
        "_inflater",
        "_pending",
        "_transport",
        "app",
        "paused",
    )

    def __init__(self, app: asyncio.BaseProtocol, transport: asyncio.Transport):
        self.app: Any = app  # LineStream or StreamReaderProtocol: data_received, ...
        self._transport = transport
        self._inflater: Any = None  # zlib's Decompress, made for the first input
        self._history: bytearray | None = bytearray()  # all input so far, while replayable
        self._inflated = 0  # bytes the input so far inflated to
        self._pending = b""
        # The last step filled CHUNK: zlib may hold more output though no input is left
        # (the rest of a long match).
        self._full = False
        self.paused = False  # by the reader's flow control
        self._eof = False

    # -- from the transport --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._inflater is None:
            self._inflater = self._replayed()
        if self._history is not None:
            self._history += data
        self._pending += data
        self._pump()

    def eof_received(self) -> bool | None:
        self._eof = True
        if not self._pending and not self._full:
            return self.app.eof_received()
        return True  # keep the transport open until what is pending has been read

    def connection_lost(self, exc: Exception | None) -> None:
        self._pending = b""
        self._inflater = self._history = None
        self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    # -- flow control, from the reader (through DeflateTransport) ------------------------
    def pause(self) -> None:
        self.paused = True
        self._transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        self._transport.resume_reading()
        if self._pending or self._full:
            asyncio.get_running_loop().call_soon(self._pump)

    def rest(self) -> None:
        """The session waits for input: drop the inflater if it can be replayed."""
        if self._history is not None and not self._pending and not self._full:
            self._inflater = None

    # -- the work ------------------------------------------------------------------------
    def _replayed(self) -> Any:
        """A fresh inflater that has inflated the input so far (its output is dropped: it
        was delivered), so it is in the very state the dropped one was in."""
        inflater = zlib.decompressobj(-_RECEIVE_WINDOW_BITS)
        data = bytes(self._history or b"")
        while data:
            out = inflater.decompress(data, CHUNK)
            data = inflater.unconsumed_tail
            while len(out) == CHUNK:  # all of it: zlib may hold more for no more input
                out = inflater.decompress(b"", CHUNK)
        return inflater

    def _pump(self) -> None:
        while (self._pending or self._full) and not self.paused:
            if self._transport.is_closing():
                return
            try:
                out = self._inflater.decompress(self._pending, CHUNK)
            except zlib.error:
                # Not DEFLATE, or corrupt: nothing after it can be read any more.
                self._pending = b""
                self._full = False
                self._transport.abort()
                return
            self._pending = self._inflater.unconsumed_tail
            self._full = len(out) == CHUNK
            if out:
                self._count(len(out))
                self.app.data_received(out)
            elif not self._pending:
                break
        if self._eof and not self._pending and not self._full:
            self._eof = False
            if not self.app.eof_received():
                self._transport.close()

    def _count(self, inflated: int) -> None:
        self._inflated += inflated
        if self._inflated > REPLAY_LIMIT:
            self._history = None  # too much to inflate again: the inflater stays


class DeflateTransport(asyncio.Transport):
    """The transport the session's stream objects see: compresses what they write,
    and lets the reader's flow control pause inflation."""

    __slots__ = ("_inflating", "_inner")

    def __init__(self, inner: asyncio.Transport, inflating: _Inflating):
        # No super().__init__(): BaseTransport's ``_extra`` dict is not used here.
        self._inner = inner
        self._inflating = inflating

    def rest(self) -> None:
        """The session waits for input (see :meth:`_Inflating.rest`)."""
        self._inflating.rest()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._inner.is_closing():
            return
        # A compressor per write (see the module docstring): none is kept while idle.
        deflater = zlib.compressobj(_LEVEL, zlib.DEFLATED, -_SEND_WINDOW_BITS, _SEND_MEM_LEVEL)
        self._inner.write(deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inflating.pause()

    def resume_reading(self) -> None:
        self._inflating.resume()

    def is_reading(self) -> bool:
        return not self._inflating.paused and self._inner.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inflating.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        app: asyncio.BaseProtocol = self._inflating.app
        return app


def wrap(inner: asyncio.Transport) -> DeflateTransport:
    """Put the DEFLATE layer between ``inner`` and its protocol; returns the transport the
    protocol writes to from now on (``inner`` itself would write uncompressed). The
    protocol's ``pause_reading``/``resume_reading`` on it pause and resume inflation.

    Call with nothing buffered above (the client may not send before the reply to COMPRESS,
    RFC 4978 §3) and after the reply has been written."""
    inflating = _Inflating(inner.get_protocol(), inner)
    inner.set_protocol(inflating)
    return DeflateTransport(inner, inflating)


def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> asyncio.StreamWriter:
    """:func:`wrap` for an asyncio stream pair; returns the writer to use from now on."""
    inner = writer.transport
    assert isinstance(inner, asyncio.Transport)  # a stream connection: reads and writes
    app = inner.get_protocol()
    transport = wrap(inner)
    # StreamReader pauses the transport it was given at connection_made when its buffer is
    # over the limit; it must now pause inflation, which the socket alone cannot do. The
    # stdlib offers no setter (StreamWriter.start_tls swaps its own transport the same way).
    reader._transport = transport  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    return asyncio.StreamWriter(transport, app, reader, loop)

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
sender choose its window). The decompressor must keep whatever window the client uses
(up to 32 KiB, allocated by zlib on first use) for the whole session.
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


class _Inflating(asyncio.Protocol):
    """The protocol the transport now talks to: inflates and forwards to the session's."""

    def __init__(self, app: asyncio.BaseProtocol, transport: asyncio.Transport):
        self.app: Any = app  # a StreamReaderProtocol: data_received, eof_received, ...
        self._transport = transport
        self._inflater = zlib.decompressobj(-_RECEIVE_WINDOW_BITS)
        self._pending = b""
        self.paused = False  # by the reader's flow control
        self._eof = False

    # -- from the transport --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._pending += data
        self._pump()

    def eof_received(self) -> bool | None:
        self._eof = True
        if not self._pending:
            return self.app.eof_received()
        return True  # keep the transport open until what is pending has been read

    def connection_lost(self, exc: Exception | None) -> None:
        self._pending = b""
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
        if self._pending:
            asyncio.get_running_loop().call_soon(self._pump)

    # -- the work ------------------------------------------------------------------------
    def _pump(self) -> None:
        while self._pending and not self.paused and not self._transport.is_closing():
            try:
                out = self._inflater.decompress(self._pending, CHUNK)
            except zlib.error:
                # Not DEFLATE, or corrupt: nothing after it can be read any more.
                self._pending = b""
                self._transport.abort()
                return
            self._pending = self._inflater.unconsumed_tail
            if out:
                self.app.data_received(out)
            elif not self._pending:
                break
        if self._eof and not self._pending:
            self._eof = False
            if not self.app.eof_received():
                self._transport.close()


class DeflateTransport(asyncio.Transport):
    """The transport the session's stream objects see: compresses what they write,
    and lets the reader's flow control pause inflation."""

    def __init__(self, inner: asyncio.Transport, inflating: _Inflating):
        super().__init__()
        self._inner = inner
        self._inflating = inflating

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


def wrap(inner: asyncio.Transport) -> asyncio.Transport:
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

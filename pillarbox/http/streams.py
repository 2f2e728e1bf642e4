"""Byte streams for the HTTP listeners: plain, and TLS done here over ``ssl.MemoryBIO``.

The https listener does its own TLS (for the ACME TLS-ALPN-01 SNI switch) on the plain
connection the listener seam hands it. It cannot use ``StreamWriter.start_tls`` for that:
a ClientHello that asyncio already read into the stream buffer would be lost. Here every
byte read from the socket goes through one place, so nothing is lost: the TLS records are
fed to an ``SSLObject`` through memory BIOs, and its output is written back.

:class:`HeadReader` adds the one buffering HTTP needs: read up to the end of the head,
keep what came after it, and hand out exactly the body length.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")
RECV_SIZE = 16384


class ByteStream(Protocol):
    async def recv(self) -> bytes:
        """Some bytes, or b"" at the end of the stream."""
        ...

    async def send(self, data: bytes) -> None: ...


class PlainStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def recv(self) -> bytes:
        return await self.reader.read(RECV_SIZE)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class BioTlsStream:
    """Server-side TLS over a plain stream, driven by hand (see the module docstring)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ):
        self.reader = reader
        self.writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Bytes already read from the socket (the peeked ClientHello) go in first."""
        self._incoming.write(data)

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _fill(self) -> None:
        if self._eof:
            raise ConnectionResetError("peer closed the connection during TLS")
        chunk = await self.reader.read(RECV_SIZE)
        if chunk:
            self._incoming.write(chunk)
        else:
            self._eof = True
            self._incoming.write_eof()

    async def _drive(self, operation: Callable[[], T]) -> T:
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError:
                # Send the alert OpenSSL queued (e.g. protocol_version) before giving up.
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(self._flush(), 2)
                raise
            await self._flush()
            return result

    async def handshake(self) -> None:
        await self._drive(self.ssl_object.do_handshake)

    async def recv(self) -> bytes:
        try:
            return await self._drive(lambda: self.ssl_object.read(RECV_SIZE))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    async def send(self, data: bytes) -> None:
        await self._drive(lambda: self.ssl_object.write(data))

    async def close(self) -> None:
        """Send close_notify (RFC 8446 §6.1) without waiting for the peer's."""
        try:
            self.ssl_object.unwrap()
        except ssl.SSLError:
            pass
        await self._flush()


class HeadReader:
    """Reads an HTTP head and then an exact-length body from a ByteStream."""

    def __init__(self, stream: ByteStream):
        self.stream = stream
        self._buffer = b""

    async def read_head(self, max_size: int) -> bytes:
        """Bytes up to (without) the empty line ending the head; ValueError when over size,
        ConnectionResetError when the peer closes first."""
        while True:
            # RFC 9112 §2.2: ignore empty lines before the request line.
            self._buffer = self._buffer.lstrip(b"\r\n")
            end = self._buffer.find(b"\r\n\r\n")
            if 0 <= end <= max_size:
                head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
                return head
            if len(self._buffer) > max_size:
                raise ValueError("request head too large")
            chunk = await self.stream.recv()
            if not chunk:
                raise ConnectionResetError("client closed before a full request")
            self._buffer += chunk

    async def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self.stream.recv()
            if not chunk:
                raise EOFError("body shorter than Content-Length")
            self._buffer += chunk
        body, self._buffer = self._buffer[:size], self._buffer[size:]
        return body

"""A minimal asyncio IMAP client for the benchmarks: one command at a time, raw bytes back.

It reads the server's output in large chunks and only looks for the tagged completion, so
the client's cost stays small next to the server's even for 50,000-line FETCH responses
(a line-by-line parser in Python would time itself, not the server). Tags are unique per
connection and the benchmarks' messages never contain them at a line start.
"""

from __future__ import annotations

import asyncio
import re
import ssl

IO_TIMEOUT = 120.0
CHUNK = 1 << 20


class ImapError(Exception):
    pass


class ImapClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.counter = 0
        self.capabilities: set[bytes] = set()
        self.greeting = b""

    @classmethod
    async def connect(
        cls, port: int, host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None
    ) -> ImapClient:
        """Connect and read the greeting; with ``tls``, TLS from the first byte (IMAPS)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=CHUNK, ssl=tls), IO_TIMEOUT
        )
        client = cls(reader, writer)
        client.greeting = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
        if not client.greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {client.greeting!r}")
        return client

    def _tag(self) -> bytes:
        self.counter += 1
        return b"B%06d" % self.counter

    async def _read_until_tagged(self, tag: bytes) -> tuple[bytes, bytes]:
        """Everything up to and including the tagged line; (status word, whole response)."""
        buf = bytearray()
        marker = b"\r\n" + tag + b" "
        found = -1
        while True:
            chunk = await asyncio.wait_for(self.reader.read(CHUNK), IO_TIMEOUT)
            if not chunk:
                raise ImapError(f"connection closed waiting for {tag.decode()}")
            scan_from = max(0, len(buf) - len(marker))
            buf += chunk
            if found < 0:
                if buf.startswith(tag + b" "):
                    found = 0
                else:
                    pos = buf.find(marker, scan_from)
                    found = pos + 2 if pos >= 0 else -1
            if found >= 0 and buf.endswith(b"\r\n") and buf.find(b"\r\n", found) == len(buf) - 2:
                status = bytes(buf[found + len(tag) + 1 :]).split(b" ", 1)[0]
                return status, bytes(buf)

    async def command(self, line: bytes | str, *, check: bool = True) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        tag = self._tag()
        self.writer.write(tag + b" " + line + b"\r\n")
        status, data = await self._read_until_tagged(tag)
        if check and status != b"OK":
            raise ImapError(f"{line[:60]!r}: {data[-300:]!r}")
        return data

    async def capability(self) -> set[bytes]:
        data = await self.command(b"CAPABILITY")
        match = re.search(rb"^\* CAPABILITY (.*)\r$", data, re.M)
        self.capabilities = set(match.group(1).upper().split()) if match else set()
        return self.capabilities

    async def starttls(self, context: ssl.SSLContext) -> None:
        await self.command(b"STARTTLS")
        await self.writer.start_tls(context, server_hostname=None)

    async def login(self, user: str, password: str) -> None:
        await self.command(f'LOGIN "{user}" "{password}"')

    async def append(self, mailbox: str, message: bytes, flags: str = "") -> bytes:
        """APPEND with a synchronising literal (RFC 3501 7.5: wait for the continuation)."""
        tag = self._tag()
        flag_part = f" ({flags})" if flags else ""
        self.writer.write(tag + f' APPEND "{mailbox}"{flag_part} {{{len(message)}}}\r\n'.encode())
        line = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
        while line.startswith(b"* "):  # untagged updates may come first
            line = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
        if not line.startswith(b"+"):
            raise ImapError(f"APPEND: no continuation: {line!r}")
        self.writer.write(message + b"\r\n")
        status, data = await self._read_until_tagged(tag)
        if status != b"OK":
            raise ImapError(f"APPEND: {data[-300:]!r}")
        return data

    async def logout(self) -> None:
        try:
            await self.command(b"LOGOUT", check=False)
        except (TimeoutError, ImapError, OSError):
            pass
        self.close()

    def close(self) -> None:
        self.writer.close()


async def open_session(
    port: int, user: str, password: str, *, tls: ssl.SSLContext | None, implicit: bool = False
) -> ImapClient:
    """Connect, STARTTLS when ``tls`` is given (TLS at once with ``implicit``), LOGIN."""
    client = await ImapClient.connect(port, tls=tls if implicit else None)
    if tls is not None and not implicit:
        await client.starttls(tls)
    await client.login(user, password)
    return client


def client_tls_context() -> ssl.SSLContext:
    # Loopback benchmark against self-signed/dev-CA servers: identity is not the point here.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

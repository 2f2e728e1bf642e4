"""Small, bounded client-side protocol helpers for the checks (SMTP, IMAP, POP3, HTTPS).

The checks speak to servers as an outsider would, over plain asyncio streams: every read is
bounded in size and every step in time (``timeout``), so a silent or hostile peer costs a
few seconds and a clear error, never a hang.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE = 4096
MAX_REPLY_LINES = 100


class ProtocolError(Exception):
    """The peer said something we cannot use (wrong code, garbage, closed early)."""


def client_tls_context(ca: Path | None, *, verify: bool = True) -> ssl.SSLContext:
    """The system roots plus ``ca`` (the dev CA) when verifying; nothing when not."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    return context


@dataclass
class Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float
    transcript: list[str] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        step_timeout: float,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Stream:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname=server_hostname if tls else None,
                ssl_handshake_timeout=step_timeout if tls else None,
                limit=MAX_LINE * 4,
            ),
            step_timeout,
        )
        return cls(reader, writer, step_timeout)

    async def readline(self) -> str:
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.timeout)
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed by the server") from exc
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("line too long") from exc
        if len(line) > MAX_LINE:
            raise ProtocolError("line too long")
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        self.transcript.append("S: " + text)
        return text

    async def send(self, line: str) -> None:
        self.transcript.append("C: " + line)
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def smtp_reply(self) -> tuple[int, list[str]]:
        """One SMTP reply (RFC 5321 §4.2): code and text lines, multiline joined."""
        lines: list[str] = []
        for _ in range(MAX_REPLY_LINES):
            line = await self.readline()
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines
        raise ProtocolError("SMTP reply with too many lines")

    async def smtp(self, command: str) -> tuple[int, list[str]]:
        await self.send(command)
        return await self.smtp_reply()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        await asyncio.wait_for(
            self.writer.start_tls(context, server_hostname=server_hostname), self.timeout
        )

    def peer_certificate(self) -> bytes | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass


def describe_error(exc: BaseException) -> str:
    """A short human reason for a failed network step."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__

"""Outbound SMTP client (RFC 5321) for relaying to other mail servers and smarthosts.

Why our own client rather than aiosmtplib: relaying needs things a general client hides or
lacks — PIPELINING of MAIL/RCPT/DATA (RFC 2920), a result *per recipient* from one
transaction with the peer's exact reply kept for the bounce (RFC 3464 Diagnostic-Code),
streaming the message from the spool file with dot-stuffing instead of loading it into
memory, STARTTLS onto a socket connected by IP while verifying the MX *name*, a bound source
address, and the per-stage timeouts of RFC 5321 §4.5.3.2. Each of these is a few lines here
and a fight with a general-purpose API there.

The client knows nothing about queues or policy: it connects, speaks the protocol and
reports replies. :class:`SmtpError` means the connection is unusable (network error,
timeout, malformed reply); any reply, even 5xx, is returned as a :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

# RFC 5321 §4.5.3.1.5 says 512 octets per reply line; real servers send longer texts.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class SmtpError(Exception):
    """The connection failed or the peer broke the protocol; it cannot be used further."""


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...] = ("",)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the text, if any."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        return m.group(0) if m else None

    @property
    def ok(self) -> bool:
        """2xx: the command succeeded (a 3xx is only right where one is asked for)."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True)
class Timeouts:
    """Seconds per stage; defaults from RFC 5321 §4.5.3.2."""

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0  # EHLO, MAIL, RCPT, RSET, STARTTLS, AUTH
    data_start: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0


@dataclass
class TransactionResult:
    """Replies of one mail transaction, one per recipient in the order given.

    ``data`` is None when DATA was not reached (MAIL failed or every RCPT was refused).
    """

    mail: Reply
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None


def encode_mailbox(address: str) -> str:
    return f"<{address}>"


class DataEncoder:
    """Streams a message into DATA wire form: CRLF line ends and dot-stuffing.

    RFC 5321 §4.5.2: a line starting with "." gets another "."; §2.3.8: lines end in CRLF
    (bare LF from a spool written with LF is converted). Feed chunks, then ``finish()``.
    Memory stays bounded by the chunk size however long a line is.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._cr_pending = False  # a chunk ended in CR: is it half of a CRLF?

    def feed(self, chunk: bytes) -> bytes:
        if self._cr_pending:
            chunk = b"\r" + chunk
            self._cr_pending = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr_pending = True
        out = bytearray()
        segments = chunk.split(b"\n")
        for i, segment in enumerate(segments):
            complete = i < len(segments) - 1
            if self._at_line_start and segment.startswith(b"."):
                out += b"."
            if complete:
                out += segment.removesuffix(b"\r") + b"\r\n"
                self._at_line_start = True
            elif segment:
                out += segment
                self._at_line_start = False
        return bytes(out)

    def finish(self) -> bytes:
        # A CR at the very end is dropped with the line end it was meant to start.
        self._cr_pending = False
        end = b"" if self._at_line_start else b"\r\n"
        self._at_line_start = True
        return end + b".\r\n"


class SmtpClient:
    """One SMTP connection. Use :meth:`connect`, then ``ehlo``/``starttls``/``send``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        local_hostname: str,
        timeouts: Timeouts,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.local_hostname = local_hostname
        self.timeouts = timeouts
        self.peer = peer
        self.extensions: dict[str, str] = {}
        self.greeting: Reply | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        # The certificates the peer sent (DER, leaf first), verified or not: DANE
        # (RFC 7672 §3) authenticates them against TLSA records after the handshake.
        self.peer_chain: tuple[bytes, ...] = ()
        self.closed = False

    # -- connection -----------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        ip: str,
        port: int,
        *,
        local_hostname: str,
        source_address: str | None = None,
        timeouts: Timeouts | None = None,
    ) -> SmtpClient:
        """Connect to ``ip:port`` (optionally from ``source_address``) and read the greeting."""
        timeouts = timeouts or Timeouts()
        local = (source_address, 0) if source_address else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ip, port, local_addr=local, limit=MAX_REPLY_LINE * 2),
                timeouts.connect,
            )
        except TimeoutError:
            raise SmtpError(f"connect to {ip}:{port} timed out") from None
        except OSError as exc:
            raise SmtpError(f"connect to {ip}:{port} failed: {exc.strerror or exc}") from None
        peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        client = cls(reader, writer, local_hostname=local_hostname, timeouts=timeouts, peer=peer)
        try:
            client.greeting = await client.read_reply(timeouts.greeting)
        except SmtpError:
            client.close()
            raise
        return client

    @property
    def family(self) -> int:
        sock = self._writer.get_extra_info("socket")
        return int(sock.family) if sock is not None else socket.AF_INET

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    async def quit(self) -> None:
        """Polite QUIT (RFC 5321 §4.1.1.10), then close; never raises."""
        if self.closed:
            return
        with contextlib.suppress(SmtpError):
            await self.command("QUIT", wait=min(self.timeouts.command, 10.0))
        self.close()

    # -- replies and commands -------------------------------------------------------------

    async def read_reply(self, wait: float) -> Reply:
        try:
            return await asyncio.wait_for(self._read_reply(), wait)
        except TimeoutError:
            self.close()
            raise SmtpError(f"{self.peer}: timed out waiting for a reply") from None

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        code: bytes | None = None
        while True:
            try:
                raw = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                self.close()
                raise SmtpError(f"{self.peer}: connection closed by peer") from None
            except asyncio.LimitOverrunError:
                self.close()
                raise SmtpError(f"{self.peer}: reply line too long") from None
            except OSError as exc:
                self.close()
                raise SmtpError(f"{self.peer}: {exc}") from None
            m = _REPLY_LINE.match(raw.rstrip(b"\r\n"))
            if m is None or (code is not None and m.group(1) != code):
                self.close()
                raise SmtpError(f"{self.peer}: malformed reply {raw[:80]!r}")
            code = m.group(1)
            lines.append(m.group(3).decode("utf-8", errors="replace"))
            if m.group(2) == b" ":
                return Reply(int(code), tuple(lines))
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise SmtpError(f"{self.peer}: reply has too many lines")

    async def _send(self, data: bytes) -> None:
        if self.closed:
            raise SmtpError(f"{self.peer}: connection already closed")
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.timeouts.data_block)
        except TimeoutError:
            self.close()
            raise SmtpError(f"{self.peer}: timed out sending") from None
        except OSError as exc:
            self.close()
            raise SmtpError(f"{self.peer}: send failed: {exc}") from None

    async def command(self, line: str, *, wait: float | None = None) -> Reply:
        await self._send(line.encode("utf-8") + b"\r\n")
        return await self.read_reply(wait or self.timeouts.command)

    # -- session setup --------------------------------------------------------------------

    async def ehlo(self) -> Reply:
        """EHLO, falling back to HELO for pre-ESMTP servers (RFC 5321 §3.2)."""
        reply = await self.command(f"EHLO {self.local_hostname}")
        self.extensions = {}
        if reply.code == 250:
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
            return reply
        if reply.code in (500, 502, 504, 550):
            return await self.command(f"HELO {self.local_hostname}")
        return reply

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    @property
    def size_limit(self) -> int | None:
        """The peer's declared SIZE (RFC 1870 §4), None when absent or unlimited (0)."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> Reply:
        """STARTTLS (RFC 3207); on 220 the TLS handshake runs and EHLO is repeated.

        A handshake or verification failure raises SmtpError (the connection is dead).
        Returns the STARTTLS reply (non-220 leaves the connection in plaintext)."""
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return reply
        if self._reader._buffer:  # type: ignore[attr-defined]
            # RFC 3207 §5 / CVE-2011-0411: data before the handshake would be injected.
            self.close()
            raise SmtpError(f"{self.peer}: data sent before the TLS handshake")
        try:
            await asyncio.wait_for(
                self._writer.start_tls(context, server_hostname=server_hostname),
                self.timeouts.command,
            )
        except TimeoutError:
            self.close()
            raise SmtpError(f"{self.peer}: TLS handshake timed out") from None
        except (ssl.SSLError, OSError) as exc:
            self.close()
            raise SmtpError(f"{self.peer}: TLS handshake failed: {exc}") from None
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls_version = ssl_object.version()
            cipher = ssl_object.cipher()
            self.tls_cipher = cipher[0] if cipher else None
            self.peer_chain = peer_chain(ssl_object)
        await self.ehlo()
        return reply

    @property
    def tls(self) -> bool:
        return self.tls_version is not None

    async def auth(self, user: str, password: str) -> Reply:
        """AUTH PLAIN (RFC 4616), or LOGIN when only that is offered."""
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            return await self.command(f"AUTH PLAIN {token}")
        reply = await self.command("AUTH LOGIN")
        for value in (user, password):
            if reply.code != 334:
                return reply
            reply = await self.command(base64.b64encode(value.encode()).decode())
        return reply

    async def rset(self) -> Reply:
        return await self.command("RSET")

    # -- the mail transaction -------------------------------------------------------------

    async def send(
        self,
        mail_from: str,
        mail_params: Sequence[str],
        recipients: Sequence[tuple[str, Sequence[str]]],
        message: AsyncIterable[bytes],
    ) -> TransactionResult:
        """One transaction: MAIL, RCPT per recipient, DATA (pipelined when offered).

        Returns every reply; raises SmtpError only when the connection broke. The message
        chunks are the stored message; encoding for the wire happens here.
        """
        mail_line = " ".join([f"MAIL FROM:{encode_mailbox(mail_from)}", *mail_params])
        rcpt_lines = [
            " ".join([f"RCPT TO:{encode_mailbox(addr)}", *params]) for addr, params in recipients
        ]
        if self.supports("PIPELINING"):
            result = await self._envelope_pipelined(mail_line, rcpt_lines)
        else:
            result = await self._envelope_lockstep(mail_line, rcpt_lines)
        if result.data is None:
            return result
        if result.data.code != 354:
            if result.data.code < 400:
                # Anything but 354 or an error to DATA is a protocol violation: the message
                # was not sent, so it must not count as accepted.
                result.data = Reply(451, (f"4.5.0 unexpected reply to DATA: {result.data}",))
            return result
        if not any(r.code in (250, 251) for r in result.rcpts):
            # RFC 2920 §3.1: DATA accepted although no recipient was: end it empty.
            await self._send(b".\r\n")
            await self.read_reply(self.timeouts.data_end)
            result.data = None
            return result
        encoder = DataEncoder()
        async for chunk in message:
            await self._send(encoder.feed(chunk))
        await self._send(encoder.finish())
        result.data = await self.read_reply(self.timeouts.data_end)
        return result

    async def _envelope_pipelined(self, mail_line: str, rcpt_lines: list[str]) -> TransactionResult:
        # RFC 2920 §3.1: MAIL, RCPTs and DATA may go in one group; DATA ends it.
        batch = "".join(f"{line}\r\n" for line in [mail_line, *rcpt_lines, "DATA"])
        await self._send(batch.encode("utf-8"))
        result = TransactionResult(mail=await self.read_reply(self.timeouts.command))
        for _ in rcpt_lines:
            result.rcpts.append(await self.read_reply(self.timeouts.command))
        result.data = await self.read_reply(self.timeouts.data_start)
        if not result.mail.ok:
            result.data = None if result.data.code != 354 else result.data
        return result

    async def _envelope_lockstep(self, mail_line: str, rcpt_lines: list[str]) -> TransactionResult:
        result = TransactionResult(mail=await self.command(mail_line))
        if not result.mail.ok:
            return result
        for line in rcpt_lines:
            result.rcpts.append(await self.command(line))
        if any(r.code in (250, 251) for r in result.rcpts):
            result.data = await self.command("DATA", wait=self.timeouts.data_start)
        return result


def peer_chain(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The peer's certificate chain as sent (DER, leaf first), even when unverified.

    ``SSLObject.get_unverified_chain`` is public from Python 3.13; 3.10-3.12 have the same
    call on the underlying ``_ssl`` object. Without either, only the leaf is known (enough
    for DANE-EE, not for DANE-TA)."""
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if getter is not None:
        certs = getter() or []
        return tuple(
            c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in certs
        )
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


async def chunks_of(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An async iterator over in-memory chunks (tests, small generated messages)."""
    for part in parts:
        yield part

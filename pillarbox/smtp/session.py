"""One SMTP session: the state machine of RFC 5321 with the extensions we offer.

The session reads command lines from an :class:`~pillarbox.smtp.dataread.InputStream`,
parses them with :mod:`pillarbox.smtp.parse`, checks them against the commands the current
state allows (``ALLOWED``, data rather than scattered ifs), runs the handler named in
``HANDLERS`` (an explicit table, not reflection), and queues the reply. Replies are sent in
one write when the client has nothing more buffered, which is what makes PIPELINING
(RFC 2920) cheap for both sides.

Everything the session does not know — is this recipient ours, may this user send as that
address, where does the message go — it asks a :class:`MailBackend` (implemented by
``pillarbox.delivery``; the SMTP package never imports storage). Every reply is a constant
from :mod:`pillarbox.smtp.codes`; an exception in a backend becomes ``451 4.3.0`` on the
wire and a stack trace in the log, never a detail to the client.

Listener kinds: ``MX`` (port 25: no AUTH; recipients must be ours) and ``SUBMISSION``
(587 and 465: STARTTLS before AUTH and MAIL, AUTH before MAIL; RFC 6409, RFC 8314).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pillarbox import log
from pillarbox.auth.sasl import Credentials, SaslError, SaslExchange
from pillarbox.core.clientaddr import in_networks
from pillarbox.core.ids import new_queue_id
from pillarbox.metrics import registry as metrics
from pillarbox.net.listener import Connection
from pillarbox.smtp import codes
from pillarbox.smtp.codes import Reply
from pillarbox.smtp.dataread import (
    ClientGone,
    DataOutcome,
    InputStream,
    Interrupted,
    LineTooLong,
    MessageSpool,
    SpooledMessage,
    read_bdat_chunk,
    read_dot_data,
)
from pillarbox.smtp.parse import (
    MailCommand,
    RcptCommand,
    SmtpSyntaxError,
    parse_auth,
    parse_bdat,
    parse_helo,
    parse_mail,
    parse_rcpt,
    split_command,
)
from pillarbox.smtp.trace import protocol_type, received_header
from pillarbox.tls.context import TlsInfo

_log = log.get("smtp")

# A SASL response line: base64 of at most MAX_SASL_MESSAGE (4 KiB) plus CRLF.
MAX_SASL_LINE = 12288
_MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]{1,250}>)", re.IGNORECASE | re.MULTILINE)
# Cross-protocol attacks (an HTTP request sent to port 25): end the session at once.
_FOREIGN_VERBS = frozenset({"GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "USER-AGENT:"})


class ListenerKind(enum.Enum):
    MX = "mx"
    SUBMISSION = "submission"


@dataclass(frozen=True)
class SmtpConfig:
    """What a session needs from the settings (read once per session)."""

    hostname: str
    kind: ListenerKind
    spool_dir: Path
    max_message_size: int = 52428800
    max_recipients: int = 100
    max_command_line: int = 2048
    max_data_line: int = 10000
    max_commands: int = 1000
    max_bad_commands: int = 10
    # RFC 5321 §4.5.3.2.7: at least 5 minutes waiting for the next command; AUTH lines
    # within a command get command_timeout each. Each is a deadline for the whole line.
    idle_timeout: float = 300.0
    command_timeout: float = 300.0
    # Submission before AUTH: a client that has not logged in gets less patience.
    preauth_timeout: float = 60.0
    # DATA and BDAT: the longest wait for one read (RFC 5321 §4.5.3.2.5, 3 minutes), and
    # the average rate the whole transfer must keep after that (bytes per second).
    data_timeout: float = 180.0
    min_data_rate: float = 1024.0
    # Postfix's mynetworks: clients that may relay without AUTH (see SessionInfo.trusted).
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Port 25: MAIL only after STARTTLS (RFC 3207 §4 warns against it for public MX).
    require_tls: bool = False


@dataclass
class SessionInfo:
    """What the backend may know about the client."""

    conn_id: str
    listener: str
    kind: ListenerKind
    peer_ip: str
    helo: str = ""
    esmtp: bool = False
    tls: TlsInfo | None = None
    user: str | None = None  # the authenticated user (submission)
    trusted: bool = False  # the client is in trusted_networks: may relay without AUTH


@dataclass(frozen=True)
class Recipient:
    address: str  # as the backend normalised it
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None


@dataclass
class Envelope:
    queue_id: str
    mail: MailCommand
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return self.mail.sender


class MailBackend(Protocol):
    """The policy and delivery decisions a session delegates (see the module docstring)."""

    async def check_sender(self, session: SessionInfo, envelope: Envelope) -> Reply | None:
        """None accepts MAIL FROM; a reply rejects it."""
        ...

    async def check_recipient(
        self, session: SessionInfo, envelope: Envelope, rcpt: RcptCommand
    ) -> Recipient | Reply:
        """The accepted recipient, or the reply that rejects it."""
        ...

    async def deliver(
        self, session: SessionInfo, envelope: Envelope, message: SpooledMessage, received: bytes
    ) -> Reply:
        """Store the message durably (or refuse it); the reply goes to the client.

        ``received`` is our Received header; the backend prepends it (and Return-Path etc.)."""
        ...


class Authenticator(Protocol):
    async def authenticate(self, credentials: Credentials, client: str) -> str | None: ...


class State(enum.Enum):
    START = "start"  # connected, no EHLO/HELO yet
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    CHUNKING = "chunking"  # BDAT chunks being received (RFC 3030)


_ANYTIME = frozenset({"NOOP", "RSET", "QUIT", "HELP", "VRFY", "EHLO", "HELO"})
ALLOWED: dict[State, frozenset[str]] = {
    State.START: _ANYTIME,
    State.READY: _ANYTIME | {"STARTTLS", "AUTH", "MAIL"},
    State.MAIL: _ANYTIME | {"RCPT"},
    State.RCPT: _ANYTIME | {"RCPT", "DATA", "BDAT"},
    # RFC 3030 §2: once BDAT started, only more BDAT (or RSET/QUIT/NOOP) may follow.
    State.CHUNKING: frozenset({"BDAT", "RSET", "QUIT", "NOOP"}),
}
# The reply for a known command sent in the wrong state (else BAD_SEQUENCE).
OUT_OF_SEQUENCE: dict[tuple[State, str], Reply] = {
    (State.READY, "RCPT"): codes.MAIL_FIRST,
    (State.READY, "DATA"): codes.MAIL_FIRST,
    (State.READY, "BDAT"): codes.MAIL_FIRST,
    (State.MAIL, "DATA"): codes.RCPT_FIRST,
    (State.MAIL, "BDAT"): codes.RCPT_FIRST,
    (State.MAIL, "MAIL"): codes.NESTED_MAIL,
    (State.RCPT, "MAIL"): codes.NESTED_MAIL,
    (State.CHUNKING, "DATA"): codes.BDAT_DATA_MIX,
}


class _CloseSession(Exception):
    """Raised by a handler to end the session after the queued replies are sent."""


class SmtpSession:
    """See the module docstring."""

    def __init__(
        self,
        conn: Connection,
        config: SmtpConfig,
        backend: MailBackend,
        authenticator: Authenticator,
    ):
        self.conn = conn
        self.config = config
        self.backend = backend
        self.authenticator = authenticator
        self.info = SessionInfo(
            conn.id, conn.listener, config.kind, conn.peer_ip, tls=conn.tls,
            trusted=in_networks(conn.peer_ip, config.trusted_networks),
        )  # fmt: skip
        self.state = State.START
        self.envelope: Envelope | None = None
        self._spool: MessageSpool | None = None
        self._in = InputStream(conn.reader, config.command_timeout)
        # RFC 2920 §3.1: replies owed are sent before the server blocks waiting for input.
        self._in.before_wait = self.flush
        self._out: list[bytes] = []
        self._commands = 0
        self._errors = 0
        self._messages = 0
        self._last_code = 0
        self._between_commands = False  # waiting for the next command line

    # -- I/O ---------------------------------------------------------------------------

    def reply(self, reply: Reply) -> None:
        self._out.append(reply.wire)
        self._last_code = reply.code
        if reply.is_permanent:
            self._errors += 1

    async def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.conn.writer.write(data)
            await self.conn.drain(self.config.data_timeout)

    # -- main loop ---------------------------------------------------------------------

    async def run(self) -> None:
        self._out.append(f"220 {self.config.hostname} ESMTP ready\r\n".encode())
        metrics.count(metrics.SESSIONS, "smtp", self.conn.listener)
        _log.info(
            "connect",
            conn=self.conn.id,
            listener=self.conn.listener,
            client=self.conn.peer_ip,
            via=self.conn.via or None,  # the proxy that named the client (PROXY protocol)
            tls=self._tls_text(),
            trusted=self.info.trusted or None,
        )
        reason = "quit"
        try:
            await self._loop()
        except TimeoutError:
            reason = "timeout"
            await self._say_goodbye(codes.TIMEOUT)
        except (ClientGone, ConnectionError):
            reason = "client closed"
        except Interrupted:
            reason = "server shutting down"
            await self._say_goodbye(codes.SHUTTING_DOWN)
        except _CloseSession as exc:
            reason = str(exc) or "closed"
        finally:
            self._in.close()
            self._abort_transaction()
            _log.info(
                "disconnect",
                conn=self.conn.id,
                client=self.conn.peer_ip,
                reason=reason,
                commands=self._commands,
                messages=self._messages,
                errors=self._errors,
            )

    def interrupt_if_idle(self) -> None:
        """Shutdown: a session waiting for its next command says 421 now (RFC 5321 §3.8);
        one in the middle of a command (DATA, BDAT, AUTH) finishes it and says 421 at the
        next one."""
        if self._between_commands and self.state is not State.CHUNKING and self._in.waiting:
            self._in.interrupt()

    async def _say_goodbye(self, reply: Reply) -> None:
        self._out.append(reply.wire)
        try:
            await asyncio.wait_for(self.flush(), 5)
        except (TimeoutError, ConnectionError):
            pass

    async def _loop(self) -> None:
        limits = self.config
        while True:
            if not self._in.has_line():
                await self.flush()
            if self.conn.closing.is_set():
                await self._say_goodbye(codes.SHUTTING_DOWN)
                raise _CloseSession("server shutting down")
            if self.state is not State.CHUNKING:
                # BDAT chunks and the commands between them are one transfer, on one clock.
                self._in.expect_line(self._command_wait())
            self._between_commands = True
            self.conn.idle = self.state in (State.START, State.READY)
            try:
                line = await self._in.readline(limits.max_command_line)
            except LineTooLong:
                self.reply(codes.LINE_TOO_LONG)
            else:
                self._between_commands = False
                self.conn.idle = False
                self._commands += 1
                if self._commands > limits.max_commands:
                    await self._say_goodbye(codes.TOO_MANY_COMMANDS)
                    raise _CloseSession("too many commands")
                if await self._command(line):
                    await self.flush()
                    return
            if self._errors >= limits.max_bad_commands:
                await self._say_goodbye(codes.TOO_MANY_ERRORS)
                raise _CloseSession("too many errors")

    def _count_command(self, verb: str) -> None:
        result = f"{self._last_code // 100}xx" if self._last_code else "none"
        metrics.count(metrics.COMMANDS, "smtp", metrics.command_label(verb), result)

    def _command_wait(self) -> float:
        """Seconds the next command line may take to arrive, whole."""
        if self.config.kind is ListenerKind.SUBMISSION and self.info.user is None:
            return self.config.preauth_timeout
        return self.config.idle_timeout

    async def _command(self, line: bytes) -> bool:
        """Run one command; True when the session should end (QUIT)."""
        try:
            verb, argument = split_command(line)
            handler = HANDLERS.get(verb)
            if handler is None:
                if verb in _FOREIGN_VERBS:
                    raise _CloseSession("not an SMTP client")
                self.reply(codes.SYNTAX_ERROR)
                return False
            if verb not in ALLOWED[self.state]:
                self.reply(self._out_of_sequence(verb))
                return False
            quit_now = bool(await handler(self, argument))
            self._count_command(verb)
            return quit_now
        except SmtpSyntaxError as exc:
            self.reply(exc.reply)
            return False
        except (OSError, TimeoutError, Interrupted, _CloseSession):
            raise  # the connection is gone or must go: handled by run()
        except Exception:
            # A bug or a failing backend: a generic 451 on the wire, the details in the log.
            _log.error("command failed", conn=self.conn.id, exc_info=True)
            self.reply(codes.LOCAL_ERROR)
            return False

    def _out_of_sequence(self, verb: str) -> Reply:
        if self.state is State.START and verb in ALLOWED[State.READY] | ALLOWED[State.RCPT]:
            return codes.HELO_FIRST
        return OUT_OF_SEQUENCE.get((self.state, verb), codes.BAD_SEQUENCE)

    def _tls_text(self) -> str:
        tls = self.info.tls
        return f"{tls.version}/{tls.cipher}" if tls else "no"

    # -- session commands --------------------------------------------------------------

    async def cmd_ehlo(self, argument: str) -> None:
        self._greet(parse_helo(argument), esmtp=True)
        self._out.append(codes.multiline(250, [self.config.hostname, *self._extensions()]))

    async def cmd_helo(self, argument: str) -> None:
        self._greet(parse_helo(argument), esmtp=False)
        self._out.append(f"250 {self.config.hostname}\r\n".encode())

    def _greet(self, name: str, *, esmtp: bool) -> None:
        # RFC 5321 §4.1.4: EHLO/HELO in a transaction resets it.
        self._abort_transaction()
        self.info.helo = name
        self.info.esmtp = esmtp
        self.state = State.READY

    def _extensions(self) -> list[str]:
        extensions = [
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "BINARYMIME",
            "DSN",
        ]
        if self.info.tls is None and self.conn.tls_available:
            extensions.append("STARTTLS")
        if self.config.kind is ListenerKind.SUBMISSION and self.info.tls is not None:
            extensions.append("AUTH PLAIN LOGIN")  # RFC 4954 §4: only under TLS
        extensions.append("HELP")
        return extensions

    async def cmd_noop(self, argument: str) -> None:
        self.reply(codes.NOOP_OK)

    async def cmd_help(self, argument: str) -> None:
        self.reply(codes.HELP)

    async def cmd_vrfy(self, argument: str) -> None:
        # RFC 5321 §3.5.3: 252 when we will not verify (address harvesting).
        self.reply(codes.CANNOT_VRFY)

    async def cmd_rset(self, argument: str) -> None:
        self._abort_transaction()
        self.reply(codes.RESET_OK)

    async def cmd_quit(self, argument: str) -> bool:
        self.reply(codes.CLOSING)
        return True

    async def cmd_starttls(self, argument: str) -> None:
        if self.info.tls is not None:
            self.reply(codes.ALREADY_TLS)
            return
        if not self.conn.tls_available:
            self.reply(codes.NOT_IMPLEMENTED)
            return
        if argument:
            raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        # RFC 3207 §4.2 and the 2011 injection bugs: nothing sent before the handshake may
        # be taken as a command after it (see Connection.prepare_starttls for the order).
        dropped = self._in.discard() + self.conn.prepare_starttls()
        self.reply(codes.READY_FOR_TLS)
        await self.flush()
        await self.conn.start_tls()
        # RFC 3207 §4.2: forget everything learnt before TLS; the client must EHLO again.
        self.info.tls = self.conn.tls
        self.info.helo, self.info.esmtp, self.info.user = "", False, None
        self.state = State.START
        _log.info(
            "starttls", conn=self.conn.id, client=self.conn.peer_ip, tls=self._tls_text(),
            discarded=dropped or None,
        )  # fmt: skip

    async def cmd_auth(self, argument: str) -> None:
        if self.config.kind is not ListenerKind.SUBMISSION:
            self.reply(codes.AUTH_NOT_AVAILABLE)
            return
        if self.info.tls is None:
            self.reply(codes.STARTTLS_FIRST)
            return
        if self.info.user is not None:
            self.reply(codes.ALREADY_AUTHENTICATED)
            return
        command = parse_auth(argument)
        try:
            exchange = SaslExchange(command.mechanism, command.initial_response)
            while exchange.credentials is None:
                self._out.append(b"334 " + exchange.challenge_b64.encode() + b"\r\n")
                await self.flush()
                self._in.expect_line(self.config.command_timeout)
                try:
                    line = await self._in.readline(MAX_SASL_LINE)
                except LineTooLong:
                    self.reply(codes.BAD_AUTH_DATA)
                    return
                exchange.feed(line)
        except SaslError as exc:
            if exc.unknown_mechanism:
                self.reply(codes.UNKNOWN_MECHANISM)
            else:
                self.reply(codes.AUTH_CANCELLED if exc.cancelled else codes.BAD_AUTH_DATA)
            return
        await self.flush()
        user = await self.authenticator.authenticate(exchange.credentials, self.conn.peer_ip)
        if user is None:
            self.reply(codes.AUTH_FAILED)
            _log.warning(
                "auth failed", conn=self.conn.id, client=self.conn.peer_ip,
                mechanism=command.mechanism,
            )  # fmt: skip
            return
        self.info.user = user
        self.conn.mark_authenticated()
        self.reply(codes.AUTH_OK)
        _log.info("auth", conn=self.conn.id, client=self.conn.peer_ip, user=user)

    # -- the mail transaction ----------------------------------------------------------

    async def cmd_mail(self, argument: str) -> None:
        refusal = self._mail_precondition()
        if refusal is not None:
            self.reply(refusal)
            return
        command = parse_mail(argument)
        if not command.smtputf8 and not command.sender.isascii():
            self.reply(codes.UTF8_NOT_ALLOWED)
            return
        if command.size is not None and command.size > self.config.max_message_size:
            self.reply(codes.MESSAGE_TOO_BIG)  # RFC 1870 §6.2
            return
        envelope = Envelope(new_queue_id(), command)
        rejection = await self.backend.check_sender(self.info, envelope)
        if rejection is not None:
            self.reply(rejection)
            self._log_rejection("sender rejected", envelope, command.sender, rejection)
            return
        self.envelope = envelope
        self.state = State.MAIL
        self.reply(codes.SENDER_OK)

    def _mail_precondition(self) -> Reply | None:
        """What must come before MAIL: on submission TLS and AUTH (RFC 4954 §6, RFC 6409
        §4.3), on port 25 STARTTLS when require_tls is set; a trusted client needs
        neither (it authenticates by its address, like Postfix's mynetworks)."""
        if self.info.trusted:
            return None
        if self.config.kind is ListenerKind.SUBMISSION:
            if self.info.tls is None:
                return codes.STARTTLS_FIRST
            if self.info.user is None:
                return codes.AUTH_REQUIRED
        elif self.config.require_tls and self.info.tls is None:
            return codes.STARTTLS_FIRST
        return None

    async def cmd_rcpt(self, argument: str) -> None:
        envelope = self.envelope
        assert envelope is not None
        command = parse_rcpt(argument)
        if len(envelope.recipients) >= self.config.max_recipients:
            self.reply(codes.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
            return
        if not envelope.mail.smtputf8 and not command.recipient.isascii():
            self.reply(codes.UTF8_NOT_ALLOWED)
            return
        result = await self.backend.check_recipient(self.info, envelope, command)
        if isinstance(result, Reply):
            self.reply(result)
            self._log_rejection("recipient rejected", envelope, command.recipient, result)
            return
        envelope.recipients.append(result)
        self.state = State.RCPT
        self.reply(codes.RECIPIENT_OK)

    def _log_rejection(self, event: str, envelope: Envelope, address: str, reply: Reply) -> None:
        _log.info(
            event, conn=self.conn.id, queue_id=envelope.queue_id, client=self.conn.peer_ip,
            address=address, result=f"{reply.code} {reply.enhanced}",
        )  # fmt: skip

    def _new_spool(self, envelope: Envelope) -> MessageSpool:
        self._spool = MessageSpool(
            self.config.spool_dir, envelope.queue_id, self.config.max_message_size
        )
        return self._spool

    async def cmd_data(self, argument: str) -> None:
        envelope = self.envelope
        assert envelope is not None
        if argument:
            raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        if envelope.mail.body == "BINARYMIME":
            self.reply(codes.BAD_SEQUENCE)  # RFC 3030 §3: BINARYMIME needs BDAT
            return
        self._out.append(codes.START_DATA.wire)
        await self.flush()
        self._in.expect_transfer(self.config.data_timeout, self.config.min_data_rate)
        spool = self._new_spool(envelope)
        outcome = await read_dot_data(self._in, spool, self.config.max_data_line)
        if outcome is DataOutcome.BARE_LINE_ENDING:
            spool.discard()
            self._log_message(envelope, spool.size, b"", codes.BARE_LINE_ENDING)
            await self._say_goodbye(codes.BARE_LINE_ENDING)
            raise _CloseSession("bare line ending in data")
        if outcome is DataOutcome.TOO_BIG:
            self._finish_failed(envelope, spool, codes.MESSAGE_TOO_BIG)
        elif outcome is DataOutcome.LINE_TOO_LONG:
            self._finish_failed(envelope, spool, codes.LINE_TOO_LONG)
        else:
            await self._deliver(envelope, await spool.finish())

    async def cmd_bdat(self, argument: str) -> None:
        envelope = self.envelope
        assert envelope is not None
        command = parse_bdat(argument)
        spool = self._spool if self.state is State.CHUNKING else None
        if spool is None:
            spool = self._new_spool(envelope)
            self.state = State.CHUNKING
            self._in.expect_transfer(self.config.data_timeout, self.config.min_data_rate)
        if spool.size + command.size > self.config.max_message_size and not spool.dropped:
            await self._refuse_chunk(envelope, spool, command.size, command.last)
            return
        ok = await read_bdat_chunk(self._in, spool, command.size)
        if not command.last:
            # RFC 3030 §2: after a failed chunk the client sends no more; we still consume
            # pipelined ones and answer each with the same error until LAST.
            self.reply(codes.CHUNK_OK if ok else codes.MESSAGE_TOO_BIG)
            return
        if not ok:
            self._finish_failed(envelope, spool, codes.MESSAGE_TOO_BIG)
            return
        await self._deliver(envelope, await spool.finish())

    async def _refuse_chunk(
        self, envelope: Envelope, spool: MessageSpool, size: int, last: bool
    ) -> None:
        """A chunk that takes the message over SIZE is refused before its data is read
        (RFC 1870 §6.3, RFC 3030 §2): the client hears 552 at once, and the replies owed
        to the commands pipelined before it go out first."""
        spool.discard()
        if size > self.config.max_message_size:
            self._log_message(envelope, spool.size + size, b"", codes.CHUNK_TOO_BIG)
            await self._say_goodbye(codes.CHUNK_TOO_BIG)
            raise _CloseSession("BDAT chunk over the size limit")
        self.reply(codes.MESSAGE_TOO_BIG)
        await self.flush()
        await read_bdat_chunk(self._in, spool, size)  # consumed, not stored
        if last:
            self._log_message(envelope, spool.size, b"", codes.MESSAGE_TOO_BIG)
            self._end_transaction()

    def _finish_failed(self, envelope: Envelope, spool: MessageSpool, reply: Reply) -> None:
        spool.discard()
        self.reply(reply)
        self._log_message(envelope, spool.size, b"", reply)
        self._end_transaction()

    async def _deliver(self, envelope: Envelope, message: SpooledMessage) -> None:
        await self.flush()
        received = received_header(
            helo=self.info.helo,
            peer_ip=self.conn.peer_ip,
            hostname=self.config.hostname,
            queue_id=envelope.queue_id,
            protocol=protocol_type(
                esmtp=self.info.esmtp,
                tls=self.info.tls is not None,
                authenticated=self.info.user is not None,
                utf8=envelope.mail.smtputf8,
            ),
            tls=self.info.tls,
            user=self.info.user,
            recipients=[r.address for r in envelope.recipients],
        )
        try:
            reply = await self.backend.deliver(self.info, envelope, message, received)
        except Exception:
            _log.error("delivery failed", queue_id=envelope.queue_id, exc_info=True)
            reply = codes.LOCAL_ERROR
        finally:
            message.release()
        self.reply(reply)
        self._messages += reply.is_success
        metrics.count(metrics.MESSAGES_RECEIVED, self.conn.listener, _outcome(reply))
        self._log_message(envelope, message.size, message.head, reply)
        self._end_transaction()

    def _log_message(self, envelope: Envelope, size: int, head: bytes, reply: Reply) -> None:
        match = _MESSAGE_ID_RE.search(head) if head else None
        _log.info(
            "message",
            queue_id=envelope.queue_id,
            conn=self.conn.id,
            msgid=match.group(1).decode("utf-8", "replace") if match else None,
            **{"from": f"<{envelope.sender}>"},
            to=",".join(r.address for r in envelope.recipients),
            size=size,
            tls=self._tls_text(),
            user=self.info.user,
            result=f"{reply.code} {reply.enhanced}",
        )

    def _end_transaction(self) -> None:
        self._spool = None
        self.envelope = None
        self.state = State.READY

    def _abort_transaction(self) -> None:
        if self._spool is not None:
            self._spool.discard()
        self._spool = None
        self.envelope = None
        if self.state is not State.START:
            self.state = State.READY


Handler = Callable[[SmtpSession, str], Awaitable[bool | None]]
HANDLERS: dict[str, Handler] = {
    "EHLO": SmtpSession.cmd_ehlo,
    "HELO": SmtpSession.cmd_helo,
    "NOOP": SmtpSession.cmd_noop,
    "HELP": SmtpSession.cmd_help,
    "VRFY": SmtpSession.cmd_vrfy,
    "RSET": SmtpSession.cmd_rset,
    "QUIT": SmtpSession.cmd_quit,
    "STARTTLS": SmtpSession.cmd_starttls,
    "AUTH": SmtpSession.cmd_auth,
    "MAIL": SmtpSession.cmd_mail,
    "RCPT": SmtpSession.cmd_rcpt,
    "DATA": SmtpSession.cmd_data,
    "BDAT": SmtpSession.cmd_bdat,
}


def _outcome(reply: Reply) -> str:
    if reply.is_success:
        return "accepted"
    return "rejected" if reply.is_permanent else "deferred"

"""One IMAP connection: read commands, dispatch by type, map errors, send updates.

Reading: lines are bounded by the StreamReader limit and :class:`grammar.Limits`; literals are
read exactly (``+ go ahead`` for synchronising ones, nothing for LITERAL+). Each command is
parsed into a typed object (``commands.parse``) before anything runs.

Errors are mapped in one place (:meth:`Session.execute`): a ``ParseError`` is ``tag BAD
reason``, a user error (``No``, a store ``MailboxError``) is ``tag NO [CODE] text``,
anything else is logged with its traceback and answered ``tag NO internal error``. The
session goes on in every case; only the connection's end stops it.

Updates from other sessions and deliveries (the store's change hub) are sent before the
tagged response of a command, and while IDLE, at the points RFC 3501 §7 allows: no EXPUNGE
during FETCH, STORE or SEARCH (RFC 3501 §7.4.1), but EXISTS and FLAGS at any command end.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pillarbox import log
from pillarbox.auth.sasl import Credentials, SaslError, SaslExchange
from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap.backend import MailBackend, MailboxError, UserMail, response_code
from pillarbox.imap.grammar import CommandAssembler, Limits, LiteralTooBig, ParseError
from pillarbox.imap.selected import BadSequence, SelectedMailbox
from pillarbox.metrics import registry as metrics

_log = log.get("imap")

MAX_BAD_COMMANDS: Final = 20
IDLE_SYNC_INTERVAL: Final = 30.0  # re-scan the Maildir for foreign changes while IDLE
PREAUTH_MAX_LITERAL: Final = 8192  # a user name or password, never a message
BASE_CAPS: Final = ("IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ENABLE", "ID", "IDLE")
AUTH_CAPS: Final = (
    *BASE_CAPS,
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "UTF8=ACCEPT",
    "BINARY",
    "ESEARCH",
    "SEARCHRES",
    "CONDSTORE",
    "QRESYNC",
    "STATUS=SIZE",
    "COMPRESS=DEFLATE",
    "MULTIAPPEND",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "SORT",
    "SORT=DISPLAY",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
)
ENABLEABLE: Final = frozenset({"UTF8=ACCEPT", "IMAP4REV2", "CONDSTORE", "QRESYNC"})


class No(Exception):
    """``tag NO [code] text``: the command was understood but cannot be done."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code
        self.text = text


class Bad(Exception):
    """``tag BAD text`` raised by semantics (e.g. sequence numbers out of range)."""


class Logout(Exception):
    """End the session after the current response."""


class _Silent(Exception):
    """The handler already sent its tagged response (STARTTLS)."""


Result = str | tuple[str, r.Code]


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    # RFC 3501 §5.4: an autologout timer of at least 30 minutes once logged in (and for
    # IDLE, RFC 2177); before login a client gets preauth_timeout per command line. Each
    # is a deadline for the whole line.
    idle_timeout: float = 1800.0
    preauth_timeout: float = 60.0
    # A literal must arrive within data_timeout plus one second per min_data_rate bytes;
    # a client that stops reading our output is dropped after data_timeout.
    data_timeout: float = 180.0
    min_data_rate: float = 1024.0
    limits: Limits = field(default_factory=Limits)


class Session:
    def __init__(
        self,
        conn: Any,
        config: SessionConfig,
        authenticator: Any,
        backend: MailBackend,
    ):
        self.conn = conn
        self.config = config
        self.authenticator = authenticator
        self.backend = backend
        self.state = c.State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.mail: UserMail | None = None
        self.selected: SelectedMailbox | None = None
        self.utf8 = False
        self.rev2 = False
        self.condstore = False
        self.qresync = False  # RFC 7162 §3.2.3: VANISHED instead of EXPUNGE, SELECT (QRESYNC)
        self.saved: Any = None  # RFC 5182 search result (a SequenceSet of UIDs)
        self._out = bytearray()
        # Set by the change hub when the selected mailbox changed elsewhere.
        self.changed = asyncio.Event()
        self.idling = False  # in IDLE: a change interrupts the wait for DONE
        self._unwatch: Callable[[], None] | None = None
        self._bad = 0

    # --- output --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._out += data

    async def flush(self) -> None:
        if self._out:
            self.conn.writer.write(bytes(self._out))
            self._out.clear()
        await self.conn.drain(self.config.data_timeout)

    async def write(self, data: bytes) -> None:
        self.send(data)
        if len(self._out) >= 65536:
            await self.flush()

    # --- capabilities ----------------------------------------------------------------------
    @property
    def tls_ok(self) -> bool:
        return self.conn.tls is not None

    def capabilities(self) -> list[str]:
        if self.state is not c.State.NOT_AUTHENTICATED:
            return list(AUTH_CAPS)
        caps = list(BASE_CAPS)
        if self.tls_ok:
            caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
        else:
            if self.conn.tls_available:
                caps.append("STARTTLS")
            caps.append("LOGINDISABLED")
        return caps

    # --- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        caps = " ".join(self.capabilities())
        self.send(f"* OK [CAPABILITY {caps}] {self.config.hostname} Pillarbox ready\r\n".encode())
        metrics.count(metrics.SESSIONS, "imap", self.conn.listener)
        await self.flush()
        try:
            while True:
                if self.conn.closing.is_set():
                    self.send(b"* BYE server shutting down\r\n")
                    await self.flush()
                    return
                try:
                    raw = await self._read_command()
                except ParseError as exc:
                    self.send(r.parse_error(exc))
                    await self.flush()
                    if self._count_bad():
                        return
                    continue
                if raw is None:
                    return
                try:
                    await self.execute(raw)
                except Logout:
                    await self.flush()
                    return
                await self.flush()
                if self._bad >= MAX_BAD_COMMANDS:
                    self.send(b"* BYE too many errors\r\n")
                    await self.flush()
                    return
        finally:
            await self.close()

    def _count_bad(self) -> bool:
        self._bad += 1
        return self._bad >= MAX_BAD_COMMANDS

    async def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.mail is not None:
            mail, self.mail = self.mail, None
            await mail.release()

    async def _readline(self, seconds: float) -> bytes | None:
        """The next line, or None when the client left, timed out or the server stops."""
        try:
            return await self.conn.read_line(seconds)
        except TimeoutError:
            # Shutdown (RFC 3501 §7.1.5 BYE) or the idle timeout (§5.4 autologout).
            shutting = self.conn.closing.is_set()
            self.send(b"* BYE server shutting down\r\n" if shutting
                      else b"* BYE autologout; idle for too long\r\n")  # fmt: skip
            await self.flush()
            return None
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            self.send(b"* BYE line too long\r\n")
            await self.flush()
            return None

    def _limits(self) -> Limits:
        """Before login nobody may make us buffer megabytes (an APPEND literal)."""
        limits = self.config.limits
        if self.state is not c.State.NOT_AUTHENTICATED:
            return limits
        return Limits(
            max_line=min(limits.max_line, PREAUTH_MAX_LITERAL),
            max_literal=PREAUTH_MAX_LITERAL,
            max_message_literal=PREAUTH_MAX_LITERAL,
            max_literals=4,
            max_command=4 * PREAUTH_MAX_LITERAL,
        )

    def _timeout(self) -> float:
        if self.state is c.State.NOT_AUTHENTICATED:
            return self.config.preauth_timeout
        return self.config.idle_timeout

    def _literal_timeout(self, size: int) -> float:
        return self.config.data_timeout + size / self.config.min_data_rate

    async def _read_command(self) -> bytes | None:
        asm = CommandAssembler(self._limits())
        self.conn.idle = self.state is c.State.NOT_AUTHENTICATED
        try:
            line = await self._readline(self._timeout())
        finally:
            self.conn.idle = False
        if line is None:
            return None
        while True:
            try:
                spec = asm.add_line(line)
            except LiteralTooBig as exc:
                if not exc.spec.synchronizing:
                    # RFC 7888 §4: the client is already sending it; we cannot resync.
                    self.send(b"* BYE [TOOBIG] literal too big\r\n")
                    await self.flush()
                    return None
                raise
            if spec is None:
                return asm.finish()
            if spec.synchronizing:
                self.send(b"+ go ahead\r\n")
                await self.flush()
            try:
                data = await asyncio.wait_for(
                    self.conn.reader.readexactly(spec.size), self._literal_timeout(spec.size)
                )
            except (asyncio.IncompleteReadError, TimeoutError):
                return None
            asm.add_literal(data)
            line = await self._readline(self._timeout())
            if line is None:
                return None

    # --- dispatch ----------------------------------------------------------------------------
    async def execute(self, raw: bytes) -> None:
        """Parse and run one command; the one place that maps errors to responses."""
        tag: str | None = c.parse_tag(raw)
        name, status = "other", "NO"  # for the commands metric
        try:
            cmd = c.parse(raw, utf8=self.utf8)
            tag, name = cmd.tag, cmd.name
            if self.state not in cmd.states:
                raise Bad(f"{cmd.name} not allowed now")
            handler = _HANDLERS[type(cmd)]
            result = await handler(self, cmd)
            await self.send_updates(cmd)
            text, code = result if isinstance(result, tuple) else (result, None)
            self.send(r.tagged(tag, "OK", text or f"{cmd.name} completed", code))
            self._bad, status = 0, "OK"
        except Logout:
            status = "OK"
            raise
        except _Silent:
            status = "OK"
        except ParseError as exc:
            self._bad, status = self._bad + 1, "BAD"
            self.send(r.parse_error(exc.with_tag(tag)))
        except (Bad, BadSequence) as exc:
            self._bad, status = self._bad + 1, "BAD"
            self.send(r.tagged(tag, "BAD", str(exc)))
        except No as exc:
            self.send(self._no(tag, exc.code, exc.text))
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except MailboxError as exc:
            self.send(self._no(tag, response_code(exc), exc.text))
        except Exception:
            _log.error("command failed", conn=self.conn.id, user=self.user, exc_info=True)
            self.send(self._no(tag, "SERVERBUG", "internal error"))
        finally:
            metrics.count(metrics.COMMANDS, "imap", metrics.command_label(name), status)

    @staticmethod
    def _no(tag: str | None, code: str, text: str) -> bytes:
        return r.tagged(tag, "NO", text, r.Code(code) if code else None)

    # --- updates -------------------------------------------------------------------------------
    def _on_change(self, mailbox: str) -> None:
        if self.selected is not None and mailbox == self.selected.name:
            self.changed.set()
            if self.idling:
                self.conn.interrupt()  # IDLE reports it now (RFC 2177)

    async def send_updates(self, cmd: c.Command, *, force: bool = False) -> None:
        view = self.selected
        if view is None or self.mail is None:
            return
        if not (force or self.changed.is_set()):
            return
        no_expunge = isinstance(cmd, c.Fetch | c.Store | c.Search) and not getattr(
            cmd, "uid", False
        )
        self.changed.clear()
        try:
            changes = await self.mail.changes(
                view.name,
                view.max_uid,
                view.exists,
                view.known_modseq,
                not no_expunge,
                not view.readonly,
            )
        except MailboxError as exc:
            if response_code(exc) == "NONEXISTENT":
                # Deleted or renamed by another session: nothing left to show (RFC 3501 §7.1.5).
                self.send(b"* BYE selected mailbox no longer exists\r\n")
                raise Logout from None
            raise
        for line in view.apply(changes, allow_expunge=not no_expunge):
            self.send(line)
        if no_expunge and changes.present is not None:
            self.changed.set()  # expunges still owed: send them at the next allowed point

    # --- any state -------------------------------------------------------------------------------
    async def do_capability(self, cmd: c.Command) -> str:
        self.send(r.capability(self.capabilities()))
        return ""

    async def do_noop(self, cmd: c.Command) -> str:
        await self.send_updates(cmd, force=True)
        return ""

    async def do_logout(self, cmd: c.Command) -> str:
        self.send(b"* BYE logging out\r\n")
        self.send(r.tagged(cmd.tag, "OK", "LOGOUT completed"))
        raise Logout

    async def do_id(self, cmd: c.Command) -> str:
        self.send(b'* ID ("name" "Pillarbox")\r\n')
        return ""

    async def do_enable(self, cmd: c.Command) -> str:
        assert isinstance(cmd, c.Enable)
        enabled = [cap for cap in cmd.capabilities if cap in ENABLEABLE]
        for cap in enabled:
            if cap == "UTF8=ACCEPT":
                self.utf8 = True
            elif cap == "IMAP4REV2":
                self.rev2 = True
            elif cap == "CONDSTORE":
                self.condstore = True
            elif cap == "QRESYNC":
                self.qresync = self.condstore = True  # RFC 7162 §3.2.3: implies CONDSTORE
        if self.selected is not None:
            self.selected.rev2 = self.rev2
            self.selected.condstore = self.condstore
            self.selected.qresync = self.qresync
        names = ["IMAP4rev2" if x == "IMAP4REV2" else x for x in enabled]
        self.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in names) + b"\r\n")
        return ""

    async def do_compress(self, cmd: c.Command) -> str:
        assert isinstance(cmd, c.Compress)
        # RFC 4978 §3: NO [COMPRESSIONACTIVE] when already on; BAD for an unknown mechanism.
        if self.conn.compressed:
            raise No("DEFLATE is already active", "COMPRESSIONACTIVE")
        if cmd.mechanism != "DEFLATE":
            raise Bad(f"unknown compression mechanism {cmd.mechanism}")
        if self.conn.buffered_input():
            # The client must wait for this reply before it sends anything (§3): what it
            # sent meanwhile is neither plain nor known to be compressed.
            raise Bad("nothing may be sent after COMPRESS before its reply")
        self.send(r.tagged(cmd.tag, "OK", "DEFLATE active"))
        await self.flush()
        # §3: compression starts right after the CRLF of the tagged OK, both ways.
        self.conn.start_deflate()
        raise _Silent

    # --- not authenticated ----------------------------------------------------------------------
    async def do_starttls(self, cmd: c.Command) -> str:
        if self.tls_ok:
            raise Bad("TLS is already active")
        if not self.conn.tls_available:
            raise No("STARTTLS not available here")
        # RFC 3501 §6.2.1 / RFC 2595 §3.1: discard anything pipelined before the handshake
        # (see Connection.prepare_starttls for the order).
        self.conn.prepare_starttls()
        self.send(r.tagged(cmd.tag, "OK", "begin TLS negotiation now"))
        await self.flush()
        try:
            await self.conn.start_tls()
        except (OSError, ssl.SSLError) as exc:  # a failed handshake leaves nothing to talk to
            raise ConnectionError(f"STARTTLS handshake failed: {exc}") from None
        raise _Silent

    async def do_login(self, cmd: c.Command) -> Result:
        assert isinstance(cmd, c.Login)
        if not self.tls_ok:
            raise No("LOGIN needs TLS (use STARTTLS)", "PRIVACYREQUIRED")
        return await self._authenticated(Credentials(cmd.userid, cmd.password))

    async def do_authenticate(self, cmd: c.Command) -> Result:
        assert isinstance(cmd, c.Authenticate)
        if not self.tls_ok:
            raise No("authentication needs TLS (use STARTTLS)", "PRIVACYREQUIRED")
        initial = None
        if cmd.initial_response is not None:
            initial = base64.b64encode(cmd.initial_response) or b"="
        try:
            exchange = SaslExchange(cmd.mechanism, initial)
            while exchange.credentials is None:
                self.send(b"+ " + exchange.challenge_b64.encode() + b"\r\n")
                await self.flush()
                line = await self._readline(self.config.preauth_timeout)
                if line is None:
                    raise ConnectionError("connection closed during AUTHENTICATE")
                exchange.feed(line.rstrip(b"\r\n"))
        except SaslError as exc:
            if exc.cancelled:
                raise Bad("authentication cancelled") from None
            raise No(str(exc), "CANNOT" if exc.unknown_mechanism else "") from None
        return await self._authenticated(exchange.credentials)

    async def _authenticated(self, credentials: Credentials) -> Result:
        user = await self.authenticator.authenticate(credentials, self.conn.peer_ip)
        if user is None:
            _log.info("login failed", conn=self.conn.id, client=self.conn.peer_ip)
            raise No("authentication failed", "AUTHENTICATIONFAILED")
        self.mail = await self.backend.open(user)
        self.user = user
        self.state = c.State.AUTHENTICATED
        self.conn.mark_authenticated()
        self._unwatch = self.mail.watch(self._on_change)
        _log.info("login", conn=self.conn.id, user=user, client=self.conn.peer_ip)
        caps = (r.Atom(cap) for cap in self.capabilities())
        return "logged in", r.Code("CAPABILITY", *caps)


Handler = Callable[[Session, Any], Awaitable[Result]]
_HANDLERS: dict[type, Handler] = {}


def handles(*classes: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for cls in classes:
            _HANDLERS[cls] = fn
        return fn

    return register


handles(c.Capability)(Session.do_capability)
handles(c.Noop, c.Check)(Session.do_noop)
handles(c.Logout)(Session.do_logout)
handles(c.Id)(Session.do_id)
handles(c.Enable)(Session.do_enable)
handles(c.Compress)(Session.do_compress)
handles(c.StartTLS)(Session.do_starttls)
handles(c.Login)(Session.do_login)
handles(c.Authenticate)(Session.do_authenticate)

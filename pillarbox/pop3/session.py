"""One POP3 connection: read bounded lines, parse, check the state, run, answer.

States (RFC 1939 §3): AUTHORIZATION until USER/PASS or AUTH succeeds and the maildrop is
locked and numbered, then TRANSACTION; QUIT there enters UPDATE (the deletions) and ends.

Authentication happens only under TLS (implicit on pop3s, after STLS on pop3): before that
USER, PASS and AUTH answer ``-ERR [AUTH]`` and CAPA offers neither USER nor SASL, so no
password ever crosses the network in clear (RFC 2595 §2.1, RFC 8314 §5).

Errors are answered in one place (:meth:`Session._execute`): a malformed line or a command
not allowed in this state is ``-ERR`` and counts against the bad-command budget; a failing
store is ``-ERR [SYS/TEMP]`` with the traceback in the log. The session ends at QUIT, at
EOF, when idle too long, when a budget is spent, or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from pillarbox import log
from pillarbox.auth.sasl import MAX_SASL_MESSAGE, MECHANISMS, Credentials, SaslError, SaslExchange
from pillarbox.metrics import registry as metrics
from pillarbox.pop3 import commands as c
from pillarbox.pop3.backend import MailDrop, Pop3Backend
from pillarbox.pop3.maildrop import Maildrop, MaildropError, MaildropLocks
from pillarbox.pop3.message import CHUNK, stuffed_chunks, top_part

_log = log.get("pop3")

# RFC 1939 §3: an autologout timer, if any, MUST be at least 10 minutes.
MIN_IDLE_TIMEOUT: Final = 600.0
# A SASL client response is one base64 line of a bounded SASL message.
MAX_SASL_LINE: Final = MAX_SASL_MESSAGE * 2 + 16


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    idle_timeout: float = MIN_IDLE_TIMEOUT
    # Before login: each command line must arrive, whole, within this many seconds.
    preauth_timeout: float = 60.0
    # RFC 2449 §4 allows 255 octets; we take some more for AUTH initial responses.
    max_line: int = 1024
    # Commands per session before any mail is seen, plus this many per message: a client
    # may LIST, UIDL, TOP, RETR and DELE every message once and still fit.
    max_commands: int = 1000
    commands_per_message: int = 5
    max_bad_commands: int = 10


class Err(Exception):
    """Answer ``-ERR [code] text``; ``bad`` counts it against the bad-command budget."""

    def __init__(self, text: str, code: str = "", *, bad: bool = False):
        super().__init__(text)
        self.text = text
        self.code = code
        self.bad = bad


class LineTooLong(Exception):
    """A line over the limit (read and dropped whole): the session answers and goes on."""


class _Goodbye(Exception):
    """Say this line and close the connection."""

    def __init__(self, line: str, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


class Session:
    def __init__(
        self,
        conn: Any,
        config: SessionConfig,
        authenticator: Any,
        backend: Pop3Backend,
        locks: MaildropLocks,
    ):
        self.conn = conn
        self.config = config
        self.authenticator = authenticator
        self.backend = backend
        self.locks = locks
        self.state = State.AUTHORIZATION
        self.user: str | None = None
        self._user_name: str | None = None  # from USER, waiting for PASS
        self._mail: MailDrop | None = None
        self.maildrop: Maildrop | None = None
        self._out = bytearray()
        self._commands = 0
        self._command_budget = config.max_commands
        self._bad = 0

    # --- output ------------------------------------------------------------------------------
    def send(self, line: str) -> None:
        self._out += line.encode("utf-8") + b"\r\n"

    def ok(self, text: str = "") -> None:
        self.send(f"+OK {text}" if text else "+OK")

    async def flush(self) -> None:
        """Send the output; a client that stops reading is dropped after the idle timeout."""
        if self._out:
            self.conn.write(bytes(self._out))
            self._out.clear()
        await self.conn.drain(self.config.idle_timeout)

    async def _write(self, data: bytes) -> None:
        """Append to the output and push it out once a chunk's worth is waiting."""
        self._out += data
        if len(self._out) >= CHUNK:
            await self.flush()

    @staticmethod
    def _err_line(text: str, code: str = "") -> str:
        return f"-ERR [{code}] {text}" if code else f"-ERR {text}"

    # --- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        self.ok(f"{self.config.hostname} Pillarbox POP3 server ready")
        metrics.count(metrics.SESSIONS, "pop3", self.conn.listener)
        try:
            await self.flush()
            while await self._step():
                pass
        except _Goodbye as bye:
            _log.info("session closed", conn=self.conn.id, user=self.user, reason=bye.reason)
            self._out.clear()
            self.send(bye.line)
            try:
                await asyncio.wait_for(self.flush(), 5)
            except (TimeoutError, ConnectionError):
                pass
        finally:
            await self._release()

    async def _step(self) -> bool:
        """Read and run one command; False when the session is over."""
        if self.conn.closing.is_set():
            raise _Goodbye(self._err_line("server shutting down", "SYS/TEMP"), "shutdown")
        self.conn.idle = self.state is State.AUTHORIZATION
        try:
            line = await self._readline(self.config.max_line)
        except LineTooLong:
            self._count_command()
            self._bad += 1
            self.send(self._err_line("line too long"))
            done = False
        else:
            self.conn.idle = False
            if line is None:
                return False
            self._count_command()
            done = await self._execute(line)
        await self.flush()
        if self._bad >= self.config.max_bad_commands:
            raise _Goodbye(self._err_line("too many errors"), "too many errors")
        return not done

    def _count_command(self) -> None:
        self._commands += 1
        if self._commands > self._command_budget:
            raise _Goodbye(self._err_line("too many commands"), "too many commands")

    async def _readline(self, limit: int) -> bytes | None:
        """The next line without its line end; None at EOF. Raises LineTooLong for a line
        over ``limit``, _Goodbye when idle too long, at shutdown, or for a line longer than
        the stream can hold. The timeout is a deadline for the whole line (a byte now and
        then does not extend it): short before login, RFC 1939's 10 minutes after."""
        timeout = (
            self.config.preauth_timeout
            if self.state is State.AUTHORIZATION
            else self.config.idle_timeout
        )
        try:
            # In this task: shutdown ends the wait through Connection.interrupt.
            line = await self.conn.read_line(timeout)
        except TimeoutError:
            if self.conn.closing.is_set():
                bye = _Goodbye(self._err_line("server shutting down", "SYS/TEMP"), "shutdown")
            else:
                bye = _Goodbye(self._err_line("autologout; idle for too long"), "idle timeout")
            raise bye from None
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            # Beyond the stream buffer: no way to find the next command reliably.
            raise _Goodbye(self._err_line("line too long"), "line too long") from None
        if len(line) > limit:
            raise LineTooLong
        return line.rstrip(b"\r\n")

    async def _execute(self, line: bytes) -> bool:
        """Run one command line; True after QUIT. The one place errors become -ERR."""
        try:
            try:
                command = c.parse(line)
            except c.CommandError as exc:
                raise Err(exc.text, bad=True) from None
            handler, states = _HANDLERS[type(command)]
            if self.state not in states:
                raise Err(f"{command.name} not allowed in the {self.state.value} state", bad=True)
            return bool(await handler(self, command))
        except Err as exc:
            if exc.bad:
                self._bad += 1
            self.send(self._err_line(exc.text, exc.code))
        except MaildropError as exc:
            self.send(self._err_line(exc.text))
        except (ConnectionError, TimeoutError, ssl.SSLError, _Goodbye):
            raise  # the connection is gone or must go: run() and the listener handle it
        except Exception:
            _log.error("command failed", conn=self.conn.id, user=self.user, exc_info=True)
            self.send(self._err_line("internal error, try again later", "SYS/TEMP"))
        return False

    async def _release(self) -> None:
        """End of session without QUIT: nothing is deleted (RFC 1939 §6)."""
        mail, self._mail, self.maildrop = self._mail, None, None
        if self.user is not None and self.state is State.TRANSACTION:
            self.locks.release(self.user)
        if mail is not None:
            await mail.release()

    # --- capabilities (RFC 2449) ------------------------------------------------------------
    @property
    def tls_active(self) -> bool:
        return self.conn.tls is not None

    def capabilities(self) -> list[str]:
        # RFC 2449 §5: what AUTHORIZATION offers is announced in both states.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.tls_active:
            caps += ["USER", "SASL " + " ".join(MECHANISMS)]
        elif self.conn.tls_available:
            caps.append("STLS")
        caps.append("IMPLEMENTATION Pillarbox")
        return caps

    async def do_capa(self, cmd: c.Command) -> None:
        self.ok("capability list follows")
        for cap in self.capabilities():
            self.send(cap)
        self.send(".")

    async def do_quit(self, cmd: c.Command) -> bool:
        if self.maildrop is None:
            self.ok(f"{self.config.hostname} signing off")
            return True
        # RFC 1939 §6: the UPDATE state.
        marked = self.maildrop.marked
        try:
            result = await self.maildrop.update()
        except Exception:
            _log.error("update failed", conn=self.conn.id, user=self.user, exc_info=True)
            self.send(self._err_line("some deleted messages not removed", "SYS/TEMP"))
            return True
        _log.info(
            "logout", conn=self.conn.id, user=self.user, deleted=result.deleted, marked=marked
        )
        self.ok(f"{self.config.hostname} signing off ({result.deleted} messages deleted)")
        return True

    # --- AUTHORIZATION -------------------------------------------------------------------------
    def _require_tls(self) -> None:
        if not self.tls_active:
            raise Err("authentication needs TLS: use STLS first", "AUTH")

    async def do_stls(self, cmd: c.Command) -> None:
        if self.tls_active:
            raise Err("TLS is already active", bad=True)
        if not self.conn.tls_available:
            raise Err("STLS not available here")
        # RFC 2595 §4 / RFC 3207 §4.2: nothing pipelined in clear may count after the
        # handshake (see Connection.prepare_starttls for the order).
        self.conn.prepare_starttls()
        self.ok("begin TLS negotiation")
        await self.flush()
        await self.conn.start_tls()
        self._user_name = None  # forget what the client said before TLS

    async def do_user(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.User)
        self._require_tls()
        self._user_name = cmd.user
        self.ok("send PASS")

    async def do_pass(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Pass)
        self._require_tls()
        name, self._user_name = self._user_name, None
        if name is None:
            raise Err("send USER first", bad=True)
        await self._login(Credentials(authcid=name, password=cmd.password))

    async def do_auth(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Auth)
        self._require_tls()
        if cmd.mechanism is None:
            self.ok("mechanisms follow")  # RFC 1734's listing, which some clients still send
            for mechanism in MECHANISMS:
                self.send(mechanism)
            self.send(".")
            return
        self._user_name = None
        credentials = await self._sasl(cmd.mechanism, cmd.initial_response)
        await self._login(credentials)

    async def _sasl(self, mechanism: str, initial: bytes | None) -> Credentials:
        """RFC 5034 §4: "+ base64" challenges, one client line each, "*" cancels."""
        try:
            exchange = SaslExchange(mechanism, initial)
            while exchange.credentials is None:
                self.send("+ " + exchange.challenge_b64)
                await self.flush()
                try:
                    line = await self._readline(MAX_SASL_LINE)
                except LineTooLong:
                    raise SaslError("SASL response too long") from None
                if line is None:
                    raise ConnectionError("connection closed during AUTH")
                exchange.feed(line)
        except SaslError as exc:
            if exc.cancelled:
                raise Err("authentication cancelled") from None
            if exc.unknown_mechanism:
                raise Err("unsupported mechanism", bad=True) from None
            raise Err(str(exc), "AUTH", bad=True) from None
        assert exchange.credentials is not None
        return exchange.credentials

    async def _login(self, credentials: Credentials) -> None:
        user = await self.authenticator.authenticate(credentials, self.conn.peer_ip)
        if user is None:
            _log.info("login failed", conn=self.conn.id, client=self.conn.peer_ip)
            raise Err("invalid user name or password", "AUTH", bad=True)
        if not self.locks.acquire(user):
            raise Err("maildrop already locked by another POP3 session", "IN-USE")
        try:
            mail = await self.backend.open(user)
        except Exception:
            self.locks.release(user)
            raise
        try:
            maildrop = await Maildrop.load(mail)
        except Exception:
            self.locks.release(user)
            await mail.release()
            raise
        self.user, self._mail, self.maildrop = user, mail, maildrop
        self.state = State.TRANSACTION
        self.conn.mark_authenticated()
        self._command_budget += self.config.commands_per_message * len(maildrop)
        _log.info(
            "login",
            conn=self.conn.id,
            user=user,
            client=self.conn.peer_ip,
            tls=self.conn.tls.version if self.conn.tls else None,
            messages=len(maildrop),
        )
        self.ok(f"maildrop has {maildrop.count} messages ({maildrop.size} octets)")

    # --- TRANSACTION ----------------------------------------------------------------------------
    @property
    def _drop(self) -> Maildrop:
        assert self.maildrop is not None
        return self.maildrop

    async def do_stat(self, cmd: c.Command) -> None:
        self.ok(f"{self._drop.count} {self._drop.size}")

    async def do_list(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.List_)
        drop = self._drop
        if cmd.number is not None:
            self.ok(f"{cmd.number} {drop.size_of(cmd.number)}")
            return
        self.ok(f"{drop.count} messages ({drop.size} octets)")
        for number, size, _ in drop.listing():
            await self._write(b"%d %d\r\n" % (number, size))
        self.send(".")

    async def do_uidl(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Uidl)
        drop = self._drop
        if cmd.number is not None:
            self.ok(f"{cmd.number} {drop.unique_id(cmd.number)}")
            return
        self.ok("unique-id listing follows")
        prefix = b"%d." % drop.uidvalidity
        for number, _, uid in drop.listing():
            await self._write(b"%d %s%d\r\n" % (number, prefix, uid))
        self.send(".")

    async def do_retr(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Retr)
        data = await self._drop.read(cmd.number, retrieve=True)
        self.ok(f"{len(data)} octets")
        await self._send_message(data)

    async def do_top(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Top)
        data = await self._drop.read(cmd.number, retrieve=False)
        self.ok("top of message follows")
        await self._send_message(top_part(data, cmd.lines))

    async def _send_message(self, data: bytes) -> None:
        """A multi-line response in chunks, each written and drained before the next."""
        for piece in stuffed_chunks(data):
            await self._write(piece)

    async def do_dele(self, cmd: c.Command) -> None:
        assert isinstance(cmd, c.Dele)
        self._drop.delete(cmd.number)
        self.ok(f"message {cmd.number} deleted")

    async def do_noop(self, cmd: c.Command) -> None:
        self.ok()

    async def do_rset(self, cmd: c.Command) -> None:
        self._drop.reset()
        self.ok(f"maildrop has {self._drop.count} messages ({self._drop.size} octets)")


Handler = Callable[[Session, Any], Awaitable[bool | None]]
_ANY = frozenset(State)
_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_HANDLERS: Final[dict[type, tuple[Handler, frozenset[State]]]] = {
    c.Capa: (Session.do_capa, _ANY),
    c.Quit: (Session.do_quit, _ANY),
    c.Stls: (Session.do_stls, _AUTHORIZATION),
    c.User: (Session.do_user, _AUTHORIZATION),
    c.Pass: (Session.do_pass, _AUTHORIZATION),
    c.Auth: (Session.do_auth, _AUTHORIZATION),
    c.Stat: (Session.do_stat, _TRANSACTION),
    c.List_: (Session.do_list, _TRANSACTION),
    c.Uidl: (Session.do_uidl, _TRANSACTION),
    c.Retr: (Session.do_retr, _TRANSACTION),
    c.Top: (Session.do_top, _TRANSACTION),
    c.Dele: (Session.do_dele, _TRANSACTION),
    c.Noop: (Session.do_noop, _TRANSACTION),
    c.Rset: (Session.do_rset, _TRANSACTION),
}

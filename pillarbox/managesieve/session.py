"""One ManageSieve connection: read a command (lines and literals), check the state, run it.

States (RFC 5804 §2): non-authenticated until AUTHENTICATE succeeds, then authenticated;
UNAUTHENTICATE (RFC 5804 §2.14) goes back. CAPABILITY, NOOP and LOGOUT work in both.

Authentication happens only under TLS: before STARTTLS, AUTHENTICATE answers
``NO (ENCRYPT-NEEDED)`` and the SASL capability lists no mechanism, so no password ever
crosses the network in clear (RFC 5804 §2.1 and §5, RFC 8314 §5). After STARTTLS the
capabilities are sent again, unasked (RFC 5804 §2.2).

Errors are answered in one place (:meth:`Session._execute`): a malformed command or one
not allowed in this state is ``NO`` and counts against the bad-command budget; a refusal
of the script storage is ``NO (code)`` with its RFC 5804 response code; a failing backend
is ``NO (TRYLATER)`` with the traceback in the log. The session ends at LOGOUT, at EOF,
with ``BYE`` when idle too long, when a budget is spent, or when the server shuts down.
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
from pillarbox.managesieve import parser as p
from pillarbox.managesieve import responses as r
from pillarbox.managesieve.backend import (
    QUOTA_MAXSIZE,
    ScriptError,
    SieveBackend,
    UserScripts,
)
from pillarbox.metrics import registry as metrics

_log = log.get("managesieve")

# A SASL response is one base64 string of a bounded SASL message.
MAX_SASL_LITERAL: Final = MAX_SASL_MESSAGE * 2 + 16
# A command has at most two strings; more literals than this is not a client.
MAX_LITERALS: Final = 4
# Octets of an oversized literal we read and drop to answer NO and stay in step, rather
# than closing: this many times the limit (a script just over it), at least 1 MiB.
DISCARD_FACTOR: Final = 4
CHUNK: Final = 65536


class State(enum.Enum):
    NONAUTH = "non-authenticated"
    AUTH = "authenticated"


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    idle_timeout: float = 300.0
    # Before login: each command line must arrive, whole, within this many seconds.
    preauth_timeout: float = 60.0
    # A literal must arrive within data_timeout plus one second per min_data_rate octets.
    data_timeout: float = 180.0
    min_data_rate: float = 1024.0
    # A command line outside its literals (names are at most 1024 octets quoted).
    max_line: int = 8192
    max_commands: int = 1000
    max_bad_commands: int = 10


class No(Exception):
    """Answer ``NO (code) "text"``; ``bad`` counts it against the bad-command budget."""

    def __init__(self, text: str, code: str = "", *, bad: bool = False):
        super().__init__(text)
        self.text = text
        self.code = code
        self.bad = bad


class _Goodbye(Exception):
    """Say ``BYE`` with this text and close the connection."""

    def __init__(self, text: str, reason: str, code: str = ""):
        super().__init__(reason)
        self.text = text
        self.reason = reason
        self.code = code


class Session:
    def __init__(self, conn: Any, config: SessionConfig, authenticator: Any, backend: SieveBackend):
        self.conn = conn
        self.config = config
        self.authenticator = authenticator
        self.backend = backend
        self.state = State.NONAUTH
        self.user: str | None = None
        self._scripts: UserScripts | None = None
        self._out = bytearray()
        self._commands = 0
        self._bad = 0

    # --- output ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._out += data

    def ok(self, text: str = "", code: str = "") -> None:
        self.send(r.response("OK", code, text))

    async def flush(self) -> None:
        """Send the output; a client that stops reading is dropped after the idle timeout."""
        if self._out:
            self.conn.writer.write(bytes(self._out))
            self._out.clear()
        await self.conn.drain(self.config.idle_timeout)

    # --- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        metrics.SESSIONS.labels("managesieve", self.conn.listener).inc()
        self.send_capabilities()
        self.ok(f"{self.config.hostname} Pillarbox ManageSieve ready")
        try:
            await self.flush()
            while await self._step():
                pass
        except _Goodbye as bye:
            _log.info("session closed", conn=self.conn.id, user=self.user, reason=bye.reason)
            self._out.clear()
            self.send(r.response("BYE", bye.code, bye.text))
            try:
                await asyncio.wait_for(self.flush(), 5)
            except (TimeoutError, ConnectionError):
                pass

    async def _step(self) -> bool:
        """Read and run one command; False when the session is over."""
        if self.conn.closing.is_set():
            raise _Goodbye("server shutting down", "shutdown", "TRYLATER")
        self.conn.idle = self.state is State.NONAUTH
        try:
            tokens = await self._read_command()
        except No as exc:  # malformed, or a literal too large: the command was read whole
            self._count_command()
            self._refuse(exc)
            done = False
        else:
            self.conn.idle = False
            if tokens is None:
                return False
            self._count_command()
            done = await self._execute(tokens)
        await self.flush()
        if self._bad >= self.config.max_bad_commands:
            raise _Goodbye("too many errors", "too many errors")
        return not done

    def _count_command(self) -> None:
        self._commands += 1
        if self._commands > self.config.max_commands:
            raise _Goodbye("too many commands", "too many commands")

    def _refuse(self, exc: No) -> None:
        if exc.bad:
            self._bad += 1
        self.send(r.response("NO", exc.code, exc.text))

    # --- input --------------------------------------------------------------------------------
    def _line_timeout(self) -> float:
        if self.state is State.NONAUTH:
            return self.config.preauth_timeout
        return self.config.idle_timeout

    async def _read_command(self, max_literal: int | None = None) -> list[p.Token] | None:
        """The tokens of one command, literals included; None at EOF. Raises No for a
        malformed command or a literal over ``max_literal`` (the script size limit by
        default) after reading all of it, so the next command starts where it should."""
        limit = self.backend.max_script_size if max_literal is None else max_literal
        tokens: list[p.Token] = []
        error: No | None = None
        line = await self._readline(first=True)
        for _ in range(MAX_LITERALS + 1):
            if line is None:
                return None
            try:
                scanned = p.scan_line(line)
            except p.ParseError as exc:
                error = error or No(exc.text, bad=True)
                # A literal announced after the error still follows: skip it too.
                size, sync = p.trailing_literal(line)
                scanned = p.ScannedLine([], size, sync)
            tokens += scanned.tokens
            if scanned.literal is None:
                if error is not None:
                    raise error
                return tokens
            if scanned.literal > limit:
                error = error or No(f"literal over {limit} octets", QUOTA_MAXSIZE)
                await self._discard(scanned.literal, limit)
            else:
                data = await self._read_exactly(scanned.literal)
                if error is None:
                    tokens.append(data)
            line = await self._readline(first=False)
        raise _Goodbye("too many literals in one command", "too many literals")

    async def _readline(self, *, first: bool) -> bytes | None:
        """The next line without its line end; None at EOF. _Goodbye when idle too long,
        at shutdown, or for a line over the limit (no way to find the next command).
        The timeout is a deadline for the whole line: a byte now and then does not extend
        it. The line that continues a command after a literal gets the data timeout."""
        read = asyncio.ensure_future(self.conn.reader.readuntil(b"\n"))
        stop = asyncio.ensure_future(self.conn.closing.wait())
        timeout = self._line_timeout() if first else self.config.data_timeout
        try:
            done, _ = await asyncio.wait(
                (read, stop), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            read.cancel()
        if read not in done:
            if stop in done:
                raise _Goodbye("server shutting down", "shutdown", "TRYLATER")
            raise _Goodbye("idle for too long", "idle timeout")
        try:
            line = read.result()
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise _Goodbye("line too long", "line too long") from None
        if len(line) > self.config.max_line:
            raise _Goodbye("line too long", "line too long")
        return line.rstrip(b"\r\n")

    def _data_deadline(self, size: int) -> float:
        return self.config.data_timeout + size / self.config.min_data_rate

    async def _read_exactly(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(self._data_deadline(size)):
                return await self.conn.reader.readexactly(size)
        except TimeoutError:
            raise _Goodbye("literal too slow", "data timeout") from None
        except asyncio.IncompleteReadError:
            raise ConnectionError("connection closed in a literal") from None

    async def _discard(self, size: int, limit: int) -> None:
        """Read and drop an oversized literal, or close when it is far too large."""
        if size > max(limit * DISCARD_FACTOR, 1 << 20):
            raise _Goodbye(f"literal over {limit} octets", "literal too large", QUOTA_MAXSIZE)
        left = size
        while left:
            left -= len(await self._read_exactly(min(left, CHUNK)))

    # --- commands -----------------------------------------------------------------------------
    async def _execute(self, tokens: list[p.Token]) -> bool:
        """Run one command; True after LOGOUT. The one place errors become NO."""
        try:
            try:
                command = p.parse(tokens)
            except p.ParseError as exc:
                raise No(exc.text, bad=True) from None
            handler, states = _HANDLERS[type(command)]
            if self.state not in states:
                raise No(f"{command.name} is not allowed in the {self.state.value} state", bad=True)
            return bool(await handler(self, command))
        except No as exc:
            self._refuse(exc)
        except ScriptError as exc:
            self.send(r.response("NO", exc.code, exc.text))
        except (ConnectionError, TimeoutError, ssl.SSLError, _Goodbye):
            raise  # the connection is gone or must go: run() and the listener handle it
        except Exception:
            _log.error("command failed", conn=self.conn.id, user=self.user, exc_info=True)
            self.send(r.response("NO", "TRYLATER", "internal error, try again later"))
        return False

    @property
    def tls_active(self) -> bool:
        return self.conn.tls is not None

    def send_capabilities(self) -> None:
        """RFC 5804 §1.7: one line per capability; the caller adds the OK."""
        caps = [
            r.capability("IMPLEMENTATION", "Pillarbox"),
            # No mechanism before TLS: there is nothing a client may do in clear.
            r.capability("SASL", " ".join(MECHANISMS) if self.tls_active else ""),
            r.capability("SIEVE", " ".join(self.backend.extensions)),
        ]
        if not self.tls_active and self.conn.tls_available:
            caps.append(r.capability("STARTTLS"))
        if self.user is not None:
            caps.append(r.capability("OWNER", self.user))  # RFC 5804 §1.7: once logged in
        caps += [r.capability("UNAUTHENTICATE"), r.capability("VERSION", "1.0")]
        self.send(b"".join(caps))

    async def do_capability(self, cmd: p.Command) -> None:
        self.send_capabilities()
        self.ok()

    async def do_logout(self, cmd: p.Command) -> bool:
        _log.info("logout", conn=self.conn.id, user=self.user)
        self.ok("logout")  # RFC 5804 §2.3: OK, then the server closes
        return True

    async def do_noop(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.Noop)
        # RFC 5804 §2.11: the tag comes back in a TAG response code.
        self.ok("done", f"TAG {r.string(cmd.tag).decode()}" if cmd.tag is not None else "")

    # --- non-authenticated --------------------------------------------------------------------
    async def do_starttls(self, cmd: p.Command) -> None:
        if self.tls_active:
            raise No("TLS is already active", bad=True)
        if not self.conn.tls_available:
            raise No("STARTTLS is not available here")
        # RFC 5804 §2.2 / RFC 3207 §4.2: nothing pipelined in clear may count after the
        # handshake (see Connection.prepare_starttls for the order).
        self.conn.prepare_starttls()
        self.ok("begin TLS negotiation")
        await self.flush()
        await self.conn.start_tls()
        # RFC 5804 §2.2: after the handshake the server sends the capabilities again.
        self.send_capabilities()
        self.ok("TLS active")

    async def do_authenticate(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.Authenticate)
        if not self.tls_active:
            # RFC 5804 §1.3 ENCRYPT-NEEDED: refused without a TLS layer.
            raise No("authentication needs TLS: use STARTTLS first", "ENCRYPT-NEEDED")
        credentials = await self._sasl(cmd.mechanism, cmd.initial_response)
        user = await self.authenticator.authenticate(credentials, self.conn.peer_ip)
        if user is None:
            _log.info("login failed", conn=self.conn.id, client=self.conn.peer_ip)
            raise No("invalid user name or password", bad=True)
        self.user, self._scripts = user, self.backend.scripts(user)
        self.state = State.AUTH
        self.conn.mark_authenticated()
        _log.info(
            "login",
            conn=self.conn.id,
            user=user,
            client=self.conn.peer_ip,
            tls=self.conn.tls.version if self.conn.tls else None,
        )
        self.ok("logged in")

    async def _sasl(self, mechanism: str, initial: bytes | None) -> Credentials:
        """RFC 5804 §2.1: challenges are strings of base64; each client response is one
        string (quoted or literal); ``"*"`` cancels."""
        try:
            exchange = SaslExchange(mechanism, initial)
            while exchange.credentials is None:
                self.send(r.string(exchange.challenge_b64) + r.CRLF)
                await self.flush()
                try:
                    tokens = await self._read_command(MAX_SASL_LITERAL)
                except No as exc:
                    raise SaslError(exc.text) from None
                if tokens is None:
                    raise ConnectionError("connection closed during AUTHENTICATE")
                try:
                    exchange.feed(p.sasl_response(tokens))
                except p.ParseError as exc:
                    raise SaslError(exc.text) from None
        except SaslError as exc:
            if exc.cancelled:
                raise No("authentication cancelled") from None
            if exc.unknown_mechanism:
                raise No("unsupported mechanism", bad=True) from None
            raise No(str(exc), bad=True) from None
        assert exchange.credentials is not None
        return exchange.credentials

    # --- authenticated ------------------------------------------------------------------------
    @property
    def scripts(self) -> UserScripts:
        assert self._scripts is not None
        return self._scripts

    def _event(self, event: str, **fields: Any) -> None:
        _log.info(event, conn=self.conn.id, user=self.user, **fields)

    async def _check(self, content: str) -> None:
        problem = await self.backend.check(content)
        if problem is not None:
            # RFC 5804 §2.6: a script that is not valid is refused with NO; the text says
            # where, so the user can fix it.
            raise No(str(problem))

    async def do_havespace(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.HaveSpace)
        if cmd.size > self.backend.max_script_size:
            raise No(f"scripts are limited to {self.backend.max_script_size} octets", QUOTA_MAXSIZE)
        await self.scripts.have_space(cmd.script, cmd.size)
        self.ok()

    async def do_putscript(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.PutScript)
        await self._check(cmd.content)
        await self.scripts.put(cmd.script, cmd.content)
        self._event("script stored", script=cmd.script, size=len(cmd.content.encode()))
        self.ok()

    async def do_checkscript(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.CheckScript)
        await self._check(cmd.content)
        self.ok()

    async def do_listscripts(self, cmd: p.Command) -> None:
        for info in await self.scripts.list():
            self.send(r.string(info.name) + (b" ACTIVE" if info.active else b"") + r.CRLF)
        self.ok()

    async def do_getscript(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.GetScript)
        content = await self.scripts.get(cmd.script)
        # RFC 5804 §2.9: the script as a string (a literal), CRLF, then OK.
        self.send(r.literal(content.encode("utf-8")) + r.CRLF)
        self.ok()

    async def do_setactive(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.SetActive)
        await self.scripts.set_active(cmd.script or None)
        self._event("script activated" if cmd.script else "scripts deactivated", script=cmd.script)
        self.ok()

    async def do_deletescript(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.DeleteScript)
        await self.scripts.delete(cmd.script)
        self._event("script deleted", script=cmd.script)
        self.ok()

    async def do_renamescript(self, cmd: p.Command) -> None:
        assert isinstance(cmd, p.RenameScript)
        await self.scripts.rename(cmd.old, cmd.new)
        self._event("script renamed", script=cmd.old, to=cmd.new)
        self.ok()

    async def do_unauthenticate(self, cmd: p.Command) -> None:
        # RFC 5804 §2.14.1: back to the non-authenticated state; TLS stays.
        self._event("unauthenticate")
        self.user, self._scripts = None, None
        self.state = State.NONAUTH
        self.ok()


Handler = Callable[[Session, Any], Awaitable[bool | None]]
_ANY = frozenset(State)
_NONAUTH = frozenset({State.NONAUTH})
_AUTH = frozenset({State.AUTH})
_HANDLERS: Final[dict[type, tuple[Handler, frozenset[State]]]] = {
    p.Capability: (Session.do_capability, _ANY),
    p.Logout: (Session.do_logout, _ANY),
    p.Noop: (Session.do_noop, _ANY),
    p.StartTls: (Session.do_starttls, _NONAUTH),
    p.Authenticate: (Session.do_authenticate, _NONAUTH),
    p.HaveSpace: (Session.do_havespace, _AUTH),
    p.PutScript: (Session.do_putscript, _AUTH),
    p.CheckScript: (Session.do_checkscript, _AUTH),
    p.ListScripts: (Session.do_listscripts, _AUTH),
    p.GetScript: (Session.do_getscript, _AUTH),
    p.SetActive: (Session.do_setactive, _AUTH),
    p.DeleteScript: (Session.do_deletescript, _AUTH),
    p.RenameScript: (Session.do_renamescript, _AUTH),
    p.Unauthenticate: (Session.do_unauthenticate, _AUTH),
}

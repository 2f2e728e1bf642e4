"""One IMAP connection: read commands, dispatch by type, map errors, send updates.

Dispatch: the command's class is looked up in the one command table
(:data:`pillarbox.imap.dispatch.COMMANDS`: handler and allowed states).

Reading: lines are bounded by the StreamReader limit and :class:`grammar.Limits`; literals are
read exactly (``+ go ahead`` for synchronising ones, nothing for LITERAL+). Each command is
parsed into a typed object (``commands.parse``) before anything runs.

Errors are mapped in one place (:meth:`Session._fail`, by :func:`outcome.failure`), in three
kinds: the client's mistake (a ``ParseError``, a ``Bad``) is ``tag BAD reason``, a user
error (``No``, the store's user errors) is ``tag NO [CODE] text``, anything else is ``tag NO
[SERVERBUG] internal error`` and one log line with the traceback. The session goes on in
every case; only the connection's end stops it.

Updates from other sessions and deliveries (the store's change hub) are sent before the
tagged response of a command, and while IDLE, at the points RFC 3501 §7 allows: no EXPUNGE
during FETCH, STORE or SEARCH (RFC 3501 §7.4.1), but EXISTS and FLAGS at any command end.
With NOTIFY (RFC 5465, session_notify.py) they are also sent between commands: the wait for
the next command is interrupted by news as IDLE's wait is (:meth:`Session.readline`).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pillarbox import log
from pillarbox.imap import commands as c
from pillarbox.imap import response as r
from pillarbox.imap import session_notify as notify
from pillarbox.imap import session_selected as sel
from pillarbox.imap.backend import MailBackend, UserMail
from pillarbox.imap.dispatch import COMMANDS
from pillarbox.imap.grammar import CommandAssembler, Limits, LiteralTooBig, ParseError
from pillarbox.imap.notifyspec import NotifySpec
from pillarbox.imap.outcome import Bad, ErrorKind, Logout, No, Result, Silent, failure, user_error
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.mailstore.rows import MailboxEvent
from pillarbox.metrics import registry as metrics

__all__ = ["Bad", "Logout", "No", "Result", "Session", "SessionConfig"]

# How a wait for a client's line ends without one: the deadline or shutdown, the client
# gone, a line beyond the stream's limit, the selected mailbox gone while NOTIFY news was
# sent (Session._wait_ended says what each means).
_WAIT_ENDS: Final = (
    TimeoutError,
    asyncio.IncompleteReadError,
    ConnectionError,
    asyncio.LimitOverrunError,
    Logout,
)

_log = log.get("imap")

MAX_BAD_COMMANDS: Final = 20
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
    "NOTIFY",
)


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


class Flag:
    """A set/clear flag with asyncio.Event's names, for a flag nobody awaits: an Event
    carries a deque of waiters (760 bytes) for each of 2,000 idle sessions."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


class Session:
    # Slots: one of these lives as long as each connection (2,000 idle IMAP sessions).
    __slots__ = (
        "_bad",
        "_out",
        "_unwatch",
        "authenticator",
        "backend",
        "changed",
        "condstore",
        "config",
        "conn",
        "idle_cmd",
        "idle_until",
        "mail",
        "news",
        "notify",
        "qresync",
        "rev2",
        "saved",
        "selected",
        "state",
        "unwatch_names",
        "user",
        "utf8",
        "waiting",
    )

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
        self._out: bytearray | None = None  # what send() queued; None while empty (idle)
        # Set by the change hub when the selected mailbox changed elsewhere.
        self.changed = Flag()
        # In IDLE (RFC 2177): the command, and when the idle time ends (loop time). A
        # change interrupts the wait for DONE.
        self.idle_cmd: c.Idle | None = None
        self.idle_until = 0.0
        self._unwatch: Callable[[], None] | None = None
        self._bad = 0
        # NOTIFY (RFC 5465, session_notify.py): the shared request, the news not sent yet
        # (None when none), the mailbox-list watch, and whether the session is waiting for
        # a command (news interrupts that wait only).
        self.notify: NotifySpec | None = None
        self.news: list[str | MailboxEvent] | None = None
        self.unwatch_names: Callable[[], None] | None = None
        self.waiting = False

    # --- output --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._out is None:
            self._out = bytearray(data)
        else:
            self._out += data

    async def flush(self) -> None:
        if self._out is not None:
            # Handed over, not copied: the transport copies what it cannot send at once.
            out, self._out = self._out, None
            self.conn.write(out)
        await self.conn.drain(self.config.data_timeout)

    async def write(self, data: bytes) -> None:
        self.send(data)
        if self._out is not None and len(self._out) >= 65536:
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

    def _greeting(self) -> bytes:
        # Made here, not in run(): a local of run() would be kept for the whole session.
        caps = " ".join(self.capabilities())
        return f"* OK [CAPABILITY {caps}] {self.config.hostname} Pillarbox ready\r\n".encode()

    # --- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.send(self._greeting())
        metrics.count(metrics.SESSIONS, "imap", self.conn.listener)
        await self.flush()
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # of the wait for the next command
        try:
            while True:
                if self.conn.closing.is_set():
                    self.send(b"* BYE server shutting down\r\n")
                    await self.flush()
                    return
                if (idle := self.idle_cmd) is not None:
                    # IDLE's wait is awaited here, in this frame (session_selected.py, IDLE).
                    try:
                        await sel.idle_catch_up(self)
                        try:
                            line: bytes | None = await sel.idle_wait(self)
                        except TimeoutError:
                            line = None
                        await sel.idle_step(self, line)
                    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                        return  # the client left, or sent a line beyond any limit
                    except Logout:
                        await self.flush()
                        return
                    except Bad as exc:  # a line other than DONE
                        self._fail(exc, idle.tag)
                    await self.flush()
                    continue
                # The wait for the next command is awaited here, in this frame too (as
                # IDLE's: thousands of sessions wait in it). With NOTIFY set, news
                # interrupts it and is sent (RFC 5465 §3: unsolicited responses at any
                # time) at the loop's top; the wait keeps its deadline.
                if deadline is None:
                    deadline = loop.time() + self._timeout()
                if self.notify is not None and self.has_news():
                    await self._push_safely()
                self.waiting = True
                self.conn.idle = self.state is c.State.NOT_AUTHENTICATED
                try:
                    first = await self.conn.read_line(max(0.0, deadline - loop.time()))
                except TimeoutError as exc:
                    if not self.conn.closing.is_set() and loop.time() < deadline:
                        continue  # interrupted for news before the deadline
                    await self._wait_ended(exc)
                    return
                except _WAIT_ENDS as exc:
                    await self._wait_ended(exc)
                    return
                finally:
                    self.waiting = self.conn.idle = False
                deadline = None
                try:
                    raw = await self._read_command(first)
                except ParseError as exc:  # a line or literal the assembler refused
                    self._fail(exc, exc.tag)
                    await self.flush()
                    if self._bad >= MAX_BAD_COMMANDS:
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

    async def close(self) -> None:
        notify.stop(self)
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.mail is not None:
            mail, self.mail = self.mail, None
            await mail.release()

    async def readline(self, seconds: float) -> bytes | None:
        """The next line, or None when the client left, timed out or the server stops."""
        try:
            return await self.conn.read_line(seconds)
        except _WAIT_ENDS as exc:
            await self._wait_ended(exc)
            return None

    async def _wait_ended(self, exc: BaseException) -> None:
        """What to tell a client whose line did not come (see :data:`_WAIT_ENDS`)."""
        if isinstance(exc, TimeoutError):
            # Shutdown (RFC 3501 §7.1.5 BYE) or the idle timeout (§5.4 autologout).
            shutting = self.conn.closing.is_set()
            self.send(b"* BYE server shutting down\r\n" if shutting
                      else b"* BYE autologout; idle for too long\r\n")  # fmt: skip
        elif isinstance(exc, asyncio.LimitOverrunError):
            self.send(b"* BYE line too long\r\n")
        elif not isinstance(exc, Logout):  # Logout: the BYE is said (_send_selected)
            return  # the client left
        await self.flush()

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

    async def _read_command(self, line: bytes) -> bytes | None:
        """The command that starts with ``line``, its literals read; None when the
        session ends."""
        asm = CommandAssembler(self._limits())
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
                data = await self.conn.read_exactly(spec.size, self._literal_timeout(spec.size))
            except (asyncio.IncompleteReadError, TimeoutError):
                return None
            asm.add_literal(data)
            more = await self.readline(self._timeout())
            if more is None:
                return None
            line = more

    # --- dispatch ----------------------------------------------------------------------------
    async def execute(self, raw: bytes) -> None:
        """Parse and run one command. Whatever it raises, but for the ends of the session
        and the connection, becomes a response in :meth:`_fail` (see outcome.py)."""
        tag: str | None = c.parse_tag(raw)
        name, status = "other", "NO"  # for the commands metric
        try:
            cmd = c.parse(raw, utf8=self.utf8)
            tag, name = cmd.tag, cmd.name
            handler, states = COMMANDS[type(cmd)]
            if self.state not in states:
                raise Bad(f"{cmd.name} not allowed now")
            result = await handler(self, cmd)
            await self.send_updates(cmd)
            text, code = result if isinstance(result, tuple) else (result, None)
            self.send(r.tagged(tag, "OK", text or f"{cmd.name} completed", code))
            self._bad, status = 0, "OK"
        except Logout:
            status = "OK"
            raise
        except Silent:
            status = "OK"
        except (ConnectionError, asyncio.IncompleteReadError):
            raise  # the client is gone: nothing to answer
        except Exception as exc:
            status = self._fail(exc, tag, name)
        finally:
            metrics.count(metrics.COMMANDS, "imap", metrics.command_label(name), status)

    def _fail(self, exc: Exception, tag: str | None, command: str = "") -> str:
        """Answer a failed command by its kind (outcome.py); its metric status."""
        failed = failure(exc, tag)
        if failed.kind is ErrorKind.PARSE:
            self._bad += 1
        elif failed.kind is ErrorKind.INTERNAL:
            # One line, the traceback in a field (newlines escaped), so a grep finds it all.
            trace = "".join(traceback.format_exception(exc)).rstrip()
            _log.error(
                "command failed",
                conn=self.conn.id,
                user=self.user,
                command=command or None,
                error=f"{type(exc).__name__}: {exc}",
                traceback=trace,
            )
        self.send(failed.response)
        return failed.status

    def logged_in(self, user: str, mail: UserMail) -> None:
        """Enter the authenticated state (RFC 3501 §3.2) with the user's mailboxes."""
        self.mail = mail
        self.user = sys.intern(user)  # a user's sessions (one per folder in IDLE) share it
        self.state = c.State.AUTHENTICATED
        self.conn.mark_authenticated()
        self._unwatch = mail.watch(self._on_change)

    # --- updates -------------------------------------------------------------------------------
    def _on_change(self, mailbox: str) -> None:
        view = self.selected
        if view is not None and mailbox == view.name:
            self.changed.set()
            if self.idle_cmd is not None or (self.waiting and notify.pushes_selected(self)):
                self.conn.interrupt()  # IDLE (RFC 2177) or NOTIFY (RFC 5465) reports it now
        elif self.notify is not None:
            notify.mailbox_changed(self, mailbox)

    def on_list_change(self, event: MailboxEvent) -> None:
        notify.list_changed(self, event)

    def wake(self) -> None:
        """NOTIFY news arrived: end the wait for DONE or for the next command."""
        if self.waiting or self.idle_cmd is not None:
            self.conn.interrupt()

    def has_news(self) -> bool:
        """Is there NOTIFY news to send between commands?"""
        return self.news is not None or (self.changed.is_set() and notify.pushes_selected(self))

    async def _push_safely(self) -> None:
        """:meth:`push_news`; a failure there is ours, not the client's: it is logged and
        ends NOTIFY (the session goes on as plain IMAP), as a failed command would be."""
        try:
            await self.push_news()
        except (Logout, ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as exc:
            _log.error("notify failed", conn=self.conn.id, user=self.user,
                       error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            notify.stop(self)

    async def push_news(self) -> None:
        """Send NOTIFY news between commands (RFC 5465 §3): the selected mailbox's changes
        when a selected group asks for them (expunges unless selected-delayed), then the
        other mailboxes' and the mailbox list's."""
        if self.changed.is_set() and notify.pushes_selected(self):
            await self._send_selected(no_expunge=notify.holds_expunges(self))
        if self.news is not None:
            await notify.send_news(self)
        await self.flush()

    async def send_updates(self, cmd: c.Command, *, force: bool = False) -> None:
        if force or self.changed.is_set():
            no_expunge = isinstance(cmd, c.Fetch | c.Store | c.Search) and not getattr(
                cmd, "uid", False
            )
            await self._send_selected(no_expunge=no_expunge)
        if self.news is not None:
            await notify.send_news(self)

    async def _send_selected(self, *, no_expunge: bool) -> None:
        view = self.selected
        if view is None or self.mail is None:
            return
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
        except Exception as exc:
            no = user_error(exc)
            if no is not None and no.code == "NONEXISTENT":
                # Deleted or renamed by another session: nothing left to show (RFC 3501 §7.1.5).
                self.send(b"* BYE selected mailbox no longer exists\r\n")
                raise Logout from None
            raise
        before = view.max_uid
        for line in view.apply(changes, allow_expunge=not no_expunge):
            self.send(line)
        if no_expunge and changes.present is not None:
            self.changed.set()  # expunges still owed: send them at the next allowed point
        if self.notify is not None and view.max_uid > before:
            await notify.send_new_messages(self, view, before)  # MessageNew's fetch-atts

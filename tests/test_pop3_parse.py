"""The pure parts of POP3: the command parser, byte-stuffing, TOP, the maildrop's UPDATE."""

from __future__ import annotations

import asyncio
import socket
from array import array
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.mailstore.rows import FetchRow
from pillarbox.net.listener import Listeners, ListenerSpec, TlsMode
from pillarbox.pop3 import commands as c
from pillarbox.pop3.maildrop import Maildrop, MaildropError, MaildropLocks
from pillarbox.pop3.message import DotStuffer, stuffed_chunks, top_part
from pillarbox.pop3.server import session_config
from pillarbox.pop3.session import MIN_IDLE_TIMEOUT, Session, SessionConfig

# -- commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"user alice@example.test", c.User("alice@example.test")),
        (b"PASS  two  spaces ", c.Pass(" two  spaces ")),
        (b"PASS p\xc3\xa4ss", c.Pass("päss")),
        (b"stat", c.Stat()),
        (b"STAT ", c.Stat()),
        (b"LIST", c.List_(None)),
        (b"list 7", c.List_(7)),
        (b"UIDL 12", c.Uidl(12)),
        (b"RETR 1", c.Retr(1)),
        (b"TOP 3 0", c.Top(3, 0)),
        (b"dele 2", c.Dele(2)),
        (b"AUTH", c.Auth(None, None)),
        (b"auth plain", c.Auth("PLAIN", None)),
        (b"AUTH PLAIN AGEAYg==", c.Auth("PLAIN", b"AGEAYg==")),
        (b"AUTH LOGIN =", c.Auth("LOGIN", b"=")),
        (b"CAPA", c.Capa()),
        (b"stls", c.Stls()),
        (b"QUIT", c.Quit()),
        (b"NOOP", c.Noop()),
        (b"RSET", c.Rset()),
    ],
)
def test_parse(line: bytes, expected: c.Command) -> None:
    assert c.parse(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"HELO x",
        b"APOP alice 0123456789abcdef",  # needs clear-text passwords on file: not offered
        b"RETR",
        b"RETR 0",
        b"RETR -1",
        b"RETR 1 2",
        b"RETR x",
        b"LIST 12345678901",
        b"TOP 1",
        b"TOP 1 -1",
        b"STAT 1",
        b"USER",
        b"USER a b",
        b"USER \xff",
        b"PASS",
        b"AUTH PL@IN",
        b"AUTH PLAIN a b",
        b"NOOP\x00",
        b"USER a\rb",
    ],
)
def test_parse_rejects(line: bytes) -> None:
    with pytest.raises(c.CommandError):
        c.parse(line)


def test_command_names() -> None:
    assert c.List_(None).name == "LIST" and c.Retr(1).name == "RETR"


@given(st.binary(max_size=300))
def test_parse_never_crashes(line: bytes) -> None:
    try:
        c.parse(line)
    except c.CommandError:
        pass


# -- byte-stuffing and TOP --------------------------------------------------------------------


def reference_stuffing(message: bytes) -> bytes:
    """Line by line, the way RFC 1939 §3 describes it."""
    lines = message.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


@given(
    st.lists(st.sampled_from([b".", b"..", b"a", b".a", b"\r\n", b" ", b"x.y"]), max_size=40),
    st.integers(min_value=1, max_value=7),
)
def test_stuffing_in_any_chunks_matches_the_rfc(parts: list[bytes], chunk: int) -> None:
    message = b"".join(parts)
    assert b"".join(stuffed_chunks(message, chunk)) == reference_stuffing(message)


def test_stuffing_edges() -> None:
    assert b"".join(stuffed_chunks(b"")) == b".\r\n"
    assert b"".join(stuffed_chunks(b".\r\n")) == b"..\r\n.\r\n"
    assert b"".join(stuffed_chunks(b"no end")) == b"no end\r\n.\r\n"
    stuffer = DotStuffer()
    assert stuffer.feed(b"a\r\n") + stuffer.feed(b".b\r\n") + stuffer.finish() == (
        b"a\r\n..b\r\n.\r\n"
    )


MESSAGE = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n"


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (MESSAGE, 0, b"A: 1\r\nB: 2\r\n\r\n"),
        (MESSAGE, 2, b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n"),
        (MESSAGE, 3, MESSAGE),
        (MESSAGE, 99, MESSAGE),
        (b"A: 1\r\n", 5, b"A: 1\r\n"),  # no body at all
        (b"\r\nbody\r\nmore\r\n", 1, b"\r\nbody\r\n"),  # empty header
        (b"A: 1\r\n\r\nno end", 1, b"A: 1\r\n\r\nno end"),
    ],
)
def test_top_part(data: bytes, lines: int, expected: bytes) -> None:
    assert top_part(data, lines) == expected


# -- the maildrop -------------------------------------------------------------------------------


class FakeStore:
    """Records what the maildrop asks of the store (the real one is in test_pop3_session)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def store(self, name: str, ranges: Any, mode: str, flags: Any, since: Any) -> None:
        self.calls.append(("store", ranges, mode, flags))

    async def expunge(self, name: str, ranges: Any) -> list[int]:
        self.calls.append(("expunge", ranges))
        return [uid for lo, hi in ranges for uid in range(lo, hi + 1)][:-1]  # one was gone

    async def read_message(self, name: str, uid: int) -> bytes | None:
        return b"x\r\n" if uid != 9 else None


def test_maildrop_marks_and_update() -> None:
    store = FakeStore()
    uids = array("I", [3, 4, 5, 7, 9])
    drop = Maildrop(store, 42, uids, array("Q", [10, 20, 30, 40, 50]))  # type: ignore[arg-type]
    assert (drop.count, drop.size, drop.unique_id(4)) == (5, 150, "42.7")
    for number in (1, 2, 4):
        drop.delete(number)
    with pytest.raises(MaildropError):
        drop.delete(2)
    with pytest.raises(MaildropError):
        drop.size_of(6)
    assert (drop.count, drop.size) == (2, 80)
    assert [n for n, _, _ in drop.listing()] == [3, 5]
    asyncio.run(drop.read(3, retrieve=True))
    with pytest.raises(MaildropError, match="removed"):
        asyncio.run(drop.read(5, retrieve=True))
    result = asyncio.run(drop.update())
    assert store.calls == [
        ("store", [(5, 5)], "add", ("\\Seen",)),
        ("store", [(3, 4), (7, 7)], "add", ("\\Deleted",)),
        ("expunge", [(3, 4), (7, 7)]),
    ]
    assert (result.deleted, result.missing) == (2, 1)


def test_maildrop_reset_and_empty_update() -> None:
    store = FakeStore()
    drop = Maildrop(store, 1, array("I", [1, 2]), array("Q", [5, 6]))  # type: ignore[arg-type]
    drop.delete(1)
    drop.reset()
    assert (drop.count, drop.size, drop.marked) == (2, 11, 0)
    assert asyncio.run(drop.update()).deleted == 0
    assert store.calls == []


def test_locks() -> None:
    locks = MaildropLocks()
    assert locks.acquire("a") and not locks.acquire("a") and locks.acquire("b")
    locks.release("a")
    assert locks.acquire("a")


# -- session limits that need a short clock --------------------------------------------------------


def test_config_keeps_the_rfc_minimum_idle_timeout() -> None:
    from types import SimpleNamespace

    limits = SimpleNamespace(
        idle_timeout=300, preauth_timeout=60, max_commands=1000, max_bad_commands=10
    )
    config = session_config(SimpleNamespace(hostname="h", limits=limits))
    assert config.idle_timeout == MIN_IDLE_TIMEOUT == 600.0
    limits.idle_timeout = 3600
    assert session_config(SimpleNamespace(hostname="h", limits=limits)).idle_timeout == 3600


def test_idle_session_is_logged_out() -> None:
    """The autologout timer, with the clock shortened (the real one is 10 minutes or more)."""

    async def scenario() -> list[bytes]:
        config = SessionConfig(hostname="h", preauth_timeout=0.3, max_commands=3)

        async def handler(conn: Any) -> None:
            await Session(conn, config, None, None, MaildropLocks()).run()  # type: ignore[arg-type]

        listeners = Listeners(None)
        addresses = await listeners.bind(
            [ListenerSpec("pop3", "127.0.0.1", 0, TlsMode.NONE, handler)]
        )
        await listeners.start()
        try:
            reader, writer = await asyncio.open_connection(*addresses["pop3"])
            lines = [await asyncio.wait_for(reader.readline(), 5)]
            writer.write(b"CAPA\r\n")
            while (line := await asyncio.wait_for(reader.readline(), 5)) != b".\r\n":
                lines.append(line)
            lines.append(await asyncio.wait_for(reader.readline(), 5))  # after 0.3 s of quiet
            lines.append(await asyncio.wait_for(reader.read(), 5))  # closed
            writer.close()
            return lines
        finally:
            await listeners.stop(1)

    lines = asyncio.run(scenario())
    assert lines[0].startswith(b"+OK") and b"STLS" not in b"".join(lines)  # no TLS here
    assert lines[-2] == b"-ERR autologout; idle for too long\r\n" and lines[-1] == b""


def test_command_budget() -> None:
    async def scenario() -> bytes:
        config = SessionConfig(hostname="h", max_commands=3)

        async def handler(conn: Any) -> None:
            await Session(conn, config, None, None, MaildropLocks()).run()  # type: ignore[arg-type]

        listeners = Listeners(None)
        addresses = await listeners.bind(
            [ListenerSpec("pop3", "127.0.0.1", 0, TlsMode.NONE, handler)]
        )
        await listeners.start()
        try:
            sock = socket.create_connection(addresses["pop3"], timeout=5)
            sock.sendall(b"USER a\r\n" * 4)
            data = b""
            while chunk := await asyncio.to_thread(sock.recv, 4096):
                data += chunk
            sock.close()
            return data
        finally:
            await listeners.stop(1)

    data = asyncio.run(scenario())
    assert data.endswith(b"-ERR too many commands\r\n")
    assert data.count(b"-ERR [AUTH]") == 3  # the plain listener refuses USER before TLS


def test_client_that_stops_reading_is_dropped() -> None:
    """Pipelined commands whose answers are never read: the session must not wait forever
    (the write side has the idle timeout too)."""
    commands = 5000

    async def scenario() -> bytes:
        config = SessionConfig(hostname="h", idle_timeout=0.5, max_commands=commands + 1)

        async def handler(conn: Any) -> None:
            # Small kernel buffers on both ends, so a few dozen kilobytes stall the writer.
            conn.writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            await Session(conn, config, None, None, MaildropLocks()).run()  # type: ignore[arg-type]

        listeners = Listeners(None)
        addresses = await listeners.bind(
            [ListenerSpec("pop3", "127.0.0.1", 0, TlsMode.NONE, handler)]
        )
        await listeners.start()
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            await asyncio.to_thread(sock.connect, addresses["pop3"])
            await asyncio.to_thread(sock.sendall, b"CAPA\r\n" * commands)
            await asyncio.sleep(2)  # not reading: the server's writes stall
            data = b""
            while chunk := await asyncio.to_thread(sock.recv, 65536):
                data += chunk
            sock.close()
            return data
        finally:
            await listeners.stop(1)

    data = asyncio.run(scenario())
    assert 0 < data.count(b"+OK capability list follows") < commands


# -- a failing store: [SYS/TEMP], and nothing half-done -------------------------------------------


class FlakyMail:
    """Two messages; ``expunge`` fails (a full disk, say)."""

    def __init__(self) -> None:
        self.released = 0

    async def status(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(uidvalidity=7, uidnext=3)

    async def fetch(self, name: str, ranges: Any, data: bool, limit: int) -> list[FetchRow]:
        return [FetchRow(1, "", 0, 3, 1), FetchRow(2, "", 0, 3, 1)]

    async def read_message(self, name: str, uid: int) -> bytes:
        return b"x\r\n"

    async def store(self, *args: Any) -> None:
        return None

    async def expunge(self, name: str, ranges: Any) -> list[int]:
        raise OSError(28, "No space left on device")

    async def release(self) -> None:
        self.released += 1


class FlakyBackend:
    def __init__(self) -> None:
        self.mail = FlakyMail()
        self.opens = 0

    async def open(self, user: str) -> FlakyMail:
        self.opens += 1
        if self.opens == 1:
            raise RuntimeError("index locked by a crashed process")
        return self.mail


class AcceptAll:
    async def authenticate(self, credentials: Any, client: str) -> str:
        return credentials.authcid


def test_store_failures_answer_sys_temp(tmp_path: Any) -> None:
    import ssl

    from pillarbox.tls.certs import make_ca, make_server_cert
    from pillarbox.tls.context import TlsProvider

    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    make_ca(ca, ca_key, "test CA")
    make_server_cert(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"], ca, ca_key)
    backend = FlakyBackend()
    locks = MaildropLocks()

    async def scenario() -> list[bytes]:
        config = SessionConfig(hostname="h")

        async def handler(conn: Any) -> None:
            await Session(conn, config, AcceptAll(), backend, locks).run()

        listeners = Listeners(TlsProvider(tmp_path / "c.pem", tmp_path / "k.pem"))
        addresses = await listeners.bind(
            [ListenerSpec("pop3s", "127.0.0.1", 0, TlsMode.IMPLICIT, handler)]
        )
        await listeners.start()
        context = ssl.create_default_context(cafile=str(ca))
        try:
            reader, writer = await asyncio.open_connection(
                *addresses["pop3s"], ssl=context, server_hostname="localhost"
            )
            answers = [await asyncio.wait_for(reader.readline(), 5)]  # the greeting
            for line in (b"USER a@b", b"PASS x", b"USER a@b", b"PASS x", b"DELE 1", b"QUIT"):
                writer.write(line + b"\r\n")
                answers.append(await asyncio.wait_for(reader.readline(), 5))
            writer.close()
            return answers
        finally:
            await listeners.stop(1)

    answers = asyncio.run(scenario())
    assert answers[2].startswith(b"-ERR [SYS/TEMP] ")  # open failed: still AUTHORIZATION
    assert answers[4] == b"+OK maildrop has 2 messages (6 octets)\r\n"
    assert answers[6] == b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"
    assert backend.mail.released == 1 and "a@b" not in locks._held

"""POP3 against the real server over real sockets: Python's poplib as the independent client,
a raw line-level client for exact wire bytes and hostile input, imaplib to see the store.

Every test gets its own data dir and server on free ports (the ``server`` fixture) and sets
short socket timeouts, so the file runs in parallel under ``pytest -n auto``.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import os
import poplib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pillarbox.store.maildir import ensure_maildir, user_maildir
from tests import pbserver

ALICE = "alice@example.test"
TIMEOUT = 10

# A body line starting with "." (and one that is only ".", and "..") must be byte-stuffed
# on the wire and come back unchanged.
DOTTED = (
    b"From: Bob <bob@example.org>\r\nTo: Alice <alice@example.test>\r\nSubject: dots\r\n"
    b"\r\nfirst body line\r\n.leading dot\r\n.\r\n..two dots\r\nlast line\r\n"
)


def message(n: int, body: bytes = b"Hello.\r\n") -> bytes:
    return f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: message {n}\r\n\r\n".encode() + body


_sequence = itertools.count()


def put(settings: pbserver.Settings, *messages: bytes, user: str = ALICE) -> None:
    """Deliver straight into the user's Maildir (tmp/, then new/), in this order: the names
    sort as the messages come, so the store gives them ascending UIDs in that order."""
    maildir = user_maildir(settings.mail_dir, user)
    ensure_maildir(maildir)
    for data in messages:
        name = f"{int(time.time())}.M{next(_sequence):06d}P{os.getpid()}.pop3test"
        (maildir / "tmp" / name).write_bytes(data)
        os.rename(maildir / "tmp" / name, maildir / "new" / name)


def put_mail(server: pbserver.RunningServer, *messages: bytes, user: str = ALICE) -> None:
    """Into the Maildir as another program would (:func:`put`), or through the store's
    delivery when the run is on the memory store (there is no Maildir then)."""
    if not pbserver.on_memory():
        put(server.settings, *messages, user=user)
        return
    for data in messages:
        server.deliver(user, "INBOX", data)


def tls(settings: pbserver.Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def pop3s(server: pbserver.RunningServer) -> poplib.POP3_SSL:
    return poplib.POP3_SSL(
        "127.0.0.1", server.port("pop3s"), context=tls(server.settings), timeout=TIMEOUT
    )


@contextmanager
def login(server: pbserver.RunningServer) -> Iterator[poplib.POP3_SSL]:
    client = pop3s(server)
    client.user(ALICE)
    client.pass_(pbserver.PASSWORD)
    try:
        yield client
    finally:
        client.close()  # no QUIT: the caller says QUIT when it wants the UPDATE state


def raw_command(client: poplib.POP3, line: str) -> bytes:
    """poplib has no AUTH (nor a public way to send STLS twice): its one-line helper."""
    answer: bytes = client._shortcmd(line)  # type: ignore[attr-defined]
    return answer


def err_text(exc: poplib.error_proto) -> bytes:
    arg = exc.args[0]
    return arg if isinstance(arg, bytes) else str(arg).encode()


class Raw:
    """A line-level POP3 client (implicit TLS or plain) for exact wire checks."""

    def __init__(self, server: pbserver.RunningServer, listener: str = "pop3s"):
        self.settings = server.settings
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", server.port(listener)), timeout=TIMEOUT
        )
        if listener == "pop3s":
            self.sock = tls(self.settings).wrap_socket(self.sock, server_hostname=pbserver.HOSTNAME)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def starttls(self) -> None:
        self.sock = tls(self.settings).wrap_socket(self.sock, server_hostname=pbserver.HOSTNAME)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        data = self.file.readline(1 << 20)
        if not data:
            raise ConnectionError("closed")
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def multiline(self) -> bytes:
        """The raw body of a multi-line response, up to and including the ".\r\n" line."""
        out = b""
        while True:
            line = self.line()
            out += line
            if line == b".\r\n":
                return out

    def login(self) -> None:
        assert self.command(b"USER " + ALICE.encode()).startswith(b"+OK")
        assert self.command(b"PASS " + pbserver.PASSWORD.encode()).startswith(b"+OK")

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.file.close()  # else the file object keeps the descriptor open
        self.sock.close()


# -- TLS before authentication -----------------------------------------------------------------


def test_plain_listener_refuses_authentication_until_stls(
    server: pbserver.RunningServer,
) -> None:
    client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=TIMEOUT)
    try:
        assert client.getwelcome().startswith(b"+OK")
        caps = client.capa()
        assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
        assert {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} <= set(caps)
        assert caps["IMPLEMENTATION"] == ["Pillarbox"]
        for attempt in (
            lambda: client.user(ALICE),
            lambda: client.pass_(pbserver.PASSWORD),
            lambda: raw_command(client, "AUTH PLAIN " + plain_b64()),
        ):
            with pytest.raises(poplib.error_proto) as info:
                attempt()
            assert err_text(info.value).startswith(b"-ERR [AUTH] ")
        with pytest.raises(poplib.error_proto):
            client.stat()  # not in the AUTHORIZATION state
        client.stls(tls(server.settings))
        caps = client.capa()
        assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
        client.user(ALICE)
        assert client.pass_(pbserver.PASSWORD).startswith(b"+OK")
        with pytest.raises(poplib.error_proto):
            raw_command(client, "STLS")  # only in AUTHORIZATION
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()


def test_pipelined_plaintext_before_stls_is_discarded(server: pbserver.RunningServer) -> None:
    """RFC 2595 §4: an attacker's USER injected after STLS must not count after TLS."""
    raw = Raw(server, "pop3")
    raw.send(b"STLS\r\nUSER " + ALICE.encode() + b"\r\n")
    assert raw.line().startswith(b"+OK")
    raw.starttls()
    answer = raw.command(b"PASS " + pbserver.PASSWORD.encode())
    assert answer.startswith(b"-ERR") and b"USER first" in answer
    raw.login()  # the honest dialogue still works
    raw.close()


def test_stls_never_loses_the_client_hello(server: pbserver.RunningServer) -> None:
    """A client starting the handshake right after "+OK" (a race once lost to the plaintext
    discard) completes it every time."""
    for _ in range(20):
        raw = Raw(server, "pop3")
        assert raw.command(b"STLS").startswith(b"+OK")
        raw.starttls()
        assert raw.command(b"QUIT").startswith(b"+OK")
        raw.close()


# -- logging in --------------------------------------------------------------------------------


def plain_b64(password: str = pbserver.PASSWORD) -> str:
    return base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()


def test_auth_plain_with_and_without_initial_response(server: pbserver.RunningServer) -> None:
    client = pop3s(server)
    assert raw_command(client, "AUTH PLAIN " + plain_b64()).startswith(b"+OK")
    assert client.stat() == (0, 0)
    client.quit()

    client = pop3s(server)
    assert raw_command(client, "AUTH PLAIN") == b"+ "  # RFC 5034 §4: an empty challenge
    assert raw_command(client, plain_b64()).startswith(b"+OK")
    client.quit()


def test_auth_login_and_cancel(server: pbserver.RunningServer) -> None:
    client = pop3s(server)
    try:
        assert raw_command(client, "AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
        with pytest.raises(poplib.error_proto) as info:
            raw_command(client, "*")
        assert b"cancelled" in err_text(info.value)
        assert raw_command(client, "AUTH LOGIN").startswith(b"+ ")
        assert raw_command(client, base64.b64encode(ALICE.encode()).decode()).startswith(b"+ ")
        answer = raw_command(client, base64.b64encode(pbserver.PASSWORD.encode()).decode())
        assert answer.startswith(b"+OK")
        client.quit()
    finally:
        client.close()


def test_wrong_password_is_slow_and_says_auth(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"auth_failure_delay": 0.4}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        wrong_passwords(server)


def wrong_passwords(server: pbserver.RunningServer) -> None:
    client = pop3s(server)
    try:
        client.user(ALICE)
        started = time.monotonic()
        with pytest.raises(poplib.error_proto) as info:
            client.pass_("wrong password")
        assert time.monotonic() - started >= 0.9 * server.settings.limits.auth_failure_delay
        assert err_text(info.value).startswith(b"-ERR [AUTH] ")
        with pytest.raises(poplib.error_proto):
            client.pass_(pbserver.PASSWORD)  # back to square one: USER first
        with pytest.raises(poplib.error_proto) as info:
            raw_command(client, "AUTH PLAIN " + plain_b64("nope"))
        assert err_text(info.value).startswith(b"-ERR [AUTH] ")
        client.user(ALICE)
        assert client.pass_(pbserver.PASSWORD).startswith(b"+OK")
    finally:
        client.close()


def test_second_session_gets_in_use(server: pbserver.RunningServer) -> None:
    with login(server) as first:
        second = pop3s(server)
        second.user(ALICE)
        with pytest.raises(poplib.error_proto) as info:
            second.pass_(pbserver.PASSWORD)
        assert err_text(info.value).startswith(b"-ERR [IN-USE] ")
        first.quit()
        second.user(ALICE)
        assert second.pass_(pbserver.PASSWORD).startswith(b"+OK")
        second.quit()


# -- reading -----------------------------------------------------------------------------------


def test_stat_list_uidl_top_retr(server: pbserver.RunningServer) -> None:
    stored = [message(1), DOTTED, message(3, b"no final line end")]
    put_mail(server, *stored)
    with login(server) as client:
        assert client.stat() == (3, sum(len(m) for m in stored))
        _, listing, _ = client.list()
        assert listing == [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(stored)]
        assert client.list(2) == b"+OK 2 %d" % len(DOTTED)
        _, uidls, _ = client.uidl()
        ids = [line.split()[1] for line in uidls]
        assert len(set(ids)) == 3 and all(re.fullmatch(rb"\d+\.\d+", i) for i in ids)
        assert client.uidl(3) == b"+OK 3 " + ids[2]
        # poplib undoes the byte-stuffing and splits lines: join them back.
        for number, data in enumerate(stored, 1):
            response, lines, _ = client.retr(number)
            assert response == b"+OK %d octets" % len(data)
            assert b"\r\n".join(lines) + b"\r\n" == data.rstrip(b"\r\n") + b"\r\n"
        _, lines, _ = client.top(2, 0)
        assert b"\r\n".join(lines) + b"\r\n" == DOTTED[: DOTTED.index(b"\r\n\r\n") + 4]
        _, lines, _ = client.top(2, 2)
        assert lines[-2:] == [b"first body line", b".leading dot"]
        _, lines, _ = client.top(2, 100)
        assert b"\r\n".join(lines) + b"\r\n" == DOTTED
        for bad in (lambda: client.retr(4), lambda: client.list(0), lambda: client.top(9, 1)):
            with pytest.raises(poplib.error_proto):
                bad()
        client.quit()


def test_retr_wire_bytes_are_stuffed_exactly(server: pbserver.RunningServer) -> None:
    lf_only = b"Subject: bare LF\n\n.line\nend\n"
    put_mail(server, DOTTED, lf_only)
    raw = Raw(server)
    raw.login()
    assert raw.command(b"RETR 1") == b"+OK %d octets\r\n" % len(DOTTED)
    stuffed = DOTTED.replace(b"\r\n.", b"\r\n..")
    assert raw.multiline() == stuffed + b".\r\n"
    # The store hands out CRLF; the size announced is the size sent (before stuffing).
    crlf = lf_only.replace(b"\n", b"\r\n")
    assert raw.command(b"LIST 2") == b"+OK 2 %d\r\n" % len(crlf)
    assert raw.command(b"RETR 2") == b"+OK %d octets\r\n" % len(crlf)
    assert raw.multiline() == crlf.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    raw.close()


def test_pipelined_commands_answered_in_order(server: pbserver.RunningServer) -> None:
    put_mail(server, message(1), message(2))
    raw = Raw(server)
    raw.send(
        b"USER " + ALICE.encode() + b"\r\nPASS " + pbserver.PASSWORD.encode() + b"\r\n"
        b"STAT\r\nLIST\r\nNOOP\r\nUIDL 2\r\nQUIT\r\n"
    )
    assert raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK maildrop has 2 messages")
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.line().startswith(b"+OK 2 messages")
    assert raw.multiline().count(b"\r\n") == 3
    assert raw.line() == b"+OK\r\n"
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.line().startswith(b"+OK ")
    assert raw.closed()


# -- deleting ----------------------------------------------------------------------------------


def test_dele_then_rset_keeps_everything(server: pbserver.RunningServer) -> None:
    put_mail(server, message(1), message(2))
    with login(server) as client:
        client.dele(1)
        assert client.stat() == (1, len(message(2)))
        with pytest.raises(poplib.error_proto) as info:
            client.retr(1)
        assert b"deleted" in err_text(info.value)
        with pytest.raises(poplib.error_proto):
            client.dele(1)
        _, listing, _ = client.list()
        assert listing == [b"2 %d" % len(message(2))]
        client.rset()
        assert client.stat()[0] == 2
        client.quit()
    with login(server) as client:
        assert client.stat()[0] == 2
        client.quit()


def test_dele_then_quit_expunges_for_imap_too(server: pbserver.RunningServer) -> None:
    put_mail(server, message(1), message(2), message(3))
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=tls(server.settings), timeout=TIMEOUT
    )
    try:
        imap.login(ALICE, pbserver.PASSWORD)
        assert imap.select("INBOX") == ("OK", [b"3"])
        with login(server) as client:
            client.retr(3)
            client.dele(1)
            client.dele(2)
            assert client.quit().startswith(b"+OK")
        imap.noop()
        assert imap.response("EXPUNGE")[1] == [b"1", b"1"]
        _, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        (head, subject), *_ = [item for item in data if isinstance(item, tuple)]
        assert b"message 3" in subject and b"UID 3 " in head and b"\\Seen" in head
        assert imap.select("INBOX") == ("OK", [b"1"])
    finally:
        imap.logout()
    with login(server) as client:
        assert client.stat() == (1, len(message(3)))
        client.quit()


def test_dropped_connection_deletes_nothing(server: pbserver.RunningServer) -> None:
    put_mail(server, message(1), message(2))
    raw = Raw(server)
    raw.login()
    assert raw.command(b"DELE 1").startswith(b"+OK")
    assert raw.command(b"DELE 2").startswith(b"+OK")
    raw.close()  # no QUIT
    deadline = time.monotonic() + TIMEOUT
    while True:  # the server notices the drop asynchronously; until then the lock is held
        client = pop3s(server)
        client.user(ALICE)
        try:
            client.pass_(pbserver.PASSWORD)
            break
        except poplib.error_proto as exc:
            client.close()
            assert b"[IN-USE]" in err_text(exc) and time.monotonic() < deadline
            time.sleep(0.05)
    assert client.stat()[0] == 2
    client.quit()


def test_message_removed_by_imap_meanwhile(server: pbserver.RunningServer) -> None:
    put_mail(server, message(1), message(2))
    with login(server) as client:
        imap = imaplib.IMAP4_SSL(
            "127.0.0.1", server.port("imaps"), ssl_context=tls(server.settings), timeout=TIMEOUT
        )
        imap.login(ALICE, pbserver.PASSWORD)
        imap.select("INBOX")
        imap.store("1", "+FLAGS", "\\Deleted")
        imap.expunge()
        imap.logout()
        with pytest.raises(poplib.error_proto) as info:
            client.retr(1)
        assert b"removed" in err_text(info.value)
        client.dele(1)
        client.dele(2)
        assert client.quit().startswith(b"+OK")
    with login(server) as client:
        assert client.stat() == (0, 0)
        client.quit()


@pytest.mark.on_disk  # a restart: memory keeps nothing
def test_uidl_stable_across_restart(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    put(settings, message(1), message(2), message(3))
    with pbserver.RunningServer(settings) as running, login(running) as client:
        before = client.uidl()[1]
        client.dele(2)
        client.quit()
    put(settings, message(4))
    with pbserver.RunningServer(settings) as running, login(running) as client:
        after = client.uidl()[1]
        client.quit()
    ids_before = [line.split()[1] for line in before]
    ids_after = [line.split()[1] for line in after]
    assert ids_after[:2] == [ids_before[0], ids_before[2]]
    assert ids_after[2] not in ids_before


# -- hostile input and limits ------------------------------------------------------------------


def test_garbage_and_overlong_lines(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    assert raw.command(b"\x00\x01\xff garbage").startswith(b"-ERR")
    assert raw.command(b"X" * 5000) == b"-ERR line too long\r\n"
    assert raw.command(b"RETR 1").startswith(b"-ERR")  # wrong state
    assert raw.command(b"USER").startswith(b"-ERR")
    assert raw.command(b"CAPA").startswith(b"+OK")
    raw.multiline()
    raw.login()  # still a working session
    assert raw.command(b"TOP 1").startswith(b"-ERR")
    assert raw.command(b"LIST 99999999999999").startswith(b"-ERR")
    raw.close()


def test_bad_command_budget_closes_the_session(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    budget = server.settings.limits.max_bad_commands
    for _ in range(budget - 1):
        assert raw.command(b"HELO").startswith(b"-ERR")
    raw.send(b"HELO\r\n")
    assert raw.line().startswith(b"-ERR")
    assert raw.line() == b"-ERR too many errors\r\n"
    assert raw.closed()


def test_line_beyond_the_stream_buffer_closes(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    # Far more than the socket buffers hold: the server answers and closes while the client
    # is still sending. Only a lingering close (net/transport.py) keeps the reply from
    # being destroyed by the RST a close with unread input causes.
    raw.send(b"A" * 4_000_000)
    assert raw.line() == b"-ERR line too long\r\n"
    assert raw.closed()


def test_shutdown_tells_idle_sessions(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    running = pbserver.RunningServer(settings)
    try:
        raw = Raw(running)
        raw.login()
        stopper = threading.Thread(target=running.stop)
        started = time.monotonic()
        stopper.start()
        assert raw.line() == b"-ERR [SYS/TEMP] server shutting down\r\n"
        assert time.monotonic() - started < settings.limits.shutdown_grace / 2
        stopper.join(TIMEOUT)
    finally:
        running.stop()

"""The server under abuse: connection caps that a crowd cannot fill, deadlines that trickled
bytes do not extend, BDAT over SIZE refused at once, and the TLS alert for old clients.

Everything runs against the real server over real sockets; the "other hosts" of a crowd
are loopback source addresses (127.0.0.2, 127.0.0.3, ...), bound before connecting.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from pillarbox.core.clientaddr import client_key
from tests import pbserver

TIMEOUT = 10
ALICE = "alice@example.test"


def connect(port: int, source: str = "127.0.0.1", timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    start = time.monotonic()
    data = b""
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data, time.monotonic() - start


def tls_context(server: pbserver.RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.settings.tls.ca))


# -- who a client is ---------------------------------------------------------------------


def test_clients_are_ipv4_addresses_or_ipv6_slash_64s() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # what a dual-stack socket says


# -- connection caps ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    """A server with small caps: 24 connections in all, 4 of them for logged-in users."""
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("capped") / "data",
        {
            "limits": {
                "max_connections": 24,
                "max_connections_per_listener": 16,
                "max_connections_per_ip": 6,
                "reserved_for_authenticated": 4,
                "auth_failure_delay": 0.05,
            }
        },
    )
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        yield running


def hold_idle(port: int, sources: list[str], each: int, greeting: bytes) -> list[socket.socket]:
    """Open ``each`` silent connections from every source, each one greeted (accepted)."""
    held = []
    for source in sources:
        for _ in range(each):
            sock = connect(port, source)
            assert sock.recv(200).startswith(greeting)
            held.append(sock)
    return held


def alive(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            while sock.recv(4096):
                pass  # a goodbye, then the end
        except BlockingIOError:
            count += 1  # nothing more to read, and not closed
        except OSError:
            pass
        sock.setblocking(True)
    return count


def imap_login(server: pbserver.RunningServer, source: str = "127.0.0.1") -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=tls_context(server), timeout=TIMEOUT
    )
    client.login(ALICE, pbserver.PASSWORD)
    return client


def test_a_crowd_of_idle_connections_does_not_lock_users_out(
    capped: pbserver.RunningServer,
) -> None:
    """Four "hosts" fill the SMTP listener's share with silent connections: SMTP still
    takes a new client (the oldest idle one is cut, with a 421), and IMAP is untouched."""
    crowd = [f"127.0.0.{n}" for n in range(2, 6)]
    held = hold_idle(capped.port("smtp"), crowd, 4, b"220 ")  # 16 = the listener's cap
    try:
        newcomer = connect(capped.port("smtp"), "127.0.0.9")
        assert newcomer.recv(200).startswith(b"220 ")
        newcomer.sendall(b"EHLO client.example\r\n")
        assert newcomer.recv(2000).startswith(b"250")
        newcomer.close()
        # The first one of the crowd paid for it, told why.
        first, _ = read_until_closed(held[0], 5)
        assert first.startswith(b"421 4.7.0")
        with imap_login(capped) as imap:
            assert imap.select("INBOX")[0] == "OK"
    finally:
        for sock in held:
            sock.close()


def test_logged_in_sessions_are_never_cut_and_keep_their_reserve(
    capped: pbserver.RunningServer,
) -> None:
    """Logged-in sessions stay when a crowd arrives; the crowd can take at most
    max_connections - reserved_for_authenticated slots; a user can still log in."""
    users = [imap_login(capped) for _ in range(3)]
    crowd = [f"127.0.1.{n}" for n in range(1, 6)]
    held = []
    try:
        for source in crowd:  # 5 x 6 = 30 tries against 20 unauthenticated slots
            for n in range(6):  # on two listeners, so that their caps (16) do not bind
                sock = connect(capped.port("imap" if n % 2 else "pop3"), source)
                held.append(sock)
                sock.recv(200)
        time.sleep(0.3)
        # Newcomers took the places of the oldest; the reserve stayed free.
        assert alive(held) == 24 - 4
        for user in users:
            assert user.noop()[0] == "OK"  # none of them was cut
        with imap_login(capped) as late:
            assert late.noop()[0] == "OK"
    finally:
        for sock in held:
            sock.close()
        for user in users:
            user.logout()


def test_per_address_cap(capped: pbserver.RunningServer) -> None:
    held = hold_idle(capped.port("pop3"), ["127.0.2.1"], 6, b"+OK")
    try:
        extra = connect(capped.port("pop3"), "127.0.2.1")
        reply, _ = read_until_closed(extra, 5)
        assert reply.startswith(b"-ERR [SYS/TEMP] too many connections")
        other = connect(capped.port("pop3"), "127.0.2.2")  # another address is fine
        assert other.recv(200).startswith(b"+OK")
        other.close()
    finally:
        for sock in held:
            sock.close()


# -- deadlines -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("impatient") / "data",
        {
            "limits": {
                "idle_timeout": 3,
                "command_timeout": 3,
                "preauth_timeout": 2,
                "data_timeout": 1,
                "min_data_rate": 2000,
                "auth_failure_delay": 0.05,
            },
            "delivery": {"max_message_size": 20000},
        },
    )
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        yield running


def trickle(sock: socket.socket, data: bytes, interval: float, limit: float) -> tuple[bytes, float]:
    """Send ``data`` one byte per ``interval`` until the server closes; what it said, when."""
    start = time.monotonic()
    received = b""
    sock.settimeout(interval)
    for byte in data:
        if time.monotonic() - start > limit:
            break
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        except TimeoutError:
            continue
        except OSError:
            break
    return received, time.monotonic() - start


@pytest.mark.parametrize(
    ("listener", "greeting", "goodbye", "deadline"),
    [
        ("smtp", b"220 ", b"421 4.4.2", 3),  # port 25: the RFC's idle time, whole line
        ("pop3", b"+OK", b"-ERR autologout", 2),  # before login: preauth_timeout
        ("imap", b"* OK", b"* BYE autologout", 2),
    ],
)
def test_a_line_trickled_byte_by_byte_is_cut_at_its_deadline(
    impatient: pbserver.RunningServer,
    listener: str,
    greeting: bytes,
    goodbye: bytes,
    deadline: float,
) -> None:
    sock = connect(impatient.port(listener), "127.0.3.1")
    assert sock.recv(500).startswith(greeting)
    received, took = trickle(sock, b"X" * 100, 0.25, deadline + 6)
    sock.close()
    assert goodbye in received
    assert deadline - 0.5 <= took < deadline + 3


def test_submission_before_auth_has_the_short_deadline(impatient: pbserver.RunningServer) -> None:
    sock = connect(impatient.port("submission"), "127.0.3.2")
    assert sock.recv(500).startswith(b"220 ")
    _, took = trickle(sock, b"X" * 100, 0.25, 8)
    sock.close()
    assert 1.5 <= took < 5


def start_data(server: pbserver.RunningServer, source: str) -> socket.socket:
    sock = connect(server.port("smtp"), source)
    assert sock.recv(500).startswith(b"220 ")
    sock.sendall(b"EHLO c.example\r\nMAIL FROM:<x@c.example>\r\nRCPT TO:<" + ALICE.encode())
    sock.sendall(b">\r\nDATA\r\n")
    seen = b""
    while b"354" not in seen:
        seen += sock.recv(4096)
    return sock


def test_data_below_the_minimum_rate_is_cut(impatient: pbserver.RunningServer) -> None:
    sock = start_data(impatient, "127.0.3.3")
    body = b"Subject: slow\r\n\r\n" + b"y" * 4000
    received, took = trickle(sock, body, 0.05, 10)  # ~20 bytes/s against 2000
    sock.close()
    assert b"421 4.4.2" in received
    assert took < 5


def test_data_at_a_fair_rate_is_accepted(impatient: pbserver.RunningServer) -> None:
    """Slower than one read per data_timeout would allow in total, but above the rate."""
    sock = start_data(impatient, "127.0.3.4")
    for _ in range(6):  # 6 x 3000 bytes in ~3 s: 6000 bytes/s
        sock.sendall(b"X-Filler: " + b"z" * 2988 + b"\r\n")
        time.sleep(0.5)
    sock.sendall(b"\r\nbody\r\n.\r\n")
    assert sock.recv(500).startswith(b"250 ")
    sock.close()


def test_imap_literal_below_the_minimum_rate_is_cut(impatient: pbserver.RunningServer) -> None:
    sock = connect(impatient.port("imap"), "127.0.3.5")
    assert sock.recv(500).startswith(b"* OK")
    sock.sendall(b"a1 LOGIN {5000}\r\n")
    assert sock.recv(500).startswith(b"+")
    received, took = trickle(sock, b"u" * 5000, 0.05, 10)
    sock.close()
    # Limited before login to a few KiB, and at ~20 bytes/s it cannot make 1 s + 5000/2000.
    assert took < 6
    assert received == b"" or received.startswith(b"* BYE") or b"BAD" in received


# -- BDAT over SIZE ------------------------------------------------------------------------------


def test_bdat_far_over_size_is_refused_at_once(impatient: pbserver.RunningServer) -> None:
    """The replies to MAIL and RCPT, then 552 5.3.4, arrive before any chunk data is sent;
    a chunk larger than SIZE itself cannot be skipped sensibly: the session closes."""
    sock = connect(impatient.port("smtp"), "127.0.4.1")
    assert sock.recv(500).startswith(b"220 ")
    sock.sendall(b"EHLO c.example\r\n")
    assert b"CHUNKING" in sock.recv(2000)
    sock.sendall(
        b"MAIL FROM:<x@c.example>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nBDAT 900000000 LAST\r\n"
    )
    replies, took = read_until_closed(sock, 5)
    sock.close()
    lines = replies.splitlines()
    assert [line[:3] for line in lines] == [b"250", b"250", b"552"]
    assert lines[2].startswith(b"552 5.3.4")
    assert took < 2


def test_bdat_chunk_that_crosses_size_is_refused_and_the_session_goes_on(
    impatient: pbserver.RunningServer,
) -> None:
    sock = connect(impatient.port("smtp"), "127.0.4.2")
    assert sock.recv(500).startswith(b"220 ")
    sock.sendall(b"EHLO c.example\r\n")
    sock.recv(2000)
    sock.sendall(b"MAIL FROM:<x@c.example>\r\nRCPT TO:<" + ALICE.encode() + b">\r\n")
    sock.sendall(b"BDAT 15000\r\n" + b"a" * 15000)
    seen = b""
    while seen.count(b"\r\n") < 3:
        seen += sock.recv(4096)
    assert seen.splitlines()[2].startswith(b"250")
    sock.sendall(b"BDAT 15000 LAST\r\n")  # 30000 > 20000: refused before the data
    refusal = sock.recv(500)
    assert refusal.startswith(b"552 5.3.4")
    sock.sendall(b"b" * 15000)  # the client's chunk is consumed, the session goes on
    sock.sendall(b"MAIL FROM:<x@c.example>\r\nRCPT TO:<" + ALICE.encode() + b">\r\n")
    content = b"Subject: ok\r\n\r\nhi\r\n"
    sock.sendall(b"BDAT %d LAST\r\n%s" % (len(content), content))
    seen = b""
    while seen.count(b"\r\n") < 3:
        seen += sock.recv(4096)
    assert [line[:3] for line in seen.splitlines()] == [b"250", b"250", b"250"]
    sock.sendall(b"QUIT\r\n")
    sock.close()


# -- TLS versions ---------------------------------------------------------------------------


def old_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer the old versions at all
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_gets_a_protocol_version_alert(
    impatient: pbserver.RunningServer, version: ssl.TLSVersion
) -> None:
    """Implicit TLS (993) and STARTTLS (587): an alert the client can report, not a
    silent close."""
    with connect(impatient.port("imaps")) as raw, pytest.raises(ssl.SSLError) as implicit:
        old_client(version).wrap_socket(raw)
    assert "PROTOCOL_VERSION" in str(implicit.value).upper()
    client = smtplib.SMTP("127.0.0.1", impatient.port("submission"), timeout=TIMEOUT)
    with pytest.raises(ssl.SSLError) as starttls:
        client.starttls(context=old_client(version))
    assert "PROTOCOL_VERSION" in str(starttls.value).upper()
    client.close()
    # A current client is served as usual afterwards.
    pop = poplib.POP3_SSL("127.0.0.1", impatient.port("pop3s"), context=tls_context(impatient))
    assert pop.getwelcome().startswith(b"+OK")
    pop.quit()

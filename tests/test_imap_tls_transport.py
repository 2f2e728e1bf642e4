"""The IMAP listeners' own transport (pillarbox/net/transport.py): TLS on the socket itself.

Real clients on loopback against the real server: imaplib for big literals both ways,
a raw TLS socket for backpressure, close_notify and half-close, and ``openssl s_client``
for STARTTLS and a TLS 1.3 KeyUpdate (a read that must write: RFC 8446 §4.6.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import imapclient  # type: ignore[import-untyped]
import pytest

from pillarbox.config import Settings
from pillarbox.net.transport import SocketTransport
from pillarbox.tls.context import server_context
from tests import pbserver
from tests.imaphelp import ALICE, TIMEOUT, Raw, login, message, tls_context

BIG = 6 * 1024 * 1024


def _big_message() -> bytes:
    # Random base64-ish lines: nothing compresses it, TLS records and socket buffers fill.
    lines = [os.urandom(57).hex().encode() for _ in range(BIG // 115)]
    return message("big", body="") + b"\r\n".join(lines) + b"\r\n"


def test_imap_listeners_run_on_the_own_transport(server: pbserver.RunningServer) -> None:
    """What the rest of this file tests is the transport the IMAP sessions really get."""

    async def transports() -> list[str]:
        listeners = server.server.listeners
        return [
            type(entry.conn.transport).__name__
            for entry in listeners._open.values()
            if entry.conn is not None
        ]

    with login(server) as client:
        client.noop()
        assert server.call(transports()) == [SocketTransport.__name__]


def test_imap_connections_send_without_nagle_delay(server: pbserver.RunningServer) -> None:
    """A response written in pieces (FETCH lines, then the tagged OK) must not wait for the
    client's delayed ACK: the server's sockets have TCP_NODELAY, as asyncio's do."""

    async def nodelay() -> list[int]:
        listeners = server.server.listeners
        return [
            entry.conn.transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            for entry in listeners._open.values()
            if entry.conn is not None
        ]

    with login(server) as client:
        client.noop()
        assert server.call(nodelay()) == [1]


def test_a_big_literal_both_ways_over_tls(server: pbserver.RunningServer) -> None:
    body = _big_message()
    with login(server) as client:
        typ, _ = client.append("INBOX", None, None, body)
        assert typ == "OK"
        client.select("INBOX")
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        fetched = data[0][1]  # type: ignore[index]
        assert hashlib.sha256(fetched).hexdigest() == hashlib.sha256(body).hexdigest()


def test_a_client_that_stops_reading_gets_everything_when_it_reads_again(
    server: pbserver.RunningServer,
) -> None:
    """The server's output outgrows the socket buffers and its queue's high-water mark
    while the client reads nothing; the session waits (backpressure), and every byte
    arrives in order once the client reads."""
    body = _big_message()
    with login(server) as client:
        client.append("INBOX", None, None, body)
    raw = Raw(server)
    try:
        raw.login()
        raw.cmd(b"s", b"SELECT INBOX")
        raw.send(b"f1 FETCH 1 (BODY.PEEK[])\r\nf2 FETCH 1 (BODY.PEEK[])\r\nn NOOP\r\n")
        time.sleep(1.5)  # the server fills the socket and queues the rest
        for tag in (b"f1", b"f2"):
            lines = raw.until(tag)
            assert lines[-1].startswith(tag + b" OK"), lines[-1]
            assert body in lines[0]
        assert raw.until(b"n")[-1].startswith(b"n OK")
    finally:
        raw.close()


def _strict_tls(server: pbserver.RunningServer) -> ssl.SSLSocket:
    """A TLS client that tells a close_notify (recv gives b'') from a bare TCP close
    (SSLEOFError)."""
    sock = socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=TIMEOUT)
    return tls_context(server.settings).wrap_socket(
        sock, server_hostname=pbserver.HOSTNAME, suppress_ragged_eofs=False
    )


def _read_until_eof(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_logout_ends_with_a_close_notify(server: pbserver.RunningServer) -> None:
    sock = _strict_tls(server)
    with sock:
        assert sock.recv(1000).startswith(b"* OK")
        sock.sendall(b"a LOGOUT\r\n")
        said = _read_until_eof(sock)  # SSLEOFError here: closed without close_notify
        assert b"* BYE" in said and b"a OK" in said


def test_a_client_close_notify_is_answered_and_ends_the_session(
    server: pbserver.RunningServer,
) -> None:
    sock = _strict_tls(server)
    assert sock.recv(1000).startswith(b"* OK")
    sock.sendall(f'a LOGIN {ALICE} "{pbserver.PASSWORD}"\r\n'.encode())
    assert b"a OK" in sock.recv(4096)
    # Blocking unwrap sends our close_notify and waits for the server's.
    plain = sock.unwrap()
    with plain:
        plain.settimeout(TIMEOUT)
        assert plain.recv(100) == b""  # and then the server closed the TCP connection


def test_a_tcp_close_without_close_notify_ends_the_session(
    server: pbserver.RunningServer,
) -> None:
    sock = _strict_tls(server)
    assert sock.recv(1000).startswith(b"* OK")
    fd = socket.socket(fileno=os.dup(sock.fileno()))
    with fd:
        fd.shutdown(socket.SHUT_WR)  # a FIN under the TLS layer: a truncation attack or a crash
        fd.settimeout(TIMEOUT)
        rest = b""
        while chunk := fd.recv(4096):
            rest += chunk
        # Whatever the server said (its close_notify at most), it closed the connection.
        assert len(rest) < 100
    sock.close()


def test_plaintext_half_close_still_gets_the_answers(server: pbserver.RunningServer) -> None:
    """A client that pipelines, then shuts its sending side (RFC 9293 §3.6 half-close),
    still reads the answers to what it sent: the plaintext port stays open for writing."""
    with socket.create_connection(("127.0.0.1", server.port("imap")), timeout=TIMEOUT) as sock:
        sock.sendall(b"a CAPABILITY\r\nb NOOP\r\nc LOGOUT\r\n")
        sock.shutdown(socket.SHUT_WR)
        said = b""
        while chunk := sock.recv(4096):
            said += chunk
    assert said.startswith(b"* OK")
    for tag in (b"a OK", b"b OK", b"c OK"):
        assert tag in said


def _s_client(server: pbserver.RunningServer, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port('imap')}",
         "-CAfile", str(server.settings.tls.ca), "-tls1_3", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _until(proc: subprocess.Popen[bytes], marker: bytes, seconds: float = TIMEOUT) -> bytes:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} in {seen[-2000:]!r}")
        chunk = proc.stdout.read(65536)
        if chunk:
            seen += chunk
        elif proc.poll() is not None:
            raise AssertionError(f"s_client ended before {marker!r}: {seen[-2000:]!r}")
        else:
            time.sleep(0.02)
    return seen


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_starttls_and_a_key_update_with_openssl_s_client(server: pbserver.RunningServer) -> None:
    """openssl s_client upgrades the plaintext port with STARTTLS, logs in, then asks for
    a TLS 1.3 KeyUpdate with update_requested: the server's read of that message must send
    its own KeyUpdate before it can go on (RFC 8446 §4.6.3); the session goes on."""
    proc = _s_client(server, "-starttls", "imap", "-crlf")
    assert proc.stdin is not None
    try:
        _until(proc, b"Verify return code: 0")
        proc.stdin.write(f'a LOGIN {ALICE} "{pbserver.PASSWORD}"\n'.encode())
        proc.stdin.flush()
        _until(proc, b"a OK")
        proc.stdin.write(b"K\n")  # s_client: KeyUpdate, asking the server for one too
        proc.stdin.flush()
        said = _until(proc, b"KEYUPDATE")
        time.sleep(0.2)
        proc.stdin.write(b"b SELECT INBOX\n")
        proc.stdin.flush()
        said += _until(proc, b"b OK")
        proc.stdin.write(b"c LOGOUT\n")
        proc.stdin.flush()
        said += _until(proc, b"c OK")
    finally:
        proc.kill()
        proc.wait()


def _server_side_state(server_port: int, client_port: int) -> str | None:
    """The TCP state (``/proc/net/tcp``, hex: 01 is ESTABLISHED) of the server's end of
    the loopback connection from ``client_port``, None when it is gone."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[3]
    return None


def test_a_client_that_never_reads_is_dropped_and_its_socket_closed(tmp_path: Path) -> None:
    """Output queued for a client that never reads must not hold the session, its queue
    or its socket for ever: after ``data_timeout`` the session ends, and the close that
    cannot flush is cut off."""
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"data_timeout": 1}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        with login(running) as client:
            client.append("INBOX", None, None, _big_message())
        raw = Raw(running)
        try:
            raw.login()
            raw.cmd(b"s", b"SELECT INBOX")
            raw.send(b"f FETCH 1:* (BODY.PEEK[])\r\n" * 4)

            async def open_connections() -> int:
                return running.server.listeners.active_connections

            deadline = time.monotonic() + 15
            while running.call(open_connections()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert running.call(open_connections()) == 0
            # The server's end of the connection is closed although its output could not be
            # sent: it is no longer ESTABLISHED (the kernel finishes or resets it).
            time.sleep(0.5)
            client_port = raw.sock.getsockname()[1]
            assert _server_side_state(running.port("imaps"), client_port) != "01"
        finally:
            raw.close()


def test_an_abort_during_the_handshake_ends_it_and_frees_the_descriptor(
    settings: Settings,
) -> None:
    """A connection cut while its TLS handshake waits for the client: the handshake ends
    at once, and the loop no longer watches a descriptor about to be closed and reused."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        fd = ours.fileno()
        transport = SocketTransport(loop, ours)
        context = server_context(settings.tls.cert, settings.tls.key)
        handshake = asyncio.ensure_future(transport.start_tls(context))
        await asyncio.sleep(0.05)  # waiting for a ClientHello that does not come
        tls_socket = transport.get_extra_info("socket")
        assert fd in loop._selector.get_map()  # type: ignore[attr-defined]
        transport.abort()
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(handshake, 1)
        selector = loop._selector  # type: ignore[attr-defined]
        assert fd not in selector.get_map()
        await asyncio.sleep(0)  # connection_lost runs and closes the socket
        assert tls_socket.fileno() == -1
        theirs.close()

    asyncio.run(scenario())


def test_starttls_then_a_big_literal_with_imapclient(server: pbserver.RunningServer) -> None:
    """The plaintext port upgraded in place (imapclient's STARTTLS), then big literals
    both ways on the same socket, now under TLS."""
    body = message("starttls", body=(os.urandom(38).hex() * 2 + "\r\n") * 8000)  # 1.2 MB
    client = imapclient.IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=30)
    try:
        client.starttls(tls_context(server.settings))
        client.login(ALICE, pbserver.PASSWORD)
        client.append("INBOX", body)
        client.select_folder("INBOX")
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"])[uids[-1]][b"BODY[]"]
        assert fetched == body
        client.logout()
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()

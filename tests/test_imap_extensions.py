"""IMAP4rev2 behaviour after ENABLE, CONDSTORE, STARTTLS injection, LITERAL+, UTF8=ACCEPT."""

from __future__ import annotations

import socket
import ssl

from tests import pbserver
from tests.imaphelp import TIMEOUT, Raw, message, tls_context


def _append(raw: Raw, tag: bytes, msg: bytes, flags: bytes = b"") -> list[bytes]:
    head = b"%s APPEND INBOX %s{%d+}\r\n" % (tag, flags + b" " if flags else b"", len(msg))
    raw.send(head + msg + b"\r\n")
    return raw.until(tag)


def test_imap4rev2_after_enable(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        _append(raw, b"a", message("one"))
        assert raw.cmd(b"e", b"ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
        lines = raw.cmd(b"s", b"SELECT INBOX")
        assert not any(b"RECENT" in x for x in lines)  # RFC 9051: no \Recent, no RECENT
        assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in lines
        lines = raw.cmd(b"f", b"FETCH 1 (FLAGS)")
        assert lines[0] == b"* 1 FETCH (FLAGS ())\r\n"
        lines = raw.cmd(b"q", b"SEARCH ALL")
        assert lines[0] == b'* ESEARCH (TAG "q") ALL 1\r\n'  # RFC 9051 §7.3.4
    finally:
        raw.close()


def test_condstore(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        for i in range(3):
            _append(raw, b"a%d" % i, message(f"c{i}"))
        lines = raw.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
        modseq = int(next(x for x in lines if b"HIGHESTMODSEQ" in x).split()[3].rstrip(b"]"))
        lines = raw.cmd(b"t", b"STORE 2 +FLAGS (\\Seen)")
        assert lines[0].startswith(b"* 2 FETCH (FLAGS (\\Recent \\Seen) MODSEQ (")
        lines = raw.cmd(b"f", b"FETCH 1:* (UID) (CHANGEDSINCE %d)" % modseq)
        assert len(lines) == 2 and lines[0].startswith(b"* 2 FETCH (UID 2 MODSEQ (")
        lines = raw.cmd(b"u", b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % modseq)
        assert lines[-1].startswith(b"u OK [MODIFIED 2]"), lines
        lines = raw.cmd(b"m", b"SEARCH MODSEQ %d" % (modseq + 1))
        assert lines[0].startswith(b"* SEARCH 1 2 3 (MODSEQ ")
        lines = raw.cmd(b"st", b"STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
        assert b"HIGHESTMODSEQ" in lines[0]
    finally:
        raw.close()


def test_starttls_discards_pipelined_commands(server: pbserver.RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port("imap")), timeout=TIMEOUT)
    try:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        # The injected LOGIN rides along with STARTTLS in plaintext (CVE-2011-0411 style).
        sock.sendall(b"a STARTTLS\r\nb LOGIN alice@example.test x\r\n")
        assert f.readline().startswith(b"a OK")
        tls = tls_context(server.settings).wrap_socket(sock, server_hostname=pbserver.HOSTNAME)
        tf = tls.makefile("rb")
        tls.sendall(b"c NOOP\r\n")
        line = tf.readline()
        assert line.startswith(b"c OK"), line  # nothing answered for "b"
        tls.sendall(b"d STARTTLS\r\n")
        assert tf.readline().startswith(b"d BAD")
        tls.close()
    finally:
        sock.close()


def test_literals_sync_nonsync_and_utf8_names(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        msg = message("sync literal")
        raw.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(msg))
        assert raw.line().startswith(b"+ ")
        raw.send(msg + b"\r\n")
        assert raw.until(b"a")[-1].startswith(b"a OK [APPENDUID")
        raw.send(b"b LOGIN {3+}\r\nabc {3+}\r\nxyz\r\n")  # LITERAL+ in any command
        assert raw.until(b"b")[-1].startswith(b"b BAD")  # (already logged in)
        assert raw.cmd(b"c", b"APPEND INBOX {0+}\r\n")[-1].startswith(b"c NO")
        raw.cmd(b"e", b"ENABLE UTF8=ACCEPT")
        name = "Größe".encode()
        lines = raw.cmd(b"f", b'CREATE "' + name + b'"')
        assert lines[-1].startswith(b"f OK"), lines
        assert b'"' + name + b'"' in b"".join(raw.cmd(b"g", b'LIST "" "G*"'))
    finally:
        raw.close()
    other = Raw(server)
    try:
        other.login()
        lines = other.cmd(b"h", b'LIST "" "G*"')
        assert b'"Gr&APYA3w-e"' in lines[0]  # modified UTF-7 for clients without UTF8=ACCEPT
    finally:
        other.close()


def test_tls_required_on_imaps(server: pbserver.RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=TIMEOUT)
    try:
        sock.sendall(b"a CAPABILITY\r\n")
        sock.settimeout(3)
        try:
            data = sock.recv(100)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            data = b""
        assert b"CAPABILITY" not in data
    finally:
        sock.close()


def test_no_big_literals_before_login(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        lines = raw.cmd(b"a", b"APPEND INBOX {10000000}")
        assert lines[-1].startswith(b"a NO [TOOBIG]"), lines  # no "+ go ahead" first
        raw.send(b"b LOGIN {18}\r\n")
        assert raw.line().startswith(b"+ ")
        raw.send(b'alice@example.test "' + pbserver.PASSWORD.encode() + b'"\r\n')
        assert raw.until(b"b")[-1].startswith(b"b OK")
    finally:
        raw.close()

"""ManageSieve (RFC 5804) against the real server over real sockets.

Two independent clients: sievelib's ``managesieve.Client`` (PyPI; what many tools use) and
a raw line client whose transcripts follow the examples of RFC 5804 §2 byte for byte where
they fix the wire form (literals, response codes). Every test gets its own data dir and
server on free ports and short socket timeouts, so the file runs in parallel.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import random
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.admin.sieve import MAX_SCRIPT_SIZE
from tests import pbserver

ALICE = "alice@example.test"
BOB = "bob@example.test"
TIMEOUT = 10
FILEINTO = (
    b'require "fileinto";\r\nif header :contains "Subject" "report" {\r\n'
    b'  fileinto "Reports";\r\n}\r\n'
)
BROKEN = b'require "fileinto";\r\nif header :contains "Subject" {\r\n  fileinto "x";\r\n}\r\n'


@pytest.fixture
def server(tmp_path: Path) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"auth_failure_delay": 0.05}})
    pbserver.add_user(settings, ALICE)
    pbserver.add_user(settings, BOB)
    with pbserver.RunningServer(settings) as running:
        yield running


def plain(user: str = ALICE, password: str = pbserver.PASSWORD) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


class Raw:
    """A line-level ManageSieve client: exact bytes out, responses read as they come."""

    def __init__(self, server: pbserver.RunningServer | pbserver.SubprocessServer):
        self.settings = server.settings
        self.sock = socket.create_connection(("127.0.0.1", server.port("managesieve")), TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline(100_000)
        assert line.endswith(b"\r\n"), f"no CRLF: {line!r}"
        return line[:-2]

    def response(self) -> tuple[list[bytes], bytes]:
        """(the lines before the status line, literals joined in; the status line)."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            literal = re.search(rb"\{(\d+)\}$", line)
            if literal:
                line = line[: literal.start()] + self.file.read(int(literal.group(1)))
                line += self.line()
            if re.match(rb"(OK|NO|BYE)( |$)", line):
                return lines, line
            lines.append(line)

    def cmd(self, data: bytes) -> tuple[list[bytes], bytes]:
        self.send(data + b"\r\n")
        return self.response()

    def starttls(self) -> list[bytes]:
        _, status = self.cmd(b"STARTTLS")
        assert status.startswith(b"OK")
        context = ssl.create_default_context(cafile=str(self.settings.tls.ca))
        self.sock = context.wrap_socket(self.sock, server_hostname=self.settings.hostname)
        self.file = self.sock.makefile("rb")
        capabilities, status = self.response()  # RFC 5804 §2.2: sent again, unasked
        assert status.startswith(b"OK")
        return capabilities

    def login(self, user: str = ALICE) -> None:
        self.response()
        self.starttls()
        _, status = self.cmd(b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"')
        assert status.startswith(b"OK"), status

    def eof(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: pbserver.RunningServer) -> Iterator[Raw]:
    client = Raw(server)
    yield client
    client.close()


def caps(lines: list[bytes]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in lines:
        found = re.fullmatch(rb'"([^"]+)"(?: "((?:[^"\\]|\\.)*)")?', line)
        assert found, line
        value = found.group(2)
        out[found.group(1).decode()] = value.decode() if value is not None else None
    return out


# -- greeting, STARTTLS, AUTHENTICATE ----------------------------------------------------


def test_greeting_offers_starttls_and_no_mechanism_in_clear(raw: Raw) -> None:
    lines, status = raw.response()
    assert status.startswith(b"OK")
    offered = caps(lines)
    assert offered["IMPLEMENTATION"] == "Pillarbox"
    assert offered["VERSION"] == "1.0"
    assert "STARTTLS" in offered
    assert offered["SASL"] == ""  # nothing may be sent in clear
    assert "fileinto" in (offered["SIEVE"] or "").split()
    assert "OWNER" not in offered


def test_authenticate_before_starttls_is_refused(raw: Raw) -> None:
    raw.response()
    _, status = raw.cmd(b'AUTHENTICATE "PLAIN" "' + plain() + b'"')
    assert status.startswith(b"NO (ENCRYPT-NEEDED)")
    _, status = raw.cmd(b"LISTSCRIPTS")  # still not logged in
    assert status.startswith(b"NO")


def test_starttls_sends_capabilities_again_and_drops_pipelined_plaintext(raw: Raw) -> None:
    raw.response()
    # A command pipelined in clear behind STARTTLS must not run under TLS (RFC 3207 §4.2).
    raw.send(b'STARTTLS\r\nAUTHENTICATE "PLAIN" "' + plain() + b'"\r\n')
    _, status = raw.response()
    assert status.startswith(b"OK")
    context = ssl.create_default_context(cafile=str(raw.settings.tls.ca))
    raw.sock = context.wrap_socket(raw.sock, server_hostname=raw.settings.hostname)
    raw.file = raw.sock.makefile("rb")
    lines, status = raw.response()
    offered = caps(lines)
    assert status.startswith(b"OK")
    assert "STARTTLS" not in offered
    assert offered["SASL"] is not None and "PLAIN" in offered["SASL"].split()
    _, status = raw.cmd(b"LISTSCRIPTS")
    assert status.startswith(b"NO")  # the pipelined AUTHENTICATE did not count
    _, status = raw.cmd(b"STARTTLS")
    assert status.startswith(b"NO")


def test_authenticate_plain_with_continuation_and_owner(raw: Raw) -> None:
    raw.response()
    raw.starttls()
    raw.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""'  # RFC 4616: an empty challenge, as a string
    # The response as a literal (RFC 5804 §2.1 allows any string).
    response = plain()
    _, status = raw.cmd(b"{%d+}\r\n" % len(response) + response)
    assert status.startswith(b"OK")
    lines, status = raw.cmd(b"CAPABILITY")
    assert caps(lines)["OWNER"] == ALICE


def test_bad_password_and_cancel(raw: Raw) -> None:
    raw.response()
    raw.starttls()
    _, status = raw.cmd(b'AUTHENTICATE "PLAIN" "' + plain(password="wrong password") + b'"')
    assert status.startswith(b"NO")
    raw.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""'
    _, status = raw.cmd(b'"*"')
    assert status.startswith(b"NO") and b"cancel" in status
    _, status = raw.cmd(b'AUTHENTICATE "DIGEST-MD5"')
    assert status.startswith(b"NO")
    _, status = raw.cmd(b'AUTHENTICATE "PLAIN" "not base64!"')
    assert status.startswith(b"NO")
    _, status = raw.cmd(b'AUTHENTICATE "PLAIN" "' + plain() + b'"')
    assert status.startswith(b"OK")


# -- the script commands (RFC 5804 §2.5-2.12) -------------------------------------------


def test_rfc5804_script_transcript(raw: Raw) -> None:
    raw.login()
    assert raw.cmd(b"LISTSCRIPTS") == ([], b"OK")
    # §2.6: PUTSCRIPT with a non-synchronizing literal.
    assert raw.cmd(b'PUTSCRIPT "mysievescript" {%d+}\r\n' % len(FILEINTO) + FILEINTO)[1] == b"OK"
    # A synchronizing literal works too (no continuation request in ManageSieve).
    assert raw.cmd(b'PUTSCRIPT "other" {%d}\r\n' % len(FILEINTO) + FILEINTO)[1] == b"OK"
    assert raw.cmd(b'SETACTIVE "mysievescript"')[1] == b"OK"
    lines, status = raw.cmd(b"LISTSCRIPTS")
    assert status == b"OK"
    assert sorted(lines) == [b'"mysievescript" ACTIVE', b'"other"']
    # §2.9: GETSCRIPT answers the script as a literal, CRLF, then OK.
    raw.send(b'GETSCRIPT "mysievescript"\r\n')
    assert raw.line() == b"{%d}" % len(FILEINTO)
    assert raw.file.read(len(FILEINTO)) == FILEINTO
    assert raw.line() == b""
    assert raw.line() == b"OK"
    # §2.10: the active script cannot be deleted.
    assert raw.cmd(b'DELETESCRIPT "mysievescript"')[1].startswith(b"NO (ACTIVE)")
    assert raw.cmd(b'GETSCRIPT "nosuch"')[1].startswith(b"NO (NONEXISTENT)")
    assert raw.cmd(b'SETACTIVE "nosuch"')[1].startswith(b"NO (NONEXISTENT)")
    # §2.11.1 RENAMESCRIPT: onto an existing name, and from a missing one.
    assert raw.cmd(b'RENAMESCRIPT "other" "mysievescript"')[1].startswith(b"NO (ALREADYEXISTS)")
    assert raw.cmd(b'RENAMESCRIPT "nosuch" "x"')[1].startswith(b"NO (NONEXISTENT)")
    assert raw.cmd(b'RENAMESCRIPT "mysievescript" "renamed"')[1] == b"OK"
    lines, _ = raw.cmd(b"LISTSCRIPTS")
    assert sorted(lines) == [b'"other"', b'"renamed" ACTIVE']  # the active flag moved with it
    # §2.8: SETACTIVE "" deactivates; then the script may go.
    assert raw.cmd(b'SETACTIVE ""')[1] == b"OK"
    assert raw.cmd(b'DELETESCRIPT "renamed"')[1] == b"OK"
    assert raw.cmd(b"LISTSCRIPTS") == ([b'"other"'], b"OK")


def test_syntax_error_refused_with_line_and_column(raw: Raw) -> None:
    raw.login()
    _, status = raw.cmd(b'PUTSCRIPT "broken" {%d+}\r\n' % len(BROKEN) + BROKEN)
    assert status.startswith(b"NO ")
    assert re.search(rb"line 2, column \d+", status), status
    assert raw.cmd(b"LISTSCRIPTS") == ([], b"OK")  # nothing stored
    _, status = raw.cmd(b"CHECKSCRIPT {%d+}\r\n" % len(BROKEN) + BROKEN)
    assert status.startswith(b"NO ") and b"line 2" in status
    assert raw.cmd(b"CHECKSCRIPT {%d+}\r\n" % len(FILEINTO) + FILEINTO)[1] == b"OK"
    unknown = b'require "x-no-such-extension";\r\nkeep;\r\n'
    _, status = raw.cmd(b"CHECKSCRIPT {%d+}\r\n" % len(unknown) + unknown)
    assert status.startswith(b"NO ") and b"line 1" in status


def test_havespace_noop_unauthenticate_logout(raw: Raw) -> None:
    raw.login()
    assert raw.cmd(b'HAVESPACE "myscript" 999')[1] == b"OK"
    assert raw.cmd(b'HAVESPACE "myscript" 4294967295')[1].startswith(b"NO (QUOTA/MAXSIZE)")
    assert raw.cmd(b'NOOP "STARTTLS-SYNC-42"')[1] == b'OK (TAG "STARTTLS-SYNC-42") "done"'
    assert raw.cmd(b"UNAUTHENTICATE")[1] == b"OK"
    assert raw.cmd(b"LISTSCRIPTS")[1].startswith(b"NO")
    lines, _ = raw.cmd(b"CAPABILITY")
    assert "OWNER" not in caps(lines)
    _, status = raw.cmd(b'AUTHENTICATE "PLAIN" "' + plain(BOB) + b'"')
    assert status.startswith(b"OK")
    assert raw.cmd(b"LOGOUT")[1].startswith(b"OK")
    assert raw.eof()


def test_users_see_only_their_own_scripts(server: pbserver.RunningServer) -> None:
    alice, bob = Raw(server), Raw(server)
    try:
        alice.login(ALICE)
        bob.login(BOB)
        assert alice.cmd(b'PUTSCRIPT "mine" {%d+}\r\n' % len(FILEINTO) + FILEINTO)[1] == b"OK"
        assert bob.cmd(b"LISTSCRIPTS") == ([], b"OK")
        assert bob.cmd(b'GETSCRIPT "mine"')[1].startswith(b"NO (NONEXISTENT)")
    finally:
        alice.close()
        bob.close()


# -- hostile input ------------------------------------------------------------------------


def test_malformed_commands_answer_no_and_the_session_goes_on(raw: Raw) -> None:
    raw.login()
    for bad in (b"FROBNICATE", b'GETSCRIPT "unterminated', b"PUTSCRIPT", b'"quoted"', b"{x}"):
        _, status = raw.cmd(bad)
        assert status.startswith(b"NO"), (bad, status)
    # A malformed start with a literal after it: the literal is skipped, not run.
    raw.send(b'GETSCRIPT "a\\x" {10+}\r\nLISTSCRIPTS\r\n')
    assert raw.response()[1].startswith(b"NO")
    assert raw.cmd(b"LISTSCRIPTS") == ([], b"OK")


def test_oversized_literal_refused_and_skipped(raw: Raw) -> None:
    raw.login()
    size = 2 * MAX_SCRIPT_SIZE  # over the script limit, under the skip bound (1 MiB)
    raw.send(b'PUTSCRIPT "big" {%d+}\r\n' % size)
    raw.send(b"#" * size + b"\r\n")
    _, status = raw.response()
    assert status.startswith(b"NO (QUOTA/MAXSIZE)")
    assert raw.cmd(b"LISTSCRIPTS") == ([], b"OK")
    # Far over: no point reading it; the server says BYE and closes.
    _, status = raw.cmd(b'PUTSCRIPT "huge" {4000000000+}')
    assert status.startswith(b"BYE")
    assert raw.eof()


def test_line_too_long_and_too_many_errors(server: pbserver.RunningServer) -> None:
    client = Raw(server)
    try:
        client.response()
        _, status = client.cmd(b"NOOP " + b"x" * 20000)
        assert status.startswith(b"BYE") and client.eof()
    finally:
        client.close()
    client = Raw(server)
    try:
        client.response()
        statuses = [client.cmd(b"NONSENSE")[1] for _ in range(10)]
        assert all(s.startswith(b"NO") for s in statuses[:-1])
        assert statuses[-1].startswith(b"NO")
        assert client.response()[1].startswith(b"BYE") and client.eof()
    finally:
        client.close()


# -- sievelib, an independent client ------------------------------------------------------


def test_sievelib_client(server: pbserver.RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from sievelib.managesieve import Client

    # sievelib verifies the certificate against the default store: make it the dev CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.settings.tls.ca))
    client = Client("127.0.0.1", server.port("managesieve"), srvhostname=pbserver.HOSTNAME)
    assert client.connect(ALICE, pbserver.PASSWORD, starttls=True, authmech="PLAIN")
    try:
        assert client.get_implementation() == "Pillarbox"
        assert "fileinto" in client.get_sieve_capabilities()
        assert client.havespace("filters", len(FILEINTO))
        assert client.checkscript(FILEINTO.decode())
        assert not client.checkscript(BROKEN.decode())
        assert b"line 2" in client.errmsg
        assert client.putscript("filters", FILEINTO.decode())
        assert client.setactive("filters")
        assert client.listscripts() == ("filters", [])
        # sievelib gives the script back with its own line ends.
        assert client.getscript("filters").splitlines() == FILEINTO.decode().splitlines()
        assert not client.deletescript("filters")  # active
        assert client.errcode == b"ACTIVE"
        assert client.renamescript("filters", "mine")
        assert client.setactive("")
        assert client.listscripts() == (None, ["mine"])
        assert client.deletescript("mine")
        assert client.listscripts() == (None, [])
    finally:
        client.logout()


def test_sievelib_bad_password(
    server: pbserver.RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sievelib.managesieve import Client

    monkeypatch.setenv("SSL_CERT_FILE", str(server.settings.tls.ca))
    client = Client("127.0.0.1", server.port("managesieve"), srvhostname=pbserver.HOSTNAME)
    assert not client.connect(ALICE, "not the password", starttls=True, authmech="PLAIN")


def test_silent_client_before_login_gets_bye(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"preauth_timeout": 1}})
    with pbserver.RunningServer(settings) as running:
        client = Raw(running)
        try:
            client.response()
            client.send(b"NOOP")  # no line end: the deadline is for the whole line
            _, status = client.response()
            assert status.startswith(b"BYE") and client.eof()
        finally:
            client.close()


# -- seeded fuzzing ---------------------------------------------------------------------

_SHAPED = re.compile(
    rb'(OK|NO|BYE)( \([^)]*\))?( ".*"| \{\d+\})?|"[A-Z-]+"( ".*")?|"[^"]*"( ACTIVE)?|'
)


def _fuzz_items(rng: random.Random) -> list[bytes]:
    script = FILEINTO if rng.random() < 0.5 else BROKEN
    pool = [
        b"CAPABILITY\r\n",
        b"NOOP {5+}\r\nhello\r\n",
        b'PUTSCRIPT "x" {%d+}\r\n' % len(script) + script + b"\r\n",
        b'PUTSCRIPT "x" {%d+}\r\n' % (len(script) + rng.randint(1, 9)) + script + b"\r\n",
        b'PUTSCRIPT "x" {99999999999+}\r\n',
        b"RENAMESCRIPT {3+}\r\nabc {2}\r\nde\r\n",
        b'AUTHENTICATE "PLAIN"\r\n' + rng.choice([b'"*"', b"{3+}\r\n===", b'"%%%"']) + b"\r\n",
        b'AUTHENTICATE "PLAIN" "' + plain(password="nope") + b'"\r\n',
        b'GETSCRIPT "\\' + bytes([rng.randint(0, 255)]) + b'"\r\n',
        b"HAVESPACE " + str(rng.randint(-5, 1 << 40)).encode() + b"\r\n",
        b'"' * rng.randint(1, 50) + b"\r\n",
        b"{" + bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 8))) + b"}\r\n",
        bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 300))),
        b"LISTSCRIPTS\r\n",
        b"\x00\r\n",
        b"\r\n",
    ]
    return [rng.choice(pool) for _ in range(rng.randint(1, 12))]


def _check_shaped(data: bytes) -> None:
    rest = data
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            raise AssertionError(f"unterminated reply {line!r}")
        literal = re.search(rb"\{(\d+)\}$", line)
        if literal:
            size = int(literal.group(1))
            rest = rest[size:]
            continue
        assert _SHAPED.fullmatch(line), f"not a ManageSieve reply line: {line!r}"


def test_fuzzed_sessions_get_protocol_replies_and_the_server_goes_on(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"auth_failure_delay": 0.01}})
    pbserver.add_user(settings, ALICE)
    with pbserver.SubprocessServer(settings) as running:
        port = running.port("managesieve")
        for index in range(40):
            rng = random.Random(f"managesieve-{index}")
            with socket.create_connection(("127.0.0.1", port), TIMEOUT) as sock:
                with contextlib.suppress(OSError):
                    for item in _fuzz_items(rng):
                        sock.sendall(item)
                    sock.shutdown(socket.SHUT_WR)
                received = bytearray()
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        received += chunk
            _check_shaped(bytes(received))
        # The server still serves a whole session, and nothing failed inside it.
        client = Raw(running)
        try:
            client.login()
            assert client.cmd(b"LISTSCRIPTS")[1] == b"OK"
        finally:
            client.close()
        log = running.log()
        for bad in ("command failed", "Traceback", "session crashed", "Task exception"):
            assert bad not in log, bad


def test_a_script_stored_over_managesieve_runs_at_delivery(
    server: pbserver.RunningServer, raw: Raw
) -> None:
    raw.login()
    assert raw.cmd(b'PUTSCRIPT "filters" {%d+}\r\n' % len(FILEINTO) + FILEINTO)[1] == b"OK"
    assert raw.cmd(b'SETACTIVE "filters"')[1] == b"OK"
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
        smtp.sendmail(
            "carol@sender.test",
            [ALICE],
            b"From: carol@sender.test\r\nTo: alice@example.test\r\nSubject: weekly report\r\n"
            b"\r\nnumbers\r\n",
        )
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap:
        imap.login(ALICE, pbserver.PASSWORD)
        assert imap.select("Reports")[1] == [b"1"]
        assert imap.select("INBOX")[1] == [b"0"]

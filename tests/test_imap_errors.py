"""The three kinds of IMAP failure (pillarbox/imap/outcome.py), over a real connection to a
real ``pillarbox serve``: a command that does not parse is ``BAD`` with the parser's
message, a request that cannot be done is ``NO [CODE]``, and a fault inside the server is
``NO [SERVERBUG]`` (RFC 5530 §3) with one log line carrying the traceback. After each, the
same connection goes on serving."""

from __future__ import annotations

import imaplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.imap import commands
from pillarbox.imap.grammar import ParseError
from pillarbox.store.maildir import user_maildir
from tests import imaphelp, pbserver
from tests.imaphelp import ALICE

# pillarbox serve in a child process, and a Maildir file removed under it
pytestmark = pytest.mark.on_disk


@pytest.fixture
def server(tmp_path: Path) -> Iterator[pbserver.SubprocessServer]:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    with pbserver.SubprocessServer(settings) as running:
        yield running


def _append_one(server: pbserver.SubprocessServer) -> None:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1",
        server.port("imaps"),
        ssl_context=imaphelp.tls_context(server.settings),
        timeout=imaphelp.TIMEOUT,
    )
    client.login(ALICE, pbserver.PASSWORD)
    typ, _ = client.append("INBOX", None, None, imaphelp.message("fault"))
    assert typ == "OK"
    client.logout()


def _failures_logged(server: pbserver.SubprocessServer, want: int) -> list[str]:
    """The log's "command failed" lines, once there are ``want`` (the log has its own
    writer thread, so a line may land a moment after the response)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log().splitlines() if "command failed" in line]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_parse_error_is_bad_with_the_parsers_message(server: pbserver.SubprocessServer) -> None:
    raw = imaphelp.Raw(server)
    raw.login()
    command = b"a1 FETCH 1:* (FLAGS"
    with pytest.raises(ParseError) as parsed:
        commands.parse(command)
    assert raw.cmd(b"a1", command[3:]) == [b"a1 BAD " + parsed.value.reason.encode() + b"\r\n"]
    assert raw.cmd(b"a2", b"NOOP") == [b"a2 OK NOOP completed\r\n"]
    raw.close()


def test_user_error_is_no_with_its_code(server: pbserver.SubprocessServer) -> None:
    raw = imaphelp.Raw(server)
    raw.login()
    assert raw.cmd(b"b1", b'SELECT "No such folder"')[-1].startswith(b"b1 NO [NONEXISTENT] ")
    assert raw.cmd(b"b2", b"STATUS Nowhere (MESSAGES)")[-1].startswith(b"b2 NO [NONEXISTENT] ")
    assert raw.cmd(b"b3", b'SETQUOTA "" (STORAGE 10)')[-1].startswith(b"b3 NO [NOPERM] ")
    assert raw.cmd(b"b4", b"SELECT INBOX")[-1].startswith(b"b4 OK [READ-WRITE]")
    raw.close()
    assert _failures_logged(server, 0) == []  # the user's errors are not the server's


def test_internal_fault_is_serverbug_logged_once_and_the_session_goes_on(
    server: pbserver.SubprocessServer,
) -> None:
    _append_one(server)
    raw = imaphelp.Raw(server)
    raw.login()
    assert raw.cmd(b"c1", b"SELECT INBOX")[-1].startswith(b"c1 OK")
    # A real fault: the message's file is replaced by a directory of the same name, so
    # the store's read fails with IsADirectoryError (root may read a chmod 000 file).
    [path] = (user_maildir(server.settings.mail_dir, ALICE) / "cur").iterdir()
    path.unlink()
    path.mkdir()

    assert raw.cmd(b"c2", b"FETCH 1 BODY[]") == [b"c2 NO [SERVERBUG] internal error\r\n"]
    [line] = _failures_logged(server, 1)
    assert " error imap " in line and "command=FETCH" in line and f"user={ALICE}" in line
    assert "IsADirectoryError" in line and "Traceback (most recent call last)" in line

    # The same connection goes on: what does not need the file still works.
    flags = raw.cmd(b"c3", b"FETCH 1 (FLAGS)")
    assert flags[0].startswith(b"* 1 FETCH (FLAGS (") and flags[-1] == b"c3 OK FETCH completed\r\n"
    assert raw.cmd(b"c4", b"NOOP") == [b"c4 OK NOOP completed\r\n"]
    raw.close()
    assert len(_failures_logged(server, 2)) == 1  # one fault, one line

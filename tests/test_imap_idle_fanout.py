"""One delivery, several sessions of the user in IDLE, read-write and read-only: they ask
the store what changed together and are answered by one job (store/changebatch.py; its
answers are checked against one-by-one ones in test_store_changebatch.py). Each hears the
EXISTS, and each goes on afterwards with the message in its view."""

from __future__ import annotations

from tests import pbserver
from tests.imaphelp import Raw, login, message


def _idling(server: pbserver.RunningServer, select: bytes) -> Raw:
    raw = Raw(server)
    raw.login()
    assert raw.cmd(b"s", select + b" INBOX")[-1].startswith(b"s OK")
    raw.send(b"i IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    return raw


def _news(raw: Raw) -> list[bytes]:
    """What the session was told in IDLE, up to the end of IDLE."""
    raw.send(b"DONE\r\n")
    return raw.until(b"i")[:-1]


def test_one_delivery_reaches_read_write_and_read_only_sessions(
    server: pbserver.RunningServer,
) -> None:
    sessions = [_idling(server, b"SELECT") for _ in range(4)] + [_idling(server, b"EXAMINE")]
    try:
        with login(server) as other:
            other.append("INBOX", None, None, message("for everyone"))
        for raw in sessions:
            assert raw.line() == b"* 1 EXISTS\r\n"
        for raw in sessions:
            _news(raw)
            lines = raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert b"Subject: for everyone" in lines[0], lines
            assert lines[-1] == b"f OK FETCH completed\r\n"
    finally:
        for raw in sessions:
            raw.close()

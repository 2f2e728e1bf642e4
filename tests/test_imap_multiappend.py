"""MULTIAPPEND (RFC 3502): several messages in one APPEND, all stored or none."""

from __future__ import annotations

from pathlib import Path

from imapclient import IMAPClient

from tests import pbserver
from tests.imaphelp import ALICE, Raw, message, tls_context


def _client(server: pbserver.RunningServer) -> IMAPClient:
    client = IMAPClient(
        "127.0.0.1", port=server.port("imaps"), ssl_context=tls_context(server.settings)
    )
    client.login(ALICE, pbserver.PASSWORD)
    return client


def test_imapclient_multiappend_stores_all_in_order(server: pbserver.RunningServer) -> None:
    with _client(server) as client:
        assert b"MULTIAPPEND" in client.capabilities()
        msgs = [message(f"multi {i}", body=f"number {i}\r\n") for i in range(3)]
        typ, (answer,) = client.multiappend("INBOX", msgs)
        assert typ == "OK" and answer.startswith(b"[APPENDUID ") and b" 1:3]" in answer, answer
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search(["ALL"]), ["BODY.PEEK[]"])
        assert [fetched[uid][b"BODY[]"] for uid in sorted(fetched)] == msgs


def test_flags_and_dates_apply_per_message(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        one, two = message("first"), message("second")
        raw.send(
            b'a APPEND INBOX (\\Seen) "01-Feb-2020 10:00:00 +0000" {%d+}\r\n%s'
            b" (\\Flagged) {%d+}\r\n%s\r\n" % (len(one), one, len(two), two)
        )
        assert raw.until(b"a")[-1].startswith(b"a OK [APPENDUID ")
        raw.cmd(b"s", b"EXAMINE INBOX")
        lines = raw.cmd(b"f", b"FETCH 1:2 (FLAGS INTERNALDATE)")
        assert b"FLAGS (\\Seen)" in lines[0] and b'" 1-Feb-2020 10:00:00 +0000"' in lines[0]
        assert b"FLAGS (\\Flagged)" in lines[1]
    finally:
        raw.close()


def test_one_bad_message_stores_none(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        good = message("kept?")
        raw.send(b"a APPEND INBOX {%d+}\r\n%s {0+}\r\n\r\n" % (len(good), good))
        assert raw.until(b"a")[-1].startswith(b"a NO"), "an empty message must fail the lot"
        lines = raw.cmd(b"t", b"STATUS INBOX (MESSAGES UIDNEXT)")
        assert b"MESSAGES 0" in lines[0]
    finally:
        raw.close()


def test_over_quota_part_way_stores_none(tmp_path: Path) -> None:
    """The third message passes the quota after two were written: RFC 3502 §6.3.11 wants
    none of them kept, so the two are withdrawn and the mailbox is as before."""
    settings = pbserver.make_settings(tmp_path / "data", {"store": {"quota": "8K"}})
    pbserver.add_user(settings, ALICE)
    body = message("big", body="x" * 3000 + "\r\n")
    with pbserver.RunningServer(settings) as server:
        raw = Raw(server)
        try:
            raw.login()
            raw.send(
                b"a APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n"
                % (len(body), body, len(body), body, len(body), body)
            )
            assert raw.until(b"a")[-1].startswith(b"a NO [OVERQUOTA]")
            status = raw.cmd(b"s", b"STATUS INBOX (MESSAGES SIZE)")[0]
            assert status == b'* STATUS "INBOX" (MESSAGES 0 SIZE 0)\r\n', status
            assert raw.cmd(b"q", b'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 0 8)\r\n'
            # Two fit, and are kept.
            raw.send(
                b"b APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(body), body, len(body), body)
            )
            assert raw.until(b"b")[-1].startswith(b"b OK [APPENDUID ")
        finally:
            raw.close()

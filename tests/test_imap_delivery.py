"""SMTP delivery -> Maildir -> IMAP: IDLE hears about it, FETCH returns it byte-exact."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from pillarbox.store.maildir import deliver, user_maildir
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import ALICE, TIMEOUT, Raw, message


@pytest.mark.on_disk  # reads the Maildir file
def test_smtp_delivery_reaches_an_idle_session_byte_exact(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "mailauth": {"verify_inbound": False},
        },
    )
    pbserver.add_user(settings, ALICE)
    original = message("over smtp", "line one\r\n.dotted line\r\nlast\r\n")
    with pbserver.RunningServer(settings) as server:
        raw = Raw(server)
        try:
            raw.login()
            raw.cmd(b"s", b"SELECT INBOX")
            raw.send(b"i IDLE\r\n")
            assert raw.line().startswith(b"+ ")
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
                smtp.sendmail("bob@example.org", [ALICE], original)
            assert raw.line() == b"* 1 EXISTS\r\n"  # announced while IDLE
            raw.send(b"DONE\r\n")
            raw.until(b"i")
            lines = raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
            fetched = lines[0].split(b"}\r\n", 1)[1].rsplit(b" RFC822.SIZE", 1)[0]
        finally:
            raw.close()
    files = list((user_maildir(settings.mail_dir, ALICE) / "cur").iterdir())
    assert len(files) == 1
    on_disk = files[0].read_bytes()
    assert fetched == on_disk  # byte-exact: what SMTP stored is what IMAP serves
    assert on_disk.endswith(original)  # delivery only prepends trace headers
    assert b"RFC822.SIZE %d" % len(on_disk) in lines[0]


@pytest.mark.on_disk  # a foreign Maildir writer
def test_idle_notices_a_foreign_delivery_without_notification(
    server: pbserver.RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program writing into new/ (no hub call) is seen at IDLE's periodic sync."""
    from pillarbox.imap import session_selected

    monkeypatch.setattr(session_selected, "IDLE_SYNC_INTERVAL", 0.3)
    raw = Raw(server)
    try:
        raw.login()
        raw.cmd(b"s", b"SELECT INBOX")
        raw.send(b"i IDLE\r\n")
        assert raw.line().startswith(b"+ ")
        deliver(user_maildir(server.settings.mail_dir, ALICE), [message("foreign")])
        assert raw.line() == b"* 1 EXISTS\r\n"
        raw.send(b"DONE\r\n")
        assert raw.until(b"i")[-1].startswith(b"i OK")
    finally:
        raw.close()


def test_new_mail_is_recent_for_one_session_only(tmp_path: Path) -> None:
    # RFC 3501 §2.3.2: \Recent goes to the first session told about a message, not to every
    # session that had the mailbox selected (both selected it while it was empty).
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        first, second = Raw(server), Raw(server)
        try:
            for session in (first, second):
                session.login()
                assert b"* 0 RECENT\r\n" in session.cmd(b"s", b"SELECT INBOX")
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as smtp:
                smtp.sendmail("bob@example.org", [ALICE], message("new", "body\r\n"))
            told_first = first.cmd(b"n", b"NOOP")
            told_second = second.cmd(b"n", b"NOOP")
            assert told_first[:2] == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
            assert told_second[:2] == [b"* 1 EXISTS\r\n", b"* 0 RECENT\r\n"]
            assert b"\\Recent" in first.cmd(b"f", b"FETCH 1 (FLAGS)")[0]
            assert b"\\Recent" not in second.cmd(b"f", b"FETCH 1 (FLAGS)")[0]
            assert b"\\Recent" not in second.cmd(b"f", b"UID FETCH 1:* (FLAGS)")[0]
            assert second.cmd(b"r", b"SEARCH RECENT")[0] == b"* SEARCH\r\n"
            assert first.cmd(b"r", b"SEARCH RECENT")[0] == b"* SEARCH 1\r\n"
        finally:
            first.close()
            second.close()

"""The spam filter in the real server: mail over SMTP on loopback to a running Pillarbox,
DNS from the tests' own server, learning through a real IMAP client.

Each test checks where the message was stored (INBOX or Junk, read from the Maildir),
the ``X-Pillarbox-Spam`` field it carries, or the SMTP reply that refused it.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pillarbox.config import Settings
from pillarbox.spam.rules import GTUBE
from tests import imaphelp, pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered
from tests.spamcorpus import corpus

RCPT = "alice@example.test"
MAILBOXES = ("INBOX", "Junk")


def publish(dns: DnsTestServer) -> None:
    dns.set_zone("sender.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})
    dns.set_zone("promo.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})
    dns.set_zone("other.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})


def start(
    tmp_path: Path, dns: DnsTestServer, spam: dict[str, Any] | None = None, **extra: Any
) -> tuple[Settings, pbserver.RunningServer]:
    publish(dns)
    overrides = {
        "dns": {"nameservers": [dns.address], "timeout": 1.0},
        "spam": {"junk_threshold": 5.0, "reject_threshold": 15.0, **(spam or {})},
        **extra,
    }
    settings = pbserver.make_settings(tmp_path / "data", overrides)
    pbserver.add_user(settings, RCPT)
    return settings, pbserver.RunningServer(settings)


@pytest.fixture
def running(
    tmp_path: Path, dns_server: DnsTestServer
) -> Iterator[tuple[Settings, pbserver.RunningServer]]:
    settings, server = start(tmp_path, dns_server)
    with server:
        yield settings, server


def send(
    server: pbserver.RunningServer, data: bytes, mail_from: str = "promo@sender.example",
    helo: str = "out.sender.example",
) -> None:  # fmt: skip
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.ehlo(helo)
        client.sendmail(mail_from, [RCPT], data)


def stored(settings: Settings, marker: str) -> dict[str, bytes]:
    """Folder -> stored bytes of the message containing ``marker``."""
    root = settings.mail_dir / "example.test" / "alice"
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur"):
            data = path.read_bytes()
            if marker.encode() in data:
                folder = path.parent.parent
                found["INBOX" if folder == root else folder.name.lstrip(".")] = data
    return found


def spam_field(data: bytes) -> str:
    """The unfolded X-Pillarbox-Spam field of a stored message (exactly one)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n ", " ").split("\r\n")
    fields = [f for f in unfolded if f.lower().startswith("x-pillarbox-spam:")]
    assert len(fields) == 1, fields
    return fields[0]


def simple(msgid: str, subject: str = "Lunch on thursday", sender: str = "promo@sender.example",
           body: str = "See you at noon.\r\n", extra: str = "") -> bytes:  # fmt: skip
    return (
        f"{extra}From: Promo <{sender}>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{msgid}>\r\n\r\n{body}"
    ).encode()


def test_corpus_ham_to_inbox_spam_to_junk_or_refused(
    running: tuple[Settings, pbserver.RunningServer],
) -> None:
    settings, server = running
    refused = 0
    for sample in corpus():
        try:
            send(server, sample.data)
        except smtplib.SMTPDataError as exc:
            assert sample.spam, f"ham refused: {sample.msgid}: {exc}"
            assert exc.smtp_code == 550 and b"5.7.1" in exc.smtp_error
            refused += 1
            continue
        copies = stored(settings, sample.msgid)
        expected = "Junk" if sample.spam else "INBOX"
        assert list(copies) == [expected], (sample.msgid, spam_field(next(iter(copies.values()))))
        field = spam_field(copies[expected])
        assert f"verdict={expected.lower()};" in field
        if sample.spam:
            assert "BODY_SPAMMY_PHRASES(" in field and "REPLYTO_DIFFERS_FREEMAIL(" in field
        else:
            assert "SPF_PASS(-0.5)" in field
    assert refused < len(corpus()) // 2  # most spam is filed, not refused, at 15


def message_line(caplog: pytest.LogCaptureFixture, queue_marker: str) -> dict[str, Any]:
    """The fields of the SMTP "message" log line of the message whose Message-ID is this."""
    for record in caplog.records:
        fields = getattr(record, "fields", {})
        if record.getMessage() == "message" and fields.get("msgid") == f"<{queue_marker}>":
            return dict(fields)
    raise AssertionError(f"no message line for {queue_marker}")


def test_gtube_is_refused_with_550_5_7_1(
    running: tuple[Settings, pbserver.RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    settings, server = running
    caplog.set_level("INFO")
    data = simple("gtube@sender.example", body=GTUBE.decode() + "\r\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, data)
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error and b"spam" in refused.value.smtp_error
    assert stored(settings, "gtube@sender.example") == {}
    # The verdict is in the message's log line, beside its queue id and result.
    line = message_line(caplog, "gtube@sender.example")
    assert line["result"] == "550 5.7.1" and line["verdict"] == "reject"
    assert line["queue_id"] and "GTUBE(1000)" in line["rules"] and line["spam"] == "999.5"


def test_header_fields_forged_verdict_removed_and_rules_shown(
    running: tuple[Settings, pbserver.RunningServer],
) -> None:
    settings, server = running
    forged = "X-Pillarbox-Spam: verdict=inbox; score=-100;\r\n rules=TRUST_ME(-100)\r\n"
    send(server, simple("forged@sender.example", extra=forged), helo="box")
    copies = stored(settings, "forged@sender.example")
    assert list(copies) == ["INBOX"]
    field = spam_field(copies["INBOX"])
    assert "TRUST_ME" not in field and "-100" not in field
    # HELO "box" is not a FQDN (RFC 5321 §4.1.1.1); the details are sanitised text.
    assert "HELO_NOT_FQDN(1.5:box)" in field and "SPF_PASS(-0.5)" in field
    assert "score=1;" in field and "engine=pillarbox;" in field
    # Ours comes after Return-Path/Delivered-To and before the Received field.
    head = copies["INBOX"].split(b"\r\n\r\n", 1)[0]
    assert (
        head.index(b"Delivered-To:") < head.index(b"X-Pillarbox-Spam:") < head.index(b"Received:")
    )


def test_a_big_message_is_scored_too(running: tuple[Settings, pbserver.RunningServer]) -> None:
    settings, server = running
    body = ("Ordinary words about the garden and the weekend.\r\n" * 20000) + (
        "click here for a limited time offer\r\n"
    )
    send(server, simple("big@sender.example", subject="CHEAP MEDS NO PRESCRIPTION", body=body))
    copies = stored(settings, "big@sender.example")
    field = spam_field(next(iter(copies.values())))
    assert "SUBJECT_ALL_CAPS(1)" in field and "SUBJECT_SPAMMY(1.5:cheap" in field


def imap_move(server: pbserver.RunningServer, src: str, dst: str, msgid: str) -> None:
    with imaphelp.login(server) as client:
        client.select(src)
        typ, data = client.uid("SEARCH", "HEADER", "Message-ID", msgid)
        assert typ == "OK" and data[0], (src, msgid, data)
        typ, _ = client.uid("MOVE", data[0].decode().split()[-1], dst)
        assert typ == "OK"


def imap_flag(server: pbserver.RunningServer, mailbox: str, msgid: str, flag: str) -> None:
    with imaphelp.login(server) as client:
        client.select(mailbox)
        typ, data = client.uid("SEARCH", "HEADER", "Message-ID", msgid)
        assert typ == "OK" and data[0]
        typ, _ = client.uid("STORE", data[0].decode().split()[-1], "+FLAGS", f"({flag})")
        assert typ == "OK"


def wait_learned(settings: Settings, spam: int, ham: int) -> None:
    """Learning runs after the IMAP reply: wait until the user's totals are these."""
    import sqlite3

    deadline = time.monotonic() + 10
    row = None
    while time.monotonic() < deadline:
        db = sqlite3.connect(settings.data_dir / "spam.db")
        try:
            row = db.execute("SELECT spam, ham FROM totals WHERE user = ?", (RCPT,)).fetchone()
        finally:
            db.close()
        if row == (spam, ham):
            return
        time.sleep(0.05)
    raise AssertionError(f"learnt {row}, expected {(spam, ham)}")


def newsletter(n: int) -> bytes:
    html = f"<html><body><p>Our weekly selection of offers, number {n}.</p></body></html>"
    return (
        "From: Deals <deals@promo.example>\r\nTo: alice@example.test\r\n"
        f"Subject: Weekly selection {n}\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <news{n}@promo.example>\r\nContent-Type: text/html\r\n\r\n{html}\r\n"
    ).encode()


def test_moving_to_junk_teaches_spam_and_moving_out_teaches_ham(
    running: tuple[Settings, pbserver.RunningServer],
) -> None:
    settings, server = running
    send(server, newsletter(1), mail_from="deals@promo.example")
    first = stored(settings, "news1@promo.example")
    assert list(first) == ["INBOX"]
    assert "REPUTATION" not in spam_field(first["INBOX"])

    imap_move(server, "INBOX", "Junk", "news1@promo.example")
    wait_learned(settings, 1, 0)
    send(server, newsletter(2), mail_from="deals@promo.example")
    second = stored(settings, "news2@promo.example")
    assert list(second) == ["Junk"]
    field = spam_field(second["Junk"])
    assert "REPUTATION_SENDER(3:deals@promo.example)" in field
    assert "REPUTATION_DOMAIN(1.5:promo.example)" in field

    # The user disagrees with the filter: moving news2 out of Junk teaches ham (1:1 now).
    imap_move(server, "Junk", "INBOX", "news2@promo.example")
    wait_learned(settings, 1, 1)
    send(server, newsletter(3), mail_from="deals@promo.example")
    third = stored(settings, "news3@promo.example")
    assert list(third) == ["INBOX"]
    assert "REPUTATION" not in spam_field(third["INBOX"])
    # ... and with news1 too: its spam lesson is taken back before it counts as ham.
    imap_move(server, "Junk", "INBOX", "news1@promo.example")
    wait_learned(settings, 0, 2)
    send(server, newsletter(5), mail_from="deals@promo.example")
    fifth = stored(settings, "news5@promo.example")
    assert "REPUTATION_SENDER(-4:deals@promo.example)" in spam_field(fifth["INBOX"])
    # Moving spam to Trash is deleting it, not calling it ham.
    imap_move(server, "INBOX", "Trash", "news5@promo.example")
    imap_move(server, "INBOX", "Junk", "news3@promo.example")
    wait_learned(settings, 1, 2)  # news3 taught spam; news5's move taught nothing


def test_junk_keyword_teaches_spam(running: tuple[Settings, pbserver.RunningServer]) -> None:
    settings, server = running
    send(server, newsletter(7), mail_from="deals@promo.example")
    imap_flag(server, "INBOX", "news7@promo.example", "$Junk")
    wait_learned(settings, 1, 0)
    send(server, newsletter(8), mail_from="deals@promo.example")
    assert list(stored(settings, "news8@promo.example")) == ["Junk"]


def test_dnsbl_listing_scores_and_refused_answers_do_not(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    # RFC 5782 §5: 127.0.0.2 is listed on every list; our client is 127.0.0.1.
    dns_server.set_zone("bl.test", {"1.0.0.127": {"A": "127.0.0.2", "TXT": "listed: test"}})
    dns_server.set_zone("refusing.test", {"1.0.0.127": {"A": "127.255.255.254"}})
    dns_server.set_zone("clean.test", {"@": {"TXT": "v=dnsbl"}})
    settings, server = start(
        tmp_path, dns_server, {"dnsbls": ["bl.test", "refusing.test", "clean.test"]}
    )
    with server:
        send(server, simple("listed@sender.example"), helo="box")
    copies = stored(settings, "listed@sender.example")
    field = spam_field(next(iter(copies.values())))
    assert list(copies) == ["Junk"], field
    assert "DNSBL_LISTED(5:bl.test)" in field
    assert "refusing.test" not in field and "clean.test" not in field


def test_greylisting_defers_then_accepts_after_the_delay(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    settings, server = start(tmp_path, dns_server, {"greylist": True, "greylist_delay": 1})
    with server:
        data = simple("grey@sender.example", sender="first@other.example")
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            send(server, data, mail_from="first@other.example")
        assert deferred.value.smtp_code == 451 and b"4.7.1" in deferred.value.smtp_error
        assert stored(settings, "grey@sender.example") == {}
        with pytest.raises(smtplib.SMTPDataError):  # a retry too early is still deferred
            send(server, data, mail_from="first@other.example")
        time.sleep(1.2)
        send(server, data, mail_from="first@other.example")
        assert list(stored(settings, "grey@sender.example")) == ["INBOX"]
        # SPF passes for other.example, which has passed before: a known-good domain.
        send(server, simple("grey2@sender.example"), mail_from="second@other.example")
        assert list(stored(settings, "grey2@sender.example")) == ["INBOX"]
        # An unknown domain still waits.
        with pytest.raises(smtplib.SMTPDataError) as again:
            send(server, simple("grey3@sender.example"), mail_from="x@promo.example")
        assert again.value.smtp_code == 451


def test_greylisting_exempts_trusted_networks(tmp_path: Path, dns_server: DnsTestServer) -> None:
    settings, server = start(
        tmp_path, dns_server, {"greylist": True}, smtp={"trusted_networks": ["127.0.0.0/8"]}
    )
    with server:
        send(server, simple("lan@sender.example"), mail_from="printer@other.example")
    assert list(stored(settings, "lan@sender.example")) == ["INBOX"]


def pillarbox_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_per_user_thresholds_from_the_cli(running: tuple[Settings, pbserver.RunningServer]) -> None:
    settings, server = running
    result = pillarbox_cli(settings, "user", "spam", RCPT, "--junk", "0.5", "--reject", "2")
    assert result.returncode == 0, result.stderr
    assert "junk 0.5" in result.stdout and "reject 2" in result.stdout
    send(server, simple("low@sender.example"), helo="box")  # scores 1: now Junk
    copies = stored(settings, "low@sender.example")
    assert list(copies) == ["Junk"]
    assert "junk=0.5;" in spam_field(copies["Junk"])
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, newsletter(4), mail_from="deals@promo.example", helo="box")  # scores 2
    assert refused.value.smtp_code == 550
    shown = pillarbox_cli(settings, "user", "spam", RCPT)
    assert "junk 0.5" in shown.stdout
    reset = pillarbox_cli(settings, "user", "spam", RCPT, "--default")
    assert reset.returncode == 0, reset.stderr
    send(server, simple("back@sender.example"), helo="box")
    assert list(stored(settings, "back@sender.example")) == ["INBOX"]
    bad = pillarbox_cli(settings, "user", "spam", RCPT, "--junk", "9", "--reject", "2")
    assert bad.returncode == 1 and "reject" in bad.stderr


def test_filter_off_stores_without_a_verdict_but_strips_forgeries(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    settings, server = start(tmp_path, dns_server, {"enabled": False})
    with server:
        forged = "X-Pillarbox-Spam: verdict=inbox; score=0\r\n"
        send(server, simple("off@sender.example", extra=forged, body=GTUBE.decode()))
    copies = stored(settings, "off@sender.example")
    assert list(copies) == ["INBOX"]
    assert b"X-Pillarbox-Spam" not in copies["INBOX"]


@pytest.fixture
def with_rspamd(
    tmp_path: Path, dns_server: DnsTestServer
) -> Iterator[tuple[Settings, pbserver.RunningServer]]:
    from tests import rspamdserver

    with rspamdserver.running(tmp_path / "rspamd", dns_server.address) as url:
        settings, server = start(tmp_path, dns_server, {"rspamd": url})
        with server:
            yield settings, server


def test_rspamd_scores_instead_of_our_rules(
    with_rspamd: tuple[Settings, pbserver.RunningServer],
) -> None:
    settings, server = with_rspamd
    send(server, simple("viarspamd@sender.example"), helo="box")
    copies = stored(settings, "viarspamd@sender.example")
    field = spam_field(copies["INBOX"])
    assert "engine=rspamd;" in field
    assert "HELO_NOT_FQDN" not in field  # our rule did not run; rspamd's symbols are shown
    assert "DATE_IN_PAST(" in field  # rspamd's symbol for a date long ago
    # rspamd knows GTUBE too: its score (15, action reject) meets our reject threshold.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, simple("gtube-rspamd@sender.example", body=GTUBE.decode() + "\r\n"))
    assert refused.value.smtp_code == 550


def test_rspamd_down_falls_back_to_our_rules(tmp_path: Path, dns_server: DnsTestServer) -> None:
    from tests.ports import free_port

    settings, server = start(tmp_path, dns_server, {"rspamd": f"http://127.0.0.1:{free_port()}"})
    with server:
        send(server, simple("norspamd@sender.example"), helo="box")
    field = spam_field(stored(settings, "norspamd@sender.example")["INBOX"])
    assert "engine=pillarbox;" in field and "HELO_NOT_FQDN(1.5:box)" in field


def test_two_recipients_own_verdicts_and_no_partial_reject(
    running: tuple[Settings, pbserver.RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    settings, server = running
    caplog.set_level("INFO")
    pbserver.add_user(settings, "bob@example.test")
    result = pillarbox_cli(settings, "user", "spam", RCPT, "--junk", "0.2", "--reject", "0.5")
    assert result.returncode == 0, result.stderr
    data = simple("two@sender.example", extra="To: bob@example.test\r\n")
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.ehlo("box")  # scores 1: reject for alice, inbox for bob
        refused = client.sendmail("promo@sender.example", [RCPT, "bob@example.test"], data)
    assert refused == {}  # one reply after DATA for both: accepted, nothing lost
    assert list(stored(settings, "two@sender.example")) == ["Junk"]  # alice's
    bob = settings.mail_dir / "example.test" / "bob"
    copies = [p for p in delivered(settings, "bob@example.test") if b"two@sender" in p.read_bytes()]
    assert [p.parent.parent for p in copies] == [bob]  # bob's INBOX
    assert "verdict=inbox;" in spam_field(copies[0].read_bytes())
    line = message_line(caplog, "two@sender.example")
    assert line["verdict"] == "reject" and line["folder"] == "Junk" and line["spam_user"] == RCPT
    others = [r for r in caplog.records if r.getMessage() == "spam"]
    assert [getattr(r, "fields", {}).get("user") for r in others] == ["bob@example.test"]


def worded(n: int, domain: str, words: str) -> bytes:
    return (
        f"From: Sender {n} <s{n}@{domain}>\r\nTo: alice@example.test\r\n"
        f"Subject: Note {n}\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <w{n}@{domain}>\r\n\r\n{words} (number {n})\r\n"
    ).encode()


def test_the_classifier_learns_words_from_moves_and_keywords(
    running: tuple[Settings, pbserver.RunningServer],
) -> None:
    settings, server = running
    spammy = "exclusive pharmacy discount tablets shipping overnight guaranteed"
    hammy = "minutes from the allotment committee about compost and seedlings"
    for n in range(3):  # every message from its own domain: no reputation carries over
        send(server, worded(n, f"s{n}.example", spammy), mail_from=f"s{n}@s{n}.example")
        send(server, worded(10 + n, f"h{n}.example", hammy), mail_from=f"s{10 + n}@h{n}.example")
    for n in range(3):
        imap_move(server, "INBOX", "Junk", f"w{n}@s{n}.example")
        imap_flag(server, "INBOX", f"w{10 + n}@h{n}.example", "$NotJunk")
    wait_learned(settings, 3, 3)
    send(server, worded(20, "new.example", spammy), mail_from="s20@new.example")
    send(server, worded(21, "other.example", hammy), mail_from="s21@other.example")
    spam_copy = stored(settings, "w20@new.example")
    field = spam_field(next(iter(spam_copy.values())))
    assert "BAYES_SPAM(" in field and "REPUTATION" not in field
    assert list(spam_copy) == ["Junk"], field  # 6 points from the words alone
    ham_field = spam_field(stored(settings, "w21@other.example")["INBOX"])
    assert "BAYES_HAM(" in ham_field


def test_logged_in_users_mail_is_not_judged(
    running: tuple[Settings, pbserver.RunningServer],
) -> None:
    """Greylisting and scoring exempt authenticated users: their mail is ours."""
    import ssl

    settings, server = running
    pbserver.add_user(settings, "bob@example.test")
    data = (
        "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: test\r\n"
        "Message-ID: <own@example.test>\r\n\r\n" + GTUBE.decode() + "\r\n"
    ).encode()
    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as client:
        client.starttls(context=context)
        client.login("bob@example.test", pbserver.PASSWORD)
        client.sendmail("bob@example.test", [RCPT], data)
    copies = stored(settings, "<own@example.test>")
    assert list(copies) == ["INBOX"]
    assert b"X-Pillarbox-Spam" not in copies["INBOX"]

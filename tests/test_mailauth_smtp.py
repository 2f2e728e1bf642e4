"""Mail authentication in the real server: mail arriving on the SMTP listener (port 25's
role) is checked against the test DNS server, gets our Authentication-Results, loses forged
ones, and DMARC policy decides between INBOX, Junk and 550 5.7.1."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.mailauth.keys import DkimKey, ensure_domain_keys
from pillarbox.mailauth.signing import sign
from tests import pbserver
from tests.dnsserver import DnsTestServer

RCPT = "alice@example.test"


@pytest.fixture(scope="module")
def sender_keys(tmp_path_factory: pytest.TempPathFactory) -> list[DkimKey]:
    return ensure_domain_keys(tmp_path_factory.mktemp("keys"), "sender.example")


def publish(dns: DnsTestServer, keys: list[DkimKey], dmarc: str) -> None:
    records = {f"{k.selector}._domainkey": {"TXT": k.txt_value()} for k in keys}
    dns.set_zone(
        "sender.example",
        {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}, "_dmarc": {"TXT": dmarc}, **records},
    )
    dns.set_zone("elsewhere.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})


@pytest.fixture
def running(
    tmp_path: Path, dns_server: DnsTestServer
) -> Iterator[tuple[Settings, pbserver.RunningServer]]:
    settings = pbserver.make_settings(
        tmp_path / "data", {"dns": {"nameservers": [dns_server.address], "timeout": 1.0}}
    )
    pbserver.add_user(settings, RCPT)
    with pbserver.RunningServer(settings) as server:
        yield settings, server


def message(msgid: str, extra_headers: bytes = b"") -> bytes:
    return (
        extra_headers + b"From: CEO <ceo@sender.example>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: Wire transfer\r\n"
        b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        b"Message-ID: <" + msgid.encode() + b">\r\n"
        b"\r\n"
        b"Please pay.\r\n"
    )


def send(server: pbserver.RunningServer, mail_from: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.ehlo("out.sender.example")
        client.sendmail(mail_from, [RCPT], data)


def stored(settings: Settings, msgid: str) -> dict[str, bytes]:
    """Folder ("INBOX", "Junk", ...) -> stored bytes of the message with ``msgid``."""
    root = settings.mail_dir / "example.test" / "alice"
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur"):
            data = path.read_bytes()
            if f"<{msgid}>".encode() in data:
                folder = path.parent.parent.name
                found["INBOX" if path.parent.parent == root else folder.lstrip(".")] = data
    return found


def test_authenticated_mail_is_delivered_with_results(
    running: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = running
    publish(dns_server, sender_keys, "v=DMARC1; p=reject")
    forged = b"Authentication-Results: mail.example.test; dmarc=pass header.from=bank.example\r\n"
    data = message("good@sender.example", forged)
    send(server, "ceo@sender.example", sign(data, "sender.example", sender_keys) + data)
    copies = stored(settings, "good@sender.example")
    assert list(copies) == ["INBOX"]
    text = copies["INBOX"]
    assert text.count(b"Authentication-Results: mail.example.test;") == 1
    assert b"bank.example" not in text
    head = text.split(b"\r\n\r\n", 1)[0]
    assert b"spf=pass" in head and b"dmarc=pass" in head
    assert head.count(b"dkim=pass") == 2


def test_dmarc_reject_is_550(
    running: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = running
    publish(dns_server, sender_keys, "v=DMARC1; p=reject")
    # SPF passes for elsewhere.example, which is not aligned with the From domain; unsigned.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "bounce@elsewhere.example", message("spoof@sender.example"))
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert stored(settings, "spoof@sender.example") == {}


def test_dmarc_quarantine_goes_to_junk(
    running: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = running
    publish(dns_server, sender_keys, "v=DMARC1; p=quarantine")
    send(server, "bounce@elsewhere.example", message("junk@sender.example"))
    copies = stored(settings, "junk@sender.example")
    assert list(copies) == ["Junk"]
    assert b"dmarc=fail" in copies["Junk"]


def test_dns_failure_accepts_and_notes_temperror(
    running: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = running
    publish(dns_server, sender_keys, "v=DMARC1; p=reject")
    dns_server.fail("_dmarc.sender.example")
    send(server, "bounce@elsewhere.example", message("temp@sender.example"))
    copies = stored(settings, "temp@sender.example")
    assert list(copies) == ["INBOX"]
    assert b"dmarc=temperror" in copies["INBOX"]


@pytest.fixture
def spf_rejecting(
    tmp_path: Path, dns_server: DnsTestServer
) -> Iterator[tuple[Settings, pbserver.RunningServer]]:
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "mailauth": {"spf_reject": True},
        },
    )
    pbserver.add_user(settings, RCPT)
    with pbserver.RunningServer(settings) as server:
        yield settings, server


def publish_spf_excluding_us(dns: DnsTestServer, keys: list[DkimKey], dmarc: str) -> None:
    """sender.example allows only 192.0.2.1: our 127.0.0.1 client gets SPF fail."""
    records = {f"{k.selector}._domainkey": {"TXT": k.txt_value()} for k in keys}
    dns.set_zone(
        "sender.example",
        {"@": {"TXT": "v=spf1 ip4:192.0.2.1 -all"}, "_dmarc": {"TXT": dmarc}, **records},
    )


def test_spf_reject_refuses_an_spf_fail_with_5_7_23(
    spf_rejecting: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = spf_rejecting
    publish_spf_excluding_us(dns_server, sender_keys, "v=DMARC1; p=none")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "ceo@sender.example", message("spf-fail@sender.example"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.23 ")
    assert b"127.0.0.1" in refused.value.smtp_error
    assert b"sender.example" in refused.value.smtp_error
    assert stored(settings, "spf-fail@sender.example") == {}


def test_spf_reject_spares_mail_dkim_vouches_for(
    spf_rejecting: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    """A forwarder broke SPF, the aligned DKIM signature still holds: DMARC passes and
    the mail is delivered (RFC 7489 §10.1), its SPF fail noted in the results."""
    settings, server = spf_rejecting
    publish_spf_excluding_us(dns_server, sender_keys, "v=DMARC1; p=none")
    data = message("forwarded@sender.example")
    send(server, "ceo@sender.example", sign(data, "sender.example", sender_keys) + data)
    copies = stored(settings, "forwarded@sender.example")
    assert list(copies) == ["INBOX"]
    assert b"spf=fail" in copies["INBOX"] and b"dmarc=pass" in copies["INBOX"]


def test_without_spf_reject_an_spf_fail_is_delivered_and_noted(
    running: tuple[Settings, pbserver.RunningServer],
    dns_server: DnsTestServer,
    sender_keys: list[DkimKey],
) -> None:
    settings, server = running
    publish_spf_excluding_us(dns_server, sender_keys, "v=DMARC1; p=none")
    send(server, "ceo@sender.example", message("spf-noted@sender.example"))
    copies = stored(settings, "spf-noted@sender.example")
    assert list(copies) == ["INBOX"]
    assert b"spf=fail" in copies["INBOX"]

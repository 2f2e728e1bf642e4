"""Inbound policy on port 25 with real mail authentication against a loopback DNS server:
DMARC reject -> 550 5.7.1, quarantine -> Junk, DNS trouble -> accepted; our
Authentication-Results prepended and forged ones (our authserv-id) removed."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator

import pytest

from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered

TIMEOUT = 10


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        for domain, policy in (("strict.test", "reject"), ("careful.test", "quarantine")):
            server.set_zone(
                domain,
                {
                    "@": {"TXT": "v=spf1 ip4:192.0.2.1 -all"},  # not 127.0.0.1: SPF fails
                    "_dmarc": {"TXT": f"v=DMARC1; p={policy}"},
                },
            )
        server.set_zone("relaxed.test", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})
        server.set_zone("broken.test", {"@": {"TXT": "v=spf1 -all"}})
        server.fail("broken.test", "servfail")
        server.fail("_dmarc.broken.test", "servfail")
        yield server


@pytest.fixture(scope="module")
def mx(
    tmp_path_factory: pytest.TempPathFactory, dns: DnsTestServer
) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("inbound") / "data",
        {"dns": {"nameservers": [dns.address], "timeout": 1.0}},
    )
    pbserver.add_user(settings, "alice@example.test")
    with pbserver.RunningServer(settings) as running:
        yield running


def send(
    server: pbserver.RunningServer, domain: str, mark: str, extra: str = ""
) -> tuple[int, bytes]:
    data = (
        f"{extra}From: someone@{domain}\r\nTo: alice@example.test\r\nSubject: {mark}\r\n"
        f"Message-ID: <{mark}@{domain}>\r\n\r\nhello\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo(f"mx.{domain}")
        client.mail(f"someone@{domain}")
        client.rcpt("alice@example.test")
        return client.data(data)


def folder_files(server: pbserver.RunningServer, folder: str, mark: str) -> list[bytes]:
    files = delivered(server.settings, "alice", folder)
    return [p.read_bytes() for p in files if mark.encode() in p.read_bytes()]


def test_dmarc_reject_is_refused(mx: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    code, text = send(mx, "strict.test", mark)
    assert (code, text[:5]) == (550, b"5.7.1")
    assert folder_files(mx, "", mark) == [] and folder_files(mx, ".Junk", mark) == []


def test_dmarc_quarantine_goes_to_junk(mx: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    assert send(mx, "careful.test", mark)[0] == 250
    assert folder_files(mx, "", mark) == []
    (stored,) = folder_files(mx, ".Junk", mark)
    assert b"dmarc=fail" in stored


def test_pass_gets_our_results_and_forged_ones_are_removed(mx: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    forged = "Authentication-Results: mail.example.test; spf=pass; dmarc=pass forged=yes\r\n"
    foreign = "Authentication-Results: other.example; spf=pass\r\n"
    assert send(mx, "relaxed.test", mark, extra=forged + foreign)[0] == 250
    (stored,) = folder_files(mx, "", mark)
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    assert "forged=yes" not in head
    assert foreign.strip() in head
    ours = head.index("Authentication-Results: mail.example.test")
    assert head.index("Delivered-To:") < ours < head.index("Received: from mx.relaxed.test")
    assert "spf=pass" in head[ours:]


def test_dns_failure_never_refuses_mail(mx: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    assert send(mx, "broken.test", mark)[0] == 250
    (stored,) = folder_files(mx, "", mark)
    assert b"temperror" in stored

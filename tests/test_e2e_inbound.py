"""End to end: mail from the internet arrives in the right INBOX, authenticated, byte-exact.

A remote domain (sender.example) publishes SPF, DKIM and DMARC in the test DNS server; our
"internet" client connects to port 25 from its SPF-authorised address, signs with dkimpy
and delivers to our users; the users read their mail over IMAPS with imapclient/imaplib
while an IDLE-ing client waits to be told. Independent clients only: smtplib, swaks,
imapclient, and the authres package to parse Authentication-Results.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import authres
import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    BOB,
    CAROL_LOCAL,
    DOMAIN,
    SENDER_DOMAIN,
    SENDER_IP,
    TRACE_FIELDS,
    SenderKey,
    client_tls,
    fetch_by_message_id,
    header_names,
    imap,
    marker,
    message,
    prepended,
    publish_our_zone,
    publish_sender_zone,
    smtp_from_outside,
    unfolded_header,
    world_settings,
)

SENDER = f"someone@{SENDER_DOMAIN}"


@dataclass
class World:
    settings: Settings
    server: pbserver.RunningServer
    dns: DnsTestServer
    key: SenderKey

    @property
    def smtp_port(self) -> int:
        return self.server.port("smtp")

    @property
    def imaps_port(self) -> int:
        return self.server.port("imaps")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-inbound")
    key = SenderKey.generate()
    with DnsTestServer() as dns_server:
        settings = world_settings(tmp, dns_server, peer_port=1)
        for user in (ALICE, BOB, CAROL_LOCAL):
            pbserver.add_user(settings, user)
        pbserver.add_alias(settings, f"team@{DOMAIN}", ALICE, BOB)
        pbserver.add_alias(settings, f"@{DOMAIN}", CAROL_LOCAL)
        publish_our_zone(dns_server, settings)
        publish_sender_zone(dns_server, key, "v=DMARC1; p=reject")
        with pbserver.RunningServer(settings) as server:
            yield World(settings, server, dns_server, key)


def parse_ar(value: str) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)


def test_mail_arrives_authenticated_byte_exact_and_idle_is_told(world: World) -> None:
    idler = imap(world.settings, world.imaps_port)
    reader = imap(world.settings, world.imaps_port)
    try:
        idler.select_folder("INBOX")
        idler.idle()
        mark = marker()
        original = world.key.sign(message(mark))
        with smtp_from_outside(world.smtp_port) as client:
            client.starttls(context=client_tls(world.settings))
            client.ehlo()
            assert client.sendmail(SENDER, [ALICE], original) == {}
        accepted = time.monotonic()
        told: list[tuple[object, ...]] = []
        while not told and time.monotonic() - accepted < 2.0:
            told = [r for r in idler.idle_check(timeout=0.2) if r[1:2] == (b"EXISTS",)]
        waited = time.monotonic() - accepted
        idler.idle_done()
        assert told, "IDLE client was not told of the new message within 2 s"
        assert waited < 2.0

        ((_, stored),) = fetch_by_message_id(reader, mark)
    finally:
        idler.logout()
        reader.logout()

    head = prepended(stored, original)
    names = header_names(head)
    assert set(names) <= TRACE_FIELDS, names
    assert {"return-path", "delivered-to", "received", "authentication-results"} <= set(names)
    assert unfolded_header(head, "Return-Path") == [f"<{SENDER}>"]
    assert unfolded_header(head, "Delivered-To") == [ALICE]
    (received,) = unfolded_header(head, "Received")
    assert "out.sender.example" in received and SENDER_IP in received
    assert "mail.example.test" in received and "TLS" in received

    (ar_value,) = unfolded_header(head, "Authentication-Results")
    ar = parse_ar(ar_value)
    assert ar.authserv_id == "mail.example.test"
    results = {(r.method, r.result) for r in ar.results}
    assert {("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")} <= results, results
    dkim_domains = {
        p.value for r in ar.results if r.method == "dkim" for p in r.properties if p.name == "d"
    }
    assert dkim_domains == {SENDER_DOMAIN}


def test_forged_sender_without_signature_is_refused_by_dmarc(world: World) -> None:
    """The negative of the test above: the same From domain, unsigned and from an IP SPF does
    not allow; DMARC p=reject -> 550 5.7.1 and nothing in any mailbox."""
    import smtplib

    mark = marker()
    with smtplib.SMTP("127.0.0.1", world.smtp_port, timeout=10) as client:
        client.ehlo("forger.invalid")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, [ALICE], message(mark))
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    with imap(world.settings, world.imaps_port) as reader:
        assert fetch_by_message_id(reader, mark) == []
        assert fetch_by_message_id(reader, mark, "Junk") == []


def inbox_marks(world: World, user: str, marks: list[str]) -> dict[str, int]:
    """How many copies of each marked message ``user`` sees in INBOX over IMAP."""
    with imap(world.settings, world.imaps_port, user) as client:
        return {m: len(fetch_by_message_id(client, m)) for m in marks}


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_subaddress_alias_fanout_and_catch_all_land_in_the_right_inboxes(world: World) -> None:
    tagged, team, stray = marker(), marker(), marker()
    signed = {m: world.key.sign(message(m, to="x@" + DOMAIN)) for m in (tagged, team, stray)}
    # swaks for the sub-address (an independent client), over STARTTLS, from the SPF address
    data_file = Path(world.settings.data_dir) / f"{tagged}.eml"
    data_file.write_bytes(signed[tagged])
    swaks = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{world.smtp_port}",
            "--tls",
            "--tls-ca-path",
            str(world.settings.tls.ca),
            "--local-interface",
            SENDER_IP,
            "--helo",
            "out.sender.example",
            "--from",
            SENDER,
            "--to",
            f"alice+news@{DOMAIN}",
            "--data",
            str(data_file),
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    with smtp_from_outside(world.smtp_port) as client:
        assert client.sendmail(SENDER, [f"team@{DOMAIN}"], signed[team]) == {}
        assert client.sendmail(SENDER, [f"nobody-here@{DOMAIN}"], signed[stray]) == {}

    marks = [tagged, team, stray]
    assert inbox_marks(world, ALICE, marks) == {tagged: 1, team: 1, stray: 0}
    assert inbox_marks(world, BOB, marks) == {tagged: 0, team: 1, stray: 0}
    # The catch-all takes only what no user or alias claims: not alice+news.
    assert inbox_marks(world, CAROL_LOCAL, marks) == {tagged: 0, team: 0, stray: 1}


def test_tagged_copy_records_the_original_recipient(world: World) -> None:
    mark = marker()
    original = world.key.sign(message(mark))
    with smtp_from_outside(world.smtp_port) as client:
        assert client.sendmail(SENDER, [f"alice+lists@{DOMAIN}"], original) == {}
    with imap(world.settings, world.imaps_port) as reader:
        ((_, stored),) = fetch_by_message_id(reader, mark)
    head = prepended(stored, original)
    # Postfix writes the address as received; either is fine, but it must be alice's.
    (delivered_to,) = unfolded_header(head, "Delivered-To")
    assert delivered_to in (ALICE, f"alice+lists@{DOMAIN}")


def test_each_alias_copy_names_its_own_user(world: World) -> None:
    """A copy shared by hard link must not carry another user's Delivered-To."""
    mark = marker()
    original = world.key.sign(message(mark, to=f"team@{DOMAIN}"))
    with smtp_from_outside(world.smtp_port) as client:
        assert client.sendmail(SENDER, [f"team@{DOMAIN}"], original) == {}
    for user in (ALICE, BOB):
        with imap(world.settings, world.imaps_port, user) as reader:
            ((_, stored),) = fetch_by_message_id(reader, mark)
        head = prepended(stored, original)
        assert unfolded_header(head, "Delivered-To") == [user], user

"""Two real Pillarbox servers: alice@example.test submits on A's port 587; A finds B through
B's MX record and relays over STARTTLS; B verifies A's DKIM signature and stores the message
in bob@other.test's INBOX. A bounce from B comes back into alice's INBOX on A."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

from pillarbox.config import Settings
from pillarbox.mailauth.keys import active_keys
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import delivery_status, inbox, queue_settings, wait_for
from tests.smtppeer import free_port_on

ALICE = "alice@example.test"
BOB = "bob@other.test"


def publish_example_test(dns: DnsTestServer, settings: Settings) -> None:
    zone: dict[str, dict[str, str | list[str]]] = {
        "@": {"MX": ["10 mail.example.test."], "TXT": "v=spf1 ip4:127.0.0.0/8 -all"},
        "mail": {"A": "127.0.0.1"},
        "_dmarc": {"TXT": "v=DMARC1; p=reject"},
    }
    for key in active_keys(settings.keys_dir, "example.test"):
        zone[key.dns_name.removesuffix(".example.test")] = {"TXT": key.txt_value()}
    dns.set_zone("example.test", zone)


def submit(server: pbserver.RunningServer, to: str, body: str) -> None:
    context = ssl.create_default_context(cafile=str(server.settings.tls.ca))
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as client:
        client.starttls(context=context)
        client.login(ALICE, pbserver.PASSWORD)
        message = (
            f"From: Alice <{ALICE}>\r\nTo: <{to}>\r\nSubject: across\r\n"
            f"Message-ID: <e2e-{to}@example.test>\r\n\r\n{body}\r\n"
        )
        client.sendmail(ALICE, [to], message.encode())


def test_two_pillarboxes_relay_over_mx_with_dkim(tmp_path: Path, dns_server: DnsTestServer) -> None:
    port = free_port_on("127.0.0.3")
    dns_server.set_zone(
        "other.test", {"@": {"MX": ["10 mx.other.test."]}, "mx": {"A": "127.0.0.3"}}
    )
    a = queue_settings(tmp_path / "a", dns_server.address, port)
    publish_example_test(dns_server, a)
    b = pbserver.make_settings(
        tmp_path / "b",
        {
            "listen": {"smtp": f"127.0.0.3:{port}"},
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        },
        domains=("other.test",),
        hostname="mx.other.test",
    )
    pbserver.add_user(b, BOB)
    with pbserver.RunningServer(b), pbserver.RunningServer(a) as server_a:
        submit(server_a, BOB, "Hello from A.")
        (received,) = wait_for(lambda: inbox(b, BOB), timeout=25, what="delivery into B")
        submit(server_a, "nobody@other.test", "Nobody is home.")
        (bounce,) = wait_for(lambda: inbox(a, ALICE), timeout=25, what="bounce back into A")
    assert received["Subject"] == "across"
    assert received["DKIM-Signature"] is not None
    results = " ".join(received.get_all("Authentication-Results") or [])
    assert "dkim=pass" in results and "header.d=example.test" in results
    assert "spf=pass" in results
    assert "dmarc=pass" in results
    assert "with ESMTPS" in " ".join(received.get_all("Received") or [])
    (block,) = delivery_status(bounce)
    assert block["Final-Recipient"] == "rfc822; nobody@other.test"
    assert block["Action"] == "failed"
    assert block["Status"].startswith("5.1.")
    assert block["Diagnostic-Code"].startswith("smtp; 550")

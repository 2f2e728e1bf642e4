"""End to end: two Pillarbox servers mail each other, as in the seed's story of Bob's server
relaying to Alice's, found through DNS.

Server A (example.test, 127.0.0.4) and server B (other.test, 127.0.0.3) each publish exactly
what ``pillarbox dns records`` tells their admin (MX, SPF, DKIM, DMARC, MTA-STS) in one test
DNS server; each listens for other servers on its own address and the same port, which the
other uses as ``delivery.remote_port``; outbound mail leaves from the published address
(``delivery.bind_address``). Both trust both dev CAs, as two servers with public
certificates would. alice@example.test writes to zoe@other.test, who reads it over IMAP with
SPF, DKIM and DMARC passing and TLS recorded, and replies; alice reads the reply the same way.
"""

from __future__ import annotations

import logging
import socket
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import authres
import pytest

from pillarbox import config
from pillarbox.config import Settings
from pillarbox.log import KeyValueFormatter
from pillarbox.tls.certs import make_server_cert, read_cert_info
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    fetch_by_message_id,
    header_names,
    imap,
    marker,
    message,
    our_records,
    prepended,
    submit,
    unfolded_header,
    wait_for,
)
from tests.smtppeer import free_port_on

ZOE = "zoe@other.test"
A_IP, B_IP = "127.0.0.4", "127.0.0.3"
DNS: list[DnsTestServer] = []  # the module's DNS server, for tests that republish a zone


@dataclass
class Site:
    settings: Settings
    server: pbserver.RunningServer
    domain: str
    hostname: str


def publish(dns_server: DnsTestServer, settings: Settings, domain: str) -> None:
    lines = [
        f"{r['name']} 0 IN {r['type']} {r['rdata']}"
        for r in our_records(settings)
        if r.get("where", "zone") == "zone" and r["name"].rstrip(".").endswith(domain)
    ]
    dns_server.set_zone(domain, "\n".join(lines) + "\n")


def site_settings(
    base: Path, domain: str, ip: str, smtp_port: int, https_port: int, dns: DnsTestServer
) -> Settings:
    return pbserver.make_settings(
        base / "data",
        {
            "public_ip": ip,
            "listen": {"smtp": f"{ip}:{smtp_port}", "https": f"{ip}:{https_port}"},
            "dns": {"nameservers": [dns.address], "timeout": 1.0},
            "limits": {"auth_failure_delay": 0.05},
            "delivery": {
                "remote_port": smtp_port,
                "mta_sts_port": https_port,
                "bind_address": ip,
                "retry_initial": 1,
                "retry_max": 2,
                "queue_scan_interval": 1,
                "connect_timeout": 3,
            },
        },
        domains=(domain,),
        hostname=f"mail.{domain}",
    )


def trusting(settings: Settings, bundle: Path) -> Settings:
    assert settings.source is not None
    raw = tomllib.loads(settings.source.read_text())
    raw["tls"]["ca"] = str(bundle)
    settings.source.write_text(pbserver.dump_toml(raw))
    return config.load(settings.source)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    tmp = tmp_path_factory.mktemp("e2e-two")
    smtp_port = free_port_on(A_IP, B_IP)
    https_port = free_port_on(A_IP, B_IP)
    with DnsTestServer() as dns_server:
        DNS[:] = [dns_server]
        a = site_settings(tmp / "a", "example.test", A_IP, smtp_port, https_port, dns_server)
        b = site_settings(tmp / "b", "other.test", B_IP, smtp_port, https_port, dns_server)
        # Each trusts both CAs (tls.ca is what its clients and outbound TLS trust).
        assert a.tls.ca is not None and b.tls.ca is not None
        bundle = tmp / "both-cas.pem"
        bundle.write_bytes(a.tls.ca.read_bytes() + b.tls.ca.read_bytes())
        a, b = (trusting(s, bundle) for s in (a, b))
        pbserver.add_user(a, ALICE)
        pbserver.add_user(b, ZOE)
        publish(dns_server, a, "example.test")
        publish(dns_server, b, "other.test")
        with pbserver.RunningServer(a) as server_a, pbserver.RunningServer(b) as server_b:
            yield (
                Site(a, server_a, "example.test", "mail.example.test"),
                Site(b, server_b, "other.test", "mail.other.test"),
            )


def read_over_imap(site: Site, user: str, mark: str) -> bytes:
    def find() -> list[tuple[int, bytes]]:
        with imap(site.settings, site.server.port("imaps"), user) as client:
            return fetch_by_message_id(client, mark)

    ((_, stored),) = wait_for(find, timeout=15, what=f"{mark} in {user}'s INBOX")
    return bytes(stored)


def check_arrival(receiver: Site, sender_site: Site, stored: bytes, original: bytes) -> None:
    head = prepended(stored, original)
    names = header_names(head)
    assert "dkim-signature" in names, names
    (ar_value,) = unfolded_header(head, "Authentication-Results")
    ar = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + ar_value)
    assert ar.authserv_id == receiver.hostname
    results = {(r.method, r.result) for r in ar.results}
    assert {("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")} <= results, ar_value
    received = unfolded_header(head, "Received")
    hop = [r for r in received if f"by {receiver.hostname}" in r]
    assert hop and sender_site.hostname in hop[0] and "TLS" in hop[0], received


def test_two_pillarboxes_mail_each_other_authenticated_over_tls(
    sites: tuple[Site, Site],
) -> None:
    a, b = sites
    mark = marker()
    original = message(mark, sender=f"Alice <{ALICE}>", to=f"Zoe <{ZOE}>")
    start = time.monotonic()
    assert submit(a.settings, a.server.port("submission"), ALICE, [ZOE], original) == {}
    stored = read_over_imap(b, ZOE, mark)
    there = time.monotonic() - start
    check_arrival(b, a, stored, original)

    reply_mark = marker()
    reply = message(reply_mark, sender=f"Zoe <{ZOE}>", to=ALICE, subject=f"Re: e2e {mark}")
    assert submit(b.settings, b.server.port("submission"), ZOE, [ALICE], reply, user=ZOE) == {}
    stored_reply = read_over_imap(a, ALICE, reply_mark)
    check_arrival(a, b, stored_reply, reply)
    print(f"A -> B delivered and readable in {there:.2f}s")


class LogLines(logging.Handler):
    """Collects the server's key=value log lines (pillarbox.log format) in memory."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(KeyValueFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_mta_sts_enforce_between_two_pillarboxes(sites: tuple[Site, Site]) -> None:
    """B switches its MTA-STS policy to enforce (config + reload, new TXT id published); A
    picks up the new policy and still delivers, over verified TLS (RFC 8461 §4, §5)."""
    a, b = sites
    # A certificate for every name B serves, as ACME would order (the dev one lacks
    # mta-sts.DOMAIN: see test_dev_certificate_covers_the_names_dns_records_publishes).
    tls_dir = b.settings.tls_dir
    make_server_cert(
        b.settings.tls.cert,
        b.settings.tls.key,
        ["mail.other.test", "mta-sts.other.test", "autoconfig.other.test", "127.0.0.1"],
        tls_dir / "ca.pem",
        tls_dir / "ca-key.pem",
    )
    assert b.settings.source is not None
    raw = tomllib.loads(b.settings.source.read_text())
    raw["tls"]["mta_sts_mode"] = "enforce"
    b.settings.source.write_text(pbserver.dump_toml(raw))
    assert b.server.call(b.server.server.reload()) is True
    publish(DNS[0], b.settings, "other.test")
    policy = fetch_policy(b)
    assert "mode: enforce" in policy and "mx: mail.other.test" in policy, policy

    mark = marker()
    original = message(mark, sender=f"Alice <{ALICE}>", to=ZOE)
    logs = LogLines()
    queue_logger = logging.getLogger("pillarbox.queue")
    old_level = queue_logger.level
    queue_logger.setLevel(logging.INFO)
    queue_logger.addHandler(logs)
    try:
        assert submit(a.settings, a.server.port("submission"), ALICE, [ZOE], original) == {}
        stored = read_over_imap(b, ZOE, mark)
    finally:
        queue_logger.removeHandler(logs)
        queue_logger.setLevel(old_level)
    check_arrival(b, a, stored, original)
    connected = [line for line in logs.lines if "event=connected" in line and B_IP in line]
    assert connected and all("verified=True" in line for line in connected), connected


def fetch_policy(site: Site) -> str:
    """B's policy as a sending MTA fetches it: https://mta-sts.other.test/.well-known/..."""
    import http.client
    import ssl

    assert site.settings.tls.ca is not None
    ctx = ssl.create_default_context(cafile=str(site.settings.tls.ca))
    ip, port = B_IP, site.server.port("https")
    conn = http.client.HTTPSConnection(ip, port, context=ctx, timeout=5)
    conn.sock = ctx.wrap_socket(
        socket.create_connection((ip, port), timeout=5), server_hostname="mta-sts.other.test"
    )
    conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": "mta-sts.other.test"})
    response = conn.getresponse()
    assert response.status == 200
    return response.read().decode()


def test_dev_certificate_covers_the_names_dns_records_publishes(tmp_path: Path) -> None:
    """INTERFACE.md: the dev profile is a real server except addresses and CA. Senders fetch
    https://mta-sts.DOMAIN/ (RFC 8461 §3.3) and mail clients https://autoconfig.DOMAIN/,
    both CNAMEs to the hostname in ``dns records``: the certificate must cover them."""
    settings = pbserver.make_settings(tmp_path / "data")
    names = set(read_cert_info(settings.tls.cert).names)
    published = {
        r["name"].rstrip(".")
        for r in our_records(settings)
        if r["type"] == "CNAME" and r["value"].rstrip(".") == settings.hostname
    }
    assert {"mta-sts.example.test", "autoconfig.example.test"} <= published
    assert published <= names, published - names

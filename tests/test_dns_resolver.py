"""The test DNS server and pillarbox.dns.resolver, each checked against an independent client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from pillarbox.config import DnsSettings
from pillarbox.dns.resolver import (
    DnsNoData,
    DnsNotFound,
    DnsTempError,
    Resolver,
    SyncLookup,
    parse_nameserver,
)
from tests.dnsserver import DnsTestServer

ZONE = """
$ORIGIN example.com.
$TTL 300
@       IN SOA ns hostmaster 1 3600 600 86400 300
@       IN MX 20 Backup.Example.com.
@       IN MX 10 mx
@       IN TXT "v=spf1 " "ip4:192.0.2.0/24 -all"
@       IN TXT "other"
mx      IN A 192.0.2.10
mx      IN AAAA 2001:db8::10
www     IN CNAME mx
*.wild  IN TXT "wildcard"
a.b.c   IN A 192.0.2.1
_25._tcp.mx IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"""


def stub(server: DnsTestServer) -> dns.resolver.Resolver:
    """dnspython's own synchronous resolver, as an independent client of the test server."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.nameserver_ports = {"127.0.0.1": server.port}
    r.lifetime = 2
    return r


@pytest.fixture
def resolver(dns_server: DnsTestServer) -> Resolver:
    dns_server.set_zone("example.com", ZONE)
    return Resolver.from_settings(DnsSettings(nameservers=(dns_server.address,), timeout=1.0))


def test_server_answers_dnspython_stub(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("example.com", ZONE)
    r = stub(dns_server)
    answer = r.resolve("example.com.", "MX")
    assert sorted((x.preference, x.exchange.to_text().lower()) for x in answer) == [
        (10, "mx.example.com."),
        (20, "backup.example.com."),
    ]
    assert answer.response.flags & dns.flags.AA
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nope.example.com.", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mx.example.com.", "TXT")
    # An empty non-terminal exists: NODATA, not NXDOMAIN.
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("b.c.example.com.", "A")
    assert [x.to_text() for x in r.resolve("www.example.com.", "A")] == ["192.0.2.10"]
    assert ("example.com", "MX") in dns_server.queries


def test_server_refuses_names_outside_its_zones(dns_server: DnsTestServer) -> None:
    query = dns.message.make_query("example.org.", "A")
    response = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert response.rcode() == dns.rcode.REFUSED


def test_server_truncates_big_udp_answers_and_serves_tcp(dns_server: DnsTestServer) -> None:
    big = "k" * 3000
    dns_server.set_zone("big.test", {"@": {"TXT": [big]}})
    query = dns.message.make_query("big.test.", "TXT")  # no EDNS: 512-byte limit
    udp = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert udp.flags & dns.flags.TC
    tcp = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert b"".join(tcp.answer[0][0].strings).decode() == big


def test_dict_zones_and_changes_between_steps(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("d.test", {"@": {"TXT": 'say "hi"\\'}, "h": {"A": ["127.0.0.9"]}})
    r = stub(dns_server)
    assert r.resolve("d.test.", "TXT")[0].strings == (b'say "hi"\\',)
    dns_server.set_zone("d.test", {"@": {"TXT": "changed"}})
    assert r.resolve("d.test.", "TXT")[0].strings == (b"changed",)
    dns_server.remove_zone("d.test")
    with pytest.raises(dns.resolver.NoNameservers):
        r.resolve("d.test.", "TXT")


async def test_resolver_record_types(resolver: Resolver) -> None:
    assert await resolver.mx("example.com") == [(10, "mx.example.com"), (20, "backup.example.com")]
    assert sorted(await resolver.txt("example.com.")) == ["other", "v=spf1 ip4:192.0.2.0/24 -all"]
    assert await resolver.a("mx.example.com") == ["192.0.2.10"]
    assert await resolver.aaaa("mx.example.com") == ["2001:db8::10"]
    assert await resolver.addresses("mx.example.com") == ["192.0.2.10", "2001:db8::10"]
    assert await resolver.a("www.example.com") == ["192.0.2.10"]  # via CNAME
    assert await resolver.txt("x.wild.example.com") == ["wildcard"]
    tlsa = await resolver.tlsa("_25._tcp.mx.example.com")
    assert (tlsa[0].usage, tlsa[0].selector, tlsa[0].mtype) == (3, 1, 1)
    assert tlsa[0].data == bytes.fromhex("0123456789abcdef" * 4)


async def test_resolver_ptr(dns_server: DnsTestServer, resolver: Resolver) -> None:
    dns_server.set_zone("2.0.192.in-addr.arpa", {"10": {"PTR": "MX.example.com."}})
    dns_server.set_zone(
        "ip6.arpa",
        {
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2": {
                "PTR": "v6.example.com."
            }
        },
    )
    assert await resolver.ptr("192.0.2.10") == ["mx.example.com"]
    assert await resolver.ptr("2001:db8::1") == ["v6.example.com"]
    with pytest.raises(DnsNotFound):
        await resolver.ptr("192.0.2.11")
    with pytest.raises(DnsNotFound):
        await resolver.ptr("not-an-ip")


async def test_resolver_outcomes(dns_server: DnsTestServer, resolver: Resolver) -> None:
    with pytest.raises(DnsNotFound) as nx:
        await resolver.txt("missing.example.com")
    assert not isinstance(nx.value, DnsNoData)
    with pytest.raises(DnsNoData):
        await resolver.txt("mx.example.com")
    with pytest.raises(DnsNotFound):
        await resolver.txt("bad..name.example.com")
    dns_server.fail("servfail.example.com")
    with pytest.raises(DnsTempError):
        await resolver.txt("servfail.example.com")
    dns_server.fail("mx.example.com", rdtype="AAAA")
    assert await resolver.a("mx.example.com") == ["192.0.2.10"]
    with pytest.raises(DnsTempError):
        await resolver.aaaa("mx.example.com")
    dns_server.fail("refused.example.com", "refused")
    with pytest.raises(DnsTempError):
        await resolver.a("refused.example.com")


async def test_resolver_timeout_is_bounded(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("example.com", ZONE)
    dns_server.fail("slow.example.com", "timeout")
    resolver = Resolver([("127.0.0.1", dns_server.port)], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DnsTempError):
        await resolver.txt("slow.example.com")
    assert time.monotonic() - started < 2.0  # 0.3s timeout; slack for a loaded machine


async def test_sync_lookup_from_a_worker_thread(resolver: Resolver) -> None:
    bridge = SyncLookup(resolver, asyncio.get_running_loop())
    records = await asyncio.to_thread(bridge.query, "mx.example.com", "A")
    assert [r.address for r in records] == ["192.0.2.10"]
    with pytest.raises(RuntimeError):
        bridge.query("mx.example.com", "A")


async def test_large_txt_over_tcp_fallback(dns_server: DnsTestServer, resolver: Resolver) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 2500
    dns_server.set_zone("big.test", {"sel._domainkey": {"TXT": key}})
    assert await resolver.txt("sel._domainkey.big.test") == [key]


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.12:53") == ("127.0.0.12", 53)
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("ns.example.com", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


@pytest.mark.skipif(shutil.which("kdig") is None, reason="knot-dnsutils not installed")
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_server_answers_kdig(dns_server: DnsTestServer, transport: str) -> None:
    dns_server.set_zone("example.com", ZONE)
    out = subprocess.run(
        [
            "kdig",
            "@127.0.0.1",
            "-p",
            str(dns_server.port),
            transport,
            "+short",
            "+time=2",
            "+retry=0",
            "mx.example.com",
            "A",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert out.stdout.split() == ["192.0.2.10"]


async def test_second_nameserver_answers_when_first_is_silent() -> None:
    with DnsTestServer() as silent, DnsTestServer() as working:
        silent.set_zone("x.test", {"@": {"A": "127.0.0.6"}})
        silent.fail("x.test", "timeout")
        working.set_zone("x.test", {"@": {"A": "127.0.0.5"}})
        resolver = Resolver(
            [("127.0.0.1", silent.port), ("127.0.0.1", working.port)], timeout=1.0, cache=False
        )
        assert await resolver.a("x.test") == ["127.0.0.5"]

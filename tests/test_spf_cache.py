"""SPF verdicts are reused within the TTLs of the DNS answers they came from, and never
beyond: a busy MX checks the same senders again and again (docs/BENCHMARKS.md), but a
changed record must count as soon as a caching resolver would see it."""

from __future__ import annotations

import asyncio
import time

from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth.spf import SpfResult, check_identity
from tests.dnsserver import DnsTestServer

SENDER = "news@list.example"
INCLUDE = "v=spf1 include:_spf.list.example -all"


def zone(ttl: int, spf: str, extra: str = "") -> str:
    return (
        f"$TTL {ttl}\n"
        "@ SOA ns.list.example. hostmaster.list.example. 1 3600 600 86400 "
        f"{ttl}\n"
        f'@ TXT "{spf}"\n'
        f"{extra}"
    )


def resolver_for(dns_server: DnsTestServer) -> Resolver:
    return Resolver([(dns_server.host, dns_server.port)], timeout=2.0)


async def mailfrom(
    resolver: Resolver, ip: str = "192.0.2.10", helo: str = "out.list.example"
) -> SpfResult:
    return await check_identity(resolver, ip=ip, sender=SENDER, helo=helo, identity="mailfrom")


def spf_queries(dns_server: DnsTestServer) -> int:
    return sum(1 for name, rdtype in dns_server.queries if rdtype == "TXT")


def test_a_verdict_is_reused_within_the_ttl_without_any_query(dns_server: DnsTestServer) -> None:
    dns_server.set_zone(
        "list.example", zone(300, INCLUDE, '_spf TXT "v=spf1 ip4:192.0.2.0/24 -all"\n')
    )

    async def run() -> None:
        resolver = resolver_for(dns_server)
        assert (await mailfrom(resolver)).result == "pass"
        asked = spf_queries(dns_server)
        assert asked == 2  # the record and its include
        for _ in range(20):
            assert (await mailfrom(resolver)).result == "pass"
        assert spf_queries(dns_server) == asked
        # Another client address is another verdict (check_host reads <ip>), from the
        # cached records: still no query.
        assert (await mailfrom(resolver, ip="198.51.100.1")).result == "fail"
        assert spf_queries(dns_server) == asked
        # A new resolver (a restarted server) knows nothing.
        assert (await mailfrom(resolver_for(dns_server))).result == "pass"
        assert spf_queries(dns_server) == asked + 2

    asyncio.run(run())


def test_a_verdict_expires_with_the_shortest_ttl_it_used(dns_server: DnsTestServer) -> None:
    """The include has a 1 s TTL: after it runs out, the changed record is seen."""
    dns_server.set_zone(
        "list.example", zone(300, INCLUDE, '_spf 1 TXT "v=spf1 ip4:192.0.2.0/24 -all"\n')
    )

    async def run() -> None:
        resolver = resolver_for(dns_server)
        assert (await mailfrom(resolver)).result == "pass"
        dns_server.set_zone("list.example", zone(300, INCLUDE, '_spf 1 TXT "v=spf1 -all"\n'))
        assert (await mailfrom(resolver)).result == "pass"  # still within the TTL
        await asyncio.sleep(1.2)
        assert (await mailfrom(resolver)).result == "fail"

    asyncio.run(run())


def test_with_ttl_zero_every_check_asks_again(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("list.example", zone(0, "v=spf1 ip4:192.0.2.0/24 -all"))

    async def run() -> None:
        resolver = resolver_for(dns_server)
        assert (await mailfrom(resolver)).result == "pass"
        dns_server.set_zone("list.example", zone(0, "v=spf1 -all"))
        assert (await mailfrom(resolver)).result == "fail"

    asyncio.run(run())


def test_negative_answers_are_kept_for_the_soa_negative_ttl(dns_server: DnsTestServer) -> None:
    """The HELO identity of most senders has no SPF record: NODATA, kept for the SOA's
    negative TTL (RFC 2308), so it costs nothing either after the first message."""
    dns_server.set_zone("list.example", zone(300, "v=spf1 -all", "out A 192.0.2.10\n"))

    async def run() -> None:
        resolver = resolver_for(dns_server)

        async def helo() -> str:
            result = await check_identity(
                resolver,
                ip="192.0.2.10",
                sender="postmaster@out.list.example",
                helo="out.list.example",
                identity="helo",
            )
            return result.result

        assert await helo() == "none"
        asked = spf_queries(dns_server)
        started = time.monotonic()
        for _ in range(10):
            assert await helo() == "none"
        assert spf_queries(dns_server) == asked
        assert time.monotonic() - started < 1.0

    asyncio.run(run())


def test_temporary_errors_are_never_kept(dns_server: DnsTestServer) -> None:
    dns_server.set_zone("list.example", zone(300, "v=spf1 ip4:192.0.2.0/24 -all"))
    dns_server.fail("list.example", "servfail", "TXT")

    async def run() -> None:
        resolver = resolver_for(dns_server)
        assert (await mailfrom(resolver)).result == "temperror"
        dns_server.clear_failures()
        assert (await mailfrom(resolver)).result == "pass"

    asyncio.run(run())


def test_resolver_answers_from_its_cache_positive_nodata_and_nxdomain(
    dns_server: DnsTestServer,
) -> None:
    """DMARC discovery asks the same names for every message: within the TTL the
    resolver answers from its cache, with the same outcome as the first time."""
    from pillarbox.dns.resolver import DnsNoData, DnsNotFound

    dns_server.set_zone(
        "list.example", zone(300, "v=spf1 -all", '_dmarc TXT "v=DMARC1; p=none"\nout A 192.0.2.1\n')
    )

    async def run() -> None:
        resolver = resolver_for(dns_server)
        for _ in range(3):
            assert await resolver.txt("_dmarc.list.example") == ["v=DMARC1; p=none"]
            try:
                await resolver.txt("out.list.example")
                raise AssertionError("NODATA expected")
            except DnsNoData:
                pass
            try:
                await resolver.txt("_dmarc.nowhere.list.example")
                raise AssertionError("NXDOMAIN expected")
            except DnsNoData:
                raise AssertionError("NXDOMAIN is not NODATA") from None
            except DnsNotFound:
                pass
        assert spf_queries(dns_server) == 3

    asyncio.run(run())


def test_a_verdict_without_macros_serves_every_sender_of_the_domain(
    dns_server: DnsTestServer,
) -> None:
    dns_server.set_zone("list.example", zone(300, "v=spf1 ip4:192.0.2.0/24 -all"))

    async def run() -> None:
        resolver = resolver_for(dns_server)
        first = await check_identity(
            resolver, ip="192.0.2.10", sender="ann@list.example", helo="a.test", identity="mailfrom"
        )
        asked = spf_queries(dns_server)
        second = await check_identity(
            resolver, ip="192.0.2.10", sender="bob@list.example", helo="b.test", identity="mailfrom"
        )
        assert (first.result, second.result) == ("pass", "pass")
        assert second.sender == "bob@list.example"
        assert spf_queries(dns_server) == asked

    asyncio.run(run())


def test_a_verdict_with_a_local_part_macro_is_kept_per_sender(dns_server: DnsTestServer) -> None:
    """exists:%{l}._u.list.example: only ann has a record, so ann passes and bob fails,
    whatever was cached for the other one (RFC 7208 §7.2)."""
    dns_server.set_zone(
        "list.example",
        zone(300, "v=spf1 exists:%{l}._u.list.example -all", "ann._u A 127.0.0.2\n"),
    )

    async def run() -> None:
        resolver = resolver_for(dns_server)
        results = []
        for who in ("ann", "bob", "ann", "bob"):
            result = await check_identity(
                resolver, ip="192.0.2.10", sender=f"{who}@list.example", helo="x.test",
                identity="mailfrom",
            )  # fmt: skip
            results.append(result.result)
        assert results == ["pass", "fail", "pass", "fail"]

    asyncio.run(run())

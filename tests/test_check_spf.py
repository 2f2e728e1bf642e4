"""The check's SPF parser, lookup counter and evaluator, cross-checked with pyspf (through
pillarbox.mailauth.spf) on the same records from a real DNS server on loopback."""

from __future__ import annotations

import pytest

from pillarbox.check import spf
from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth.spf import check_identity
from tests.dnsserver import DnsTestServer

ZONE = "spf.test"


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 -all",
        "v=spf1",
        "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx/24 ~all",
        "v=spf1 a:mail.example.com/28//64 mx:example.com -all",
        "v=spf1 include:_spf.example.com redirect=other.example.com",
        "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
        "v=spf1 ptr:example.com ?all exp=explain.%{d}",
        "V=SPF1 IP4:192.0.2.1 -ALL",
        "v=spf1 foo=bar -all",
    ],
)
def test_parse_accepts(record: str) -> None:
    spf.parse(record)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=spf10 -all", "v=spf1"),
        ("spf1 -all", "v=spf1"),
        ("v=spf1 bogus", "unknown term"),
        ("v=spf1 ip4:2001:db8::1", "IPv6"),
        ("v=spf1 ip6:192.0.2.1", "IPv4"),
        ("v=spf1 ip4:192.0.2.1/33", "not an IP network"),
        ("v=spf1 ip4:300.1.1.1", "not an IP network"),
        ("v=spf1 include", "needs a domain"),
        ("v=spf1 include:", "needs a domain"),
        ("v=spf1 redirect=a.example redirect=b.example", "twice"),
        ("v=spf1 a:example.com/99", "prefix"),
        ("v=spf1 all:example.com", "no argument"),
        ("v=spf1 include:%{z}.example.com", "bad macro"),
        ("v=spf1 include:192.0.2.1", "not a domain"),
        ("v=spf1 ptr/24", "no prefix"),
    ],
)
def test_parse_rejects(record: str, problem: str) -> None:
    with pytest.raises(spf.SpfSyntaxError, match=problem):
        spf.parse(record)


def test_macro_expansion() -> None:
    who = spf.Identity("192.0.2.3", "strong-bad@email.example.com", "mx.example.org")
    # RFC 7208 §7.4 examples.
    assert spf.expand("%{s}", "email.example.com", who) == "strong-bad@email.example.com"
    assert spf.expand("%{d4}", "email.example.com", who) == "email.example.com"
    assert spf.expand("%{d2}", "email.example.com", who) == "example.com"
    assert spf.expand("%{dr}", "email.example.com", who) == "com.example.email"
    assert spf.expand("%{l-}", "email.example.com", who) == "strong.bad"
    assert spf.expand("%{lr-}", "email.example.com", who) == "bad.strong"
    assert spf.expand("%{ir}.%{v}._spf.%{d2}", "email.example.com", who) == (
        "3.2.0.192.in-addr._spf.example.com"
    )
    v6 = spf.Identity("2001:db8::cb01", "a@b.example", "h")
    assert spf.expand("%{ir}.%{v}", "b.example", v6) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6"
    )


ZONE_DATA = {
    "@": {"TXT": "v=spf1 ip4:192.0.2.10 include:inc.spf.test -all"},
    "inc": {"TXT": "v=spf1 a:host.spf.test mx ~all", "MX": "10 mx1"},
    "host": {"A": "192.0.2.20", "AAAA": "2001:db8::20"},
    "mx1": {"A": "192.0.2.30"},
    "redir": {"TXT": "v=spf1 redirect=inc.spf.test"},
    "neutral": {"TXT": "v=spf1 ip4:192.0.2.10"},
    "cidr": {"TXT": "v=spf1 a:host.spf.test/24 -all"},
    "exists": {"TXT": "v=spf1 exists:%{i}.allow.%{d} -all"},
    "192.0.2.40.allow.exists": {"A": "127.0.0.2"},
    "two": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "broken": {"TXT": "v=spf1 ip4:nope -all"},
    "noinc": {"TXT": "v=spf1 include:missing.spf.test -all"},
    "voids": {"TXT": "v=spf1 a:v1.spf.test a:v2.spf.test a:v3.spf.test -all"},
    "loop": {"TXT": "v=spf1 include:loop.spf.test -all"},
    "many": {"TXT": "v=spf1 " + " ".join(f"a:h{n}.spf.test" for n in range(11)) + " -all"},
    **{f"h{n}": {"A": "192.0.2.99"} for n in range(11)},
    "v6": {"TXT": "v=spf1 ip6:2001:db8::/64 -all"},
}

CASES = [
    ("", "192.0.2.10", "pass"),
    ("", "192.0.2.20", "pass"),  # through include:inc, a:host
    ("", "192.0.2.99", "fail"),
    ("inc", "192.0.2.20", "pass"),
    ("inc", "192.0.2.30", "pass"),
    ("inc", "192.0.2.99", "softfail"),
    ("inc", "2001:db8::20", "pass"),
    ("redir", "192.0.2.30", "pass"),
    ("redir", "192.0.2.99", "softfail"),
    ("neutral", "192.0.2.99", "neutral"),
    ("cidr", "192.0.2.77", "pass"),
    ("cidr", "192.0.3.77", "fail"),
    ("exists", "192.0.2.40", "pass"),
    ("exists", "192.0.2.41", "fail"),
    ("two", "192.0.2.10", "permerror"),
    ("broken", "192.0.2.10", "permerror"),
    ("noinc", "192.0.2.10", "permerror"),
    ("voids", "192.0.2.10", "permerror"),
    ("loop", "192.0.2.10", "permerror"),
    ("many", "192.0.2.1", "permerror"),
    ("v6", "2001:db8::5", "pass"),
    ("v6", "::ffff:192.0.2.10", "fail"),
    ("nosuch", "192.0.2.10", "none"),
]


@pytest.fixture
def resolver(dns_server: DnsTestServer) -> Resolver:
    dns_server.set_zone(ZONE, ZONE_DATA)
    return Resolver([(dns_server.host, dns_server.port)], timeout=1.0)


@pytest.mark.parametrize(("label", "ip", "expected"), CASES)
async def test_check_host_agrees_with_pyspf(
    resolver: Resolver, label: str, ip: str, expected: str
) -> None:
    domain = f"{label}.{ZONE}" if label else ZONE
    who = spf.Identity(ip, f"postmaster@{domain}", "helo.example")
    ours = await spf.check_host(resolver, domain, who)
    theirs = await check_identity(
        resolver, ip=ip, sender=f"postmaster@{domain}", helo="helo.example", identity="mailfrom"
    )
    assert ours.result == expected, ours.reason
    assert theirs.result == expected, theirs.explanation


async def test_ptr_mechanism(dns_server: DnsTestServer, resolver: Resolver) -> None:
    dns_server.set_zone("2.0.192.in-addr.arpa", {"50": {"PTR": f"host50.ptr.{ZONE}."}})
    dns_server.set_zone(
        f"ptr.{ZONE}", {"host50": {"A": "192.0.2.50"}, "@": {"TXT": "v=spf1 ptr -all"}}
    )
    who = spf.Identity("192.0.2.50", f"postmaster@ptr.{ZONE}", "h.example")
    assert (await spf.check_host(resolver, f"ptr.{ZONE}", who)).result == "pass"
    other = spf.Identity("192.0.2.51", f"postmaster@ptr.{ZONE}", "h.example")
    assert (await spf.check_host(resolver, f"ptr.{ZONE}", other)).result == "fail"


async def test_temperror_is_not_a_result_about_the_record(
    dns_server: DnsTestServer, resolver: Resolver
) -> None:
    dns_server.fail(f"inc.{ZONE}", "servfail", "TXT")
    who = spf.Identity("192.0.2.99", f"postmaster@{ZONE}", "h.example")
    verdict = await spf.check_host(resolver, ZONE, who)
    assert verdict.result == "temperror"
    count = await spf.count_lookups(resolver, ZONE, who)
    assert count.temp_errors and not count.errors


async def test_count_lookups_walks_the_whole_tree(resolver: Resolver) -> None:
    who = spf.Identity("192.0.2.1", f"postmaster@{ZONE}", "h.example")
    count = await spf.count_lookups(resolver, ZONE, who)
    # include:inc (1) + inside: a:host (1) + mx (1) = 3; ip4 costs nothing.
    assert count.total == 3
    assert count.by_include == {f"include:inc.{ZONE}": 3}
    many = await spf.count_lookups(resolver, f"many.{ZONE}", who)
    assert many.total == 11
    loop = await spf.count_lookups(resolver, f"loop.{ZONE}", who)
    assert any("deeper" in e for e in loop.errors)
    missing = await spf.count_lookups(resolver, f"noinc.{ZONE}", who)
    assert any("has no SPF record" in e for e in missing.errors)

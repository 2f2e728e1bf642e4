"""Inbound authentication end to end: real DNS (tests/dnsserver.py) serving good and broken
SPF, DKIM and DMARC records; the DMARC outcome table; temperror; forged A-R removal."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import authres
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth.inbound import AuthVerdict, authenticate, strip_authentication_results
from pillarbox.mailauth.keys import DkimKey, ensure_domain_keys
from pillarbox.mailauth.signing import sign
from tests.dnsserver import DnsTestServer

AUTHSERV = "mx.pillarbox.test"
GOOD_IP = "127.0.0.2"  # authorised by example.com's and other.test's SPF
BAD_IP = "127.0.0.99"


def message(from_header: str = "Alice <alice@example.com>", body: str = "Hi Bob.") -> bytes:
    return (
        f"From: {from_header}\r\n"
        "To: bob@pillarbox.test\r\n"
        "Subject: Lunch\r\n"
        "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <lunch@example.com>\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[DkimKey]]:
    base = tmp_path_factory.mktemp("keys")
    return {d: ensure_domain_keys(base, d) for d in ("example.com", "other.test")}


def zone(keys: list[DkimKey], spf: str, dmarc: str | None) -> dict[str, dict[str, str]]:
    data = {"@": {"TXT": spf}}
    data.update({f"{k.selector}._domainkey": {"TXT": k.txt_value()} for k in keys})
    if dmarc is not None:
        data["_dmarc"] = {"TXT": dmarc}
    return data


@pytest.fixture
def world(dns_server: DnsTestServer, keys: dict[str, list[DkimKey]]) -> DnsTestServer:
    """example.com: SPF for GOOD_IP, DKIM keys, DMARC p=reject. other.test: SPF + DKIM only.
    relay.test: the HELO name of GOOD_IP."""
    dns_server.set_zone(
        "example.com", zone(keys["example.com"], f"v=spf1 ip4:{GOOD_IP} -all", "v=DMARC1; p=reject")
    )
    dns_server.set_zone("other.test", zone(keys["other.test"], f"v=spf1 ip4:{GOOD_IP} -all", None))
    dns_server.set_zone("relay.test", {"@": {"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}})
    return dns_server


@pytest.fixture
def resolver(dns_server: DnsTestServer) -> Resolver:
    return Resolver([("127.0.0.1", dns_server.port)], timeout=0.5)


async def check(resolver: Resolver, data: bytes | Path, **kw: str) -> AuthVerdict:
    args = {"ip": GOOD_IP, "helo": "relay.test", "mail_from": "alice@example.com"} | kw
    return await authenticate(
        data,
        ip=args["ip"],
        helo=args["helo"],
        mail_from=args["mail_from"],
        resolver=resolver,
        authserv_id=AUTHSERV,
    )


def parse_ar(header: bytes) -> authres.AuthenticationResultsHeader:
    """RFC 8601 parsing by an independent implementation (the authres package)."""
    return authres.AuthenticationResultsHeader.parse(header.decode().replace("\r\n", ""))


async def test_well_authenticated_message(
    world: DnsTestServer, resolver: Resolver, keys: dict[str, list[DkimKey]]
) -> None:
    data = message()
    signed = sign(data, "example.com", keys["example.com"]) + data
    verdict = await check(resolver, signed)
    assert verdict.spf.result == "pass" and verdict.spf_helo.result == "pass"
    assert [(d.result, d.algorithm) for d in verdict.dkim] == [
        ("pass", "rsa-sha256"),
        ("pass", "ed25519-sha256"),
    ]
    assert verdict.dmarc.result == "pass" and verdict.dmarc.policy == "reject"
    assert verdict.disposition == "none" and not verdict.temperror
    assert verdict.arc.result == "none"
    header = verdict.header
    assert header.startswith(b"Authentication-Results: mx.pillarbox.test;")
    assert header.endswith(b"\r\n") and all(len(line) <= 78 for line in header.split(b"\r\n"))
    parsed = parse_ar(header)
    assert parsed.authserv_id == AUTHSERV
    methods = [(r.method, r.result) for r in parsed.results]
    assert ("spf", "pass") in methods and ("dmarc", "pass") in methods
    assert methods.count(("dkim", "pass")) == 2
    assert verdict.to_dict()["dmarc"]["result"] == "pass"


async def test_message_read_from_a_path(
    world: DnsTestServer, resolver: Resolver, tmp_path: Path
) -> None:
    path = tmp_path / "msg.eml"
    path.write_bytes(message())
    verdict = await check(resolver, path)
    assert verdict.spf.result == "pass"
    assert verdict.dkim == ()


# -- the DMARC outcome table ---------------------------------------------------------------

SPF_CASES = {
    "spf-aligned": {"mail_from": "alice@example.com", "ip": GOOD_IP},
    "spf-unaligned": {"mail_from": "bounce@other.test", "ip": GOOD_IP},
    "spf-fail": {"mail_from": "alice@example.com", "ip": BAD_IP},
}
DKIM_CASES = ("dkim-aligned", "dkim-unaligned", "dkim-none")
POLICIES = ("none", "quarantine", "reject")


@pytest.mark.parametrize(
    ("spf_case", "dkim_case", "policy"), list(itertools.product(SPF_CASES, DKIM_CASES, POLICIES))
)
async def test_dmarc_outcome_table(
    world: DnsTestServer,
    resolver: Resolver,
    keys: dict[str, list[DkimKey]],
    spf_case: str,
    dkim_case: str,
    policy: str,
) -> None:
    world.set_zone(
        "example.com",
        zone(keys["example.com"], f"v=spf1 ip4:{GOOD_IP} -all", f"v=DMARC1; p={policy}"),
    )
    data = message()
    if dkim_case == "dkim-aligned":
        data = sign(data, "example.com", keys["example.com"][:1]) + data
    elif dkim_case == "dkim-unaligned":
        data = sign(data, "other.test", keys["other.test"][:1]) + data
    verdict = await check(resolver, data, **SPF_CASES[spf_case])
    should_pass = spf_case == "spf-aligned" or dkim_case == "dkim-aligned"
    assert verdict.dmarc.result == ("pass" if should_pass else "fail")
    assert verdict.dmarc.policy == policy
    assert verdict.disposition == ("none" if should_pass else policy)
    assert verdict.dmarc.spf_aligned == (spf_case == "spf-aligned")
    assert verdict.dmarc.dkim_aligned == (dkim_case == "dkim-aligned")
    assert f"dmarc={verdict.dmarc.result}".encode() in verdict.header


async def test_relaxed_and_strict_alignment_and_subdomain_policy(
    world: DnsTestServer, resolver: Resolver, keys: dict[str, list[DkimKey]]
) -> None:
    data = message(from_header="news@news.example.com")
    signed = sign(data, "example.com", keys["example.com"][:1]) + data
    # The record is found at the organisational domain; relaxed alignment lets d=example.com
    # authenticate news.example.com.
    world.set_zone(
        "example.com",
        zone(keys["example.com"], f"v=spf1 ip4:{GOOD_IP} -all", "v=DMARC1; p=reject; sp=none"),
    )
    verdict = await check(resolver, signed, ip=BAD_IP)
    assert verdict.dmarc.result == "pass" and verdict.dmarc.record_domain == "example.com"
    # Strict DKIM alignment: d=example.com no longer matches news.example.com; sp=none applies.
    world.set_zone(
        "example.com",
        zone(
            keys["example.com"],
            f"v=spf1 ip4:{GOOD_IP} -all",
            "v=DMARC1; p=reject; sp=quarantine; adkim=s",
        ),
    )
    verdict = await check(resolver, signed, ip=BAD_IP)
    assert verdict.dmarc.result == "fail"
    assert (verdict.dmarc.policy, verdict.disposition) == ("quarantine", "quarantine")


async def test_pct_samples_downgrade_reject(
    world: DnsTestServer, resolver: Resolver, keys: dict[str, list[DkimKey]]
) -> None:
    world.set_zone(
        "example.com",
        zone(keys["example.com"], f"v=spf1 ip4:{GOOD_IP} -all", "v=DMARC1; p=reject; pct=10"),
    )
    args = {"ip": BAD_IP, "helo": "relay.test", "mail_from": "alice@example.com"}
    inside = await authenticate(
        message(), resolver=resolver, authserv_id=AUTHSERV, sample=lambda: 0.05, **args
    )
    outside = await authenticate(
        message(), resolver=resolver, authserv_id=AUTHSERV, sample=lambda: 0.5, **args
    )
    assert (inside.disposition, outside.disposition) == ("reject", "quarantine")


async def test_no_dmarc_record_means_none(world: DnsTestServer, resolver: Resolver) -> None:
    verdict = await check(resolver, message(from_header="x@other.test"), ip=BAD_IP)
    assert verdict.dmarc.result == "none" and verdict.disposition == "none"


@pytest.mark.parametrize(
    "record",
    ["v=DMARC1; p=bogus", "p=reject; v=DMARC1", "v=spf1 -all"],
)
async def test_broken_dmarc_records_apply_no_policy(
    world: DnsTestServer, resolver: Resolver, keys: dict[str, list[DkimKey]], record: str
) -> None:
    world.set_zone("example.com", zone(keys["example.com"], "v=spf1 -all", record))
    verdict = await check(resolver, message(), ip=BAD_IP)
    assert verdict.dmarc.result == "none" and verdict.disposition == "none"


async def test_two_dmarc_records_apply_no_policy(world: DnsTestServer, resolver: Resolver) -> None:
    world.set_zone("example.com", {"_dmarc": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}})
    verdict = await check(resolver, message(), ip=BAD_IP)
    assert verdict.dmarc.result == "none" and "2 DMARC records" in verdict.dmarc.reason


async def test_several_from_addresses_is_permerror(
    world: DnsTestServer, resolver: Resolver
) -> None:
    verdict = await check(resolver, message(from_header="a@example.com, b@other.test"))
    assert verdict.dmarc.result == "permerror"
    doubled = message().replace(b"To:", b"From: evil@other.test\r\nTo:")
    assert (await check(resolver, doubled)).dmarc.result == "permerror"


# -- broken DKIM and SPF records -------------------------------------------------------------


async def test_dkim_failures_are_told_apart(
    world: DnsTestServer, resolver: Resolver, keys: dict[str, list[DkimKey]]
) -> None:
    data = message()
    rsa_key, ed_key = keys["example.com"]
    signed = sign(data, "example.com", [rsa_key, ed_key]) + data
    tampered = signed.replace(b"Hi Bob.", b"Hi Bob!")
    verdict = await check(resolver, tampered, ip=BAD_IP)
    assert [d.result for d in verdict.dkim] == ["fail", "fail"]
    assert verdict.dmarc.result == "fail" and verdict.disposition == "reject"
    # Key withdrawn from DNS: permerror; key record garbled: permerror; SERVFAIL: temperror.
    zone_data = zone(keys["example.com"], "v=spf1 -all", "v=DMARC1; p=reject")
    del zone_data[f"{rsa_key.selector}._domainkey"]
    zone_data[f"{ed_key.selector}._domainkey"] = {"TXT": "v=DKIM1; k=ed25519; p=!!!"}
    world.set_zone("example.com", zone_data)
    verdict = await check(resolver, signed, ip=BAD_IP)
    assert [d.result for d in verdict.dkim] == ["permerror", "permerror"]
    world.fail(f"{rsa_key.selector}._domainkey.example.com")
    verdict = await check(resolver, signed, ip=BAD_IP)
    assert verdict.dkim[0].result == "temperror"
    assert verdict.dmarc.result == "temperror" and verdict.disposition == "none"
    assert verdict.temperror


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (f"v=spf1 ip4:{GOOD_IP} -all", "pass"),
        ("v=spf1 -all", "fail"),
        ("v=spf1 ~all", "softfail"),
        ("v=spf1 ?all", "neutral"),
        ("v=spf1 ip4:not-an-ip -all", "permerror"),
        (
            "v=spf1 " + " ".join(f"include:i{n}.example.com" for n in range(11)) + " -all",
            "permerror",
        ),
        ("v=spf1 a:v1.example.com a:v2.example.com a:v3.example.com -all", "permerror"),
        ("no spf here", "none"),
        ("v=spf1 mx -all", "pass"),
        ("v=spf1 a:mx.example.com -all", "pass"),
        ("v=spf1 redirect=relay.test", "pass"),
        ("v=spf1 include:missing.example.com -all", "permerror"),
    ],
)
async def test_spf_records(
    world: DnsTestServer, resolver: Resolver, record: str, expected: str
) -> None:
    includes = {f"i{n}": {"TXT": "v=spf1 ?all"} for n in range(11)}
    world.set_zone(
        "example.com",
        {"@": {"TXT": record, "MX": "10 mx.example.com."}, "mx": {"A": GOOD_IP}, **includes},
    )
    verdict = await check(resolver, message())
    assert verdict.spf.result == expected, verdict.spf
    assert f"spf={expected}".encode() in verdict.header


async def test_spf_for_an_ipv6_client(world: DnsTestServer, resolver: Resolver) -> None:
    world.set_zone("example.com", {"@": {"TXT": "v=spf1 ip6:2001:db8::/32 -all"}})
    assert (await check(resolver, message(), ip="2001:db8::25")).spf.result == "pass"
    assert (await check(resolver, message(), ip="2001:db9::25")).spf.result == "fail"
    world.set_zone("example.com", {"@": {"TXT": f"v=spf1 ip4:{GOOD_IP} -all"}})
    mapped = await check(resolver, message(), ip=f"::ffff:{GOOD_IP}")
    assert mapped.spf.result == "pass"


async def test_null_sender_uses_helo_identity(world: DnsTestServer, resolver: Resolver) -> None:
    verdict = await check(resolver, message(), mail_from="")
    assert verdict.spf.sender == "postmaster@relay.test" and verdict.spf.result == "pass"
    verdict = await check(resolver, message(), mail_from="", helo="[127.0.0.2]")
    assert verdict.spf.result == "none"


# -- temperror -----------------------------------------------------------------------------


async def test_dns_failures_are_temperror_never_reject(
    world: DnsTestServer, resolver: Resolver
) -> None:
    world.fail("example.com", rdtype="TXT")
    verdict = await check(resolver, message(), ip=BAD_IP)
    assert verdict.spf.result == "temperror"
    # SPF might have passed: DMARC cannot fail the message on a guess.
    assert (verdict.dmarc.result, verdict.disposition) == ("temperror", "none")
    world.fail("_dmarc.example.com")
    verdict = await check(resolver, message(), ip=BAD_IP)
    assert verdict.dmarc.result == "temperror" and verdict.disposition == "none"
    assert b"dmarc=temperror" in verdict.header and verdict.temperror


async def test_dns_timeouts_are_bounded(world: DnsTestServer, dns_server: DnsTestServer) -> None:
    import time

    resolver = Resolver([("127.0.0.1", dns_server.port)], timeout=0.3)
    for name in ("example.com", "_dmarc.example.com", "relay.test"):
        world.fail(name, "timeout")
    started = time.monotonic()
    verdict = await check(resolver, message(), ip=BAD_IP)
    assert time.monotonic() - started < 3
    assert verdict.spf.result == "temperror" and verdict.dmarc.result == "temperror"


# -- forged Authentication-Results -----------------------------------------------------------


def test_forged_authentication_results_are_removed() -> None:
    forged = (
        b"Authentication-Results: mx.pillarbox.test; dmarc=pass header.from=bank.example\r\n"
        b"Received: from somewhere\r\n"
        b"Authentication-Results: (sneaky comment) MX.Pillarbox.Test.;\r\n"
        b"\tdkim=pass header.d=bank.example\r\n"
        b'authentication-results: "mx.pillarbox.test"; spf=pass\r\n'
        b"Authentication-Results: relay.example; spf=pass smtp.mailfrom=example.org\r\n"
        b"Authentication-Results: mx.pillarbox.test.evil; spf=pass\r\n"
    )
    cleaned = strip_authentication_results(forged + message(), AUTHSERV)
    assert b"bank.example" not in cleaned
    assert cleaned.count(b"Authentication-Results:") == 2
    assert b"relay.example; spf=pass" in cleaned and b"mx.pillarbox.test.evil" in cleaned
    assert cleaned.endswith(message()[message().index(b"From:") :])
    # The body is never touched, even when it looks like a header.
    body_lookalike = message(body="Authentication-Results: mx.pillarbox.test; x=y")
    assert strip_authentication_results(body_lookalike, AUTHSERV) == body_lookalike


async def test_hostile_session_values_cannot_inject_header_syntax(
    world: DnsTestServer, resolver: Resolver
) -> None:
    verdict = await check(
        resolver, message(), mail_from='a"b\r\nX-Evil: 1;@example.com', helo="relay.test\r\nX: y"
    )
    lines = verdict.header.split(b"\r\n")
    assert all(line.startswith((b" ", b"Authentication-Results:")) for line in lines if line)
    parse_ar(verdict.header)


@pytest.mark.parametrize(
    "data", [b"", b"garbage without headers", b"From:\r\n\r\n", b"\xff\xfe:\n"]
)
async def test_malformed_messages_do_not_raise(
    world: DnsTestServer, resolver: Resolver, data: bytes
) -> None:
    verdict = await check(resolver, data)
    assert verdict.dmarc.result == "permerror"
    assert verdict.header.startswith(b"Authentication-Results: ")


HEADER_NAMES = [b"DKIM-Signature", b"ARC-Seal", b"ARC-Message-Signature",
                b"ARC-Authentication-Results", b"From", b"Authentication-Results"]  # fmt: skip
TAG_SOUP = st.lists(
    st.sampled_from(
        [
            b"v=1",
            b"i=1",
            b"a=rsa-sha256",
            b"a=ed25519-sha256",
            b"d=example.com",
            b"s=x",
            b"h=from",
            b"bh=",
            b"b=AAAA",
            b"cv=none",
            b"c=relaxed/relaxed",
            b"l=5",
            b"x=1",
            b"t=9999999999",
            b";",
            b"=",
            b"\r\n",
            b" ",
        ]
    ),
    max_size=12,
).map(lambda parts: b"; ".join(parts))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), TAG_SOUP | st.binary(max_size=60)), max_size=6
    ),
    body=st.binary(max_size=100),
)
def test_hostile_headers_never_raise(
    world: DnsTestServer, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    data = b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    resolver = Resolver([("127.0.0.1", world.port)], timeout=0.5)
    verdict = asyncio.run(check(resolver, data))
    assert verdict.dmarc.result in ("pass", "fail", "none", "temperror", "permerror")
    parse_ar(verdict.header)
    strip_authentication_results(data, AUTHSERV)

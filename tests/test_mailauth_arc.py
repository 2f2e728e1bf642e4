"""ARC chain validation (RFC 8617) of chains built hop by hop with dkimpy's arc_sign."""

from __future__ import annotations

import dkim
import pytest

from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth.dkimverify import verify_arc
from pillarbox.mailauth.inbound import authenticate
from pillarbox.mailauth.keys import DkimKey, ensure_domain_keys
from pillarbox.mailauth.signing import sign
from tests.dnsserver import DnsTestServer

ORIGINAL = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: list@lists.test\r\n"
    b"Subject: Meeting notes\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <notes@example.com>\r\n"
    b"\r\n"
    b"Notes attached.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DkimKey]:
    base = tmp_path_factory.mktemp("keys")
    return {
        d: ensure_domain_keys(base, d)[0] for d in ("example.com", "relay1.test", "relay2.test")
    }


@pytest.fixture
def resolver(dns_server: DnsTestServer, keys: dict[str, DkimKey]) -> Resolver:
    for domain, key in keys.items():
        dns_server.set_zone(
            domain,
            {
                "@": {"TXT": "v=spf1 ip4:127.0.0.2 -all"},
                f"{key.selector}._domainkey": {"TXT": key.txt_value()},
                "_dmarc": {"TXT": "v=DMARC1; p=reject"},
            },
        )
    return Resolver([("127.0.0.1", dns_server.port)], timeout=0.5)


def seal(message: bytes, key: DkimKey, arc_result: str) -> bytes:
    """One ARC hop: the relay's own Authentication-Results, then dkimpy's ARC set on top."""
    domain = key.domain
    stamped = (
        f"Authentication-Results: {domain}; dkim=pass header.d=example.com; arc={arc_result}\r\n"
    ).encode() + message
    arc_set = dkim.arc_sign(
        stamped,
        key.selector.encode(),
        domain.encode(),
        key.dkimpy_private_key(),
        domain.encode(),
        timestamp=1795600000,
    )
    assert arc_set, "dkimpy produced no ARC set"
    return b"".join(arc_set) + stamped


def signed_original(keys: dict[str, DkimKey]) -> bytes:
    return sign(ORIGINAL, "example.com", [keys["example.com"]]) + ORIGINAL


async def test_two_hop_chain_passes(resolver: Resolver, keys: dict[str, DkimKey]) -> None:
    chained = seal(
        seal(signed_original(keys), keys["relay1.test"], "none"), keys["relay2.test"], "pass"
    )
    result = await verify_arc(chained, resolver)
    assert (result.result, result.instances) == ("pass", 2), result.reason
    assert result.sealers == ("relay2.test", "relay1.test")


async def test_list_footer_breaks_dkim_but_arc_vouches(
    resolver: Resolver, keys: dict[str, DkimKey]
) -> None:
    hop1 = seal(signed_original(keys), keys["relay1.test"], "none")
    # A mailing list between the hops appends a footer, then seals what it saw (arc=pass).
    footer = hop1 + b"--\r\nTo unsubscribe, write to list-request@lists.test\r\n"
    hop2 = seal(footer, keys["relay2.test"], "pass")
    verdict = await authenticate(
        hop2,
        ip="127.0.0.2",
        helo="relay2.test",
        mail_from="bounces@relay2.test",
        resolver=resolver,
        authserv_id="mx.pillarbox.test",
    )
    assert [d.result for d in verdict.dkim] == ["fail"]
    assert verdict.arc.result == "pass" and verdict.arc.instances == 2
    assert b"arc=pass (i=2)" in verdict.header


async def test_change_after_the_last_seal_fails(
    resolver: Resolver, keys: dict[str, DkimKey]
) -> None:
    chained = seal(
        seal(signed_original(keys), keys["relay1.test"], "none"), keys["relay2.test"], "pass"
    )
    tampered = chained.replace(b"Notes attached.", b"Notes detached.")
    result = await verify_arc(tampered, resolver)
    assert result.result == "fail"


async def test_recorded_failure_ends_the_chain(
    resolver: Resolver, keys: dict[str, DkimKey]
) -> None:
    chained = seal(
        seal(signed_original(keys), keys["relay1.test"], "none"), keys["relay2.test"], "fail"
    )
    assert (await verify_arc(chained, resolver)).result == "fail"


async def test_chain_with_a_missing_set_fails(resolver: Resolver, keys: dict[str, DkimKey]) -> None:
    chained = seal(
        seal(signed_original(keys), keys["relay1.test"], "none"), keys["relay2.test"], "pass"
    )
    head, _, body = chained.partition(b"\r\n\r\n")
    lines = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n")
    without_first = [line for line in lines if not line.startswith(b"ARC-Seal: i=1;")]
    assert len(without_first) == len(lines) - 1
    broken = b"\r\n".join(without_first) + b"\r\n\r\n" + body
    assert (await verify_arc(broken, resolver)).result == "fail"


async def test_sealer_key_missing_or_unreachable(
    dns_server: DnsTestServer, resolver: Resolver, keys: dict[str, DkimKey]
) -> None:
    chained = seal(signed_original(keys), keys["relay1.test"], "none")
    assert (await verify_arc(chained, resolver)).result == "pass"
    dns_server.fail(keys["relay1.test"].dns_name)
    assert (await verify_arc(chained, resolver)).result == "temperror"
    dns_server.clear_failures()
    dns_server.set_zone("relay1.test", {"@": {"TXT": "v=spf1 -all"}})
    assert (await verify_arc(chained, resolver)).result == "fail"


async def test_no_chain_and_garbage_chain(resolver: Resolver) -> None:
    assert (await verify_arc(ORIGINAL, resolver)).result == "none"
    garbage = b"ARC-Seal: i=1; nonsense\r\nARC-Message-Signature: x\r\n" + ORIGINAL
    assert (await verify_arc(garbage, resolver)).result == "fail"

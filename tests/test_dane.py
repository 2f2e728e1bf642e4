"""DANE for outbound SMTP (RFC 7672).

Two halves:

- pure tests of the TLSA matching (pillarbox.queue.dane): every usage/selector/matching
  type combination, DANE-EE ignoring names and dates, DANE-TA chains and names;
- end to end against a signed zone served by knot behind a validating unbound (see
  tests/dnssec_world.py), with real SMTP peers on 127.0.0.x and the real server's queue:
  the certificate is checked, mismatches and missing STARTTLS are deferred with a "DANE:"
  reason and never sent in clear, an unsigned zone's TLSA is ignored, and a bogus TLSA
  RRset (SERVFAIL from the validator) defers the MX.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox import log
from pillarbox.dns.resolver import Resolver, Tlsa, parse_nameserver
from pillarbox.queue import dane
from pillarbox.queue.dane import DaneLookupFailed, DaneMismatch
from tests import pbserver
from tests.dnssec_world import DnssecWorld, WorldUnavailable
from tests.queuehelpers import enqueue, queue_entry, queue_settings, wait_for
from tests.smtppeer import SmtpPeer, free_port_on

NOW = dt.datetime.now(dt.UTC)

# -- certificates -----------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def issue(
    names: list[str],
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    cn: str | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A certificate for ``names`` (SAN dNSNames; none when empty), signed by ``issuer``
    (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or (names or ["x"])[0])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key)


def expected_data(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The association data computed independently of the code under test."""
    if selector == 0:
        blob = cert.public_bytes(serialization.Encoding.DER)
    else:
        blob = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return {0: blob, 1: hashlib.sha256(blob).digest(), 2: hashlib.sha512(blob).digest()}[mtype]


def tlsa_for(cert: x509.Certificate, usage: int, selector: int = 1, mtype: int = 1) -> Tlsa:
    return Tlsa(usage, selector, mtype, expected_data(cert, selector, mtype))


def zone_tlsa(record: Tlsa) -> str:
    return f"{dane.describe(record)} {record.data.hex()}"


def server_context(directory: Path, name: str, leaf: Issued, *chain: Issued) -> ssl.SSLContext:
    """A server context presenting ``leaf`` then ``chain`` (as a DANE-TA server must)."""
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(
        b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain))
    )
    key_path.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


# -- matching (pure) --------------------------------------------------------------------------

LEAF_CA = issue([], ca=True, cn="DANE Test CA")
OTHER_CA = issue([], ca=True, cn="DANE Test CA")  # same name, other key
LEAF = issue(["mx.dane.test"], LEAF_CA)
STRANGER = issue(["mx.dane.test"], OTHER_CA)


@pytest.mark.parametrize("usage", [dane.DANE_EE, dane.DANE_TA])
@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_every_selector_and_matching_type(usage: int, selector: int, mtype: int) -> None:
    # DANE-EE matches the leaf; DANE-TA the CA the server sends after it.
    target = LEAF if usage == dane.DANE_EE else LEAF_CA
    record = tlsa_for(target.cert, usage, selector, mtype)
    chain = [LEAF.der, LEAF_CA.der]
    assert dane.verify_chain(chain, [record], ["mx.dane.test"]) == record
    # The same parameters for another certificate (same names, other keys) must not match.
    with pytest.raises(DaneMismatch):
        dane.verify_chain([STRANGER.der, OTHER_CA.der], [record], ["mx.dane.test"])


def test_selector_spki_survives_reissue_but_full_certificate_does_not() -> None:
    # A renewed certificate on the same key still matches "3 1 1", not "3 0 1".
    renewed = Issued(
        x509.CertificateBuilder()
        .subject_name(LEAF.cert.subject)
        .issuer_name(LEAF_CA.cert.subject)
        .public_key(LEAF.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=90))
        .sign(LEAF_CA.key, hashes.SHA256()),
        LEAF.key,
    )
    assert dane.matches(tlsa_for(LEAF.cert, 3, 1, 1), renewed.der)
    assert not dane.matches(tlsa_for(LEAF.cert, 3, 0, 1), renewed.der)


def test_dane_ee_ignores_names_and_expiry() -> None:
    # RFC 7672 §3.1.1: the key is what is authenticated.
    expired = issue(["elsewhere.invalid"], not_after=NOW - dt.timedelta(days=1))
    record = tlsa_for(expired.cert, dane.DANE_EE)
    assert dane.verify_chain([expired.der], [record], ["mx.dane.test"]) == record


def test_dane_ta_checks_the_name() -> None:
    record = tlsa_for(LEAF_CA.cert, dane.DANE_TA, 0, 1)
    chain = [LEAF.der, LEAF_CA.der]
    assert dane.verify_chain(chain, [record], ["mx.dane.test"]) == record
    with pytest.raises(DaneMismatch, match=r"names mx\.dane\.test, not other\.dane\.test"):
        dane.verify_chain(chain, [record], ["other.dane.test"])
    # RFC 7672 §3.2.2: the TLSA base domain or the MX host name; either is enough.
    assert dane.verify_chain(chain, [record], ["base.dane.test", "mx.dane.test"]) == record


def test_dane_ta_wildcard_covers_one_label_only() -> None:
    wild = issue(["*.dane.test"], LEAF_CA)
    record = tlsa_for(LEAF_CA.cert, dane.DANE_TA)
    chain = [wild.der, LEAF_CA.der]
    assert dane.verify_chain(chain, [record], ["mx.dane.test"]) == record
    for name in ("dane.test", "a.mx.dane.test"):
        with pytest.raises(DaneMismatch):
            dane.verify_chain(chain, [record], [name])


def test_dane_ta_uses_the_cn_only_without_dns_sans() -> None:
    record = tlsa_for(LEAF_CA.cert, dane.DANE_TA)
    cn_only = issue([], LEAF_CA, cn="mx.dane.test")
    assert dane.verify_chain([cn_only.der, LEAF_CA.der], [record], ["mx.dane.test"]) == record
    san_wins = issue(["other.dane.test"], LEAF_CA, cn="mx.dane.test")
    with pytest.raises(DaneMismatch):
        dane.verify_chain([san_wins.der, LEAF_CA.der], [record], ["mx.dane.test"])


def test_dane_ta_checks_the_chain() -> None:
    record = tlsa_for(LEAF_CA.cert, dane.DANE_TA)
    # The anchor is sent, but the leaf was signed by another key of the same name.
    with pytest.raises(DaneMismatch, match="not signed by"):
        dane.verify_chain([STRANGER.der, LEAF_CA.der], [record], ["mx.dane.test"])
    # RFC 7672 §3.1.2: the server must send the anchor; a leaf alone proves nothing.
    with pytest.raises(DaneMismatch, match="no certificate in the chain"):
        dane.verify_chain([LEAF.der], [record], ["mx.dane.test"])
    expired = issue(["mx.dane.test"], LEAF_CA, not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(DaneMismatch, match="expired"):
        dane.verify_chain([expired.der, LEAF_CA.der], [record], ["mx.dane.test"])
    # An intermediate that is no CA cannot issue.
    not_ca = issue(["not-a-ca.dane.test"], LEAF_CA)
    below = issue(["mx.dane.test"], not_ca)
    with pytest.raises(DaneMismatch, match="not a CA"):
        dane.verify_chain([below.der, not_ca.der, LEAF_CA.der], [record], ["mx.dane.test"])


def test_dane_ta_through_an_intermediate() -> None:
    intermediate = issue([], LEAF_CA, ca=True, cn="DANE Test Intermediate")
    leaf = issue(["mx.dane.test"], intermediate)
    record = tlsa_for(LEAF_CA.cert, dane.DANE_TA, 1, 2)
    chain = [leaf.der, intermediate.der, LEAF_CA.der]
    assert dane.verify_chain(chain, [record], ["mx.dane.test"]) == record


def test_unusable_records() -> None:
    good = tlsa_for(LEAF.cert, dane.DANE_EE)
    unusable = [
        tlsa_for(LEAF.cert, dane.PKIX_EE),  # RFC 7672 §3.1.3
        tlsa_for(LEAF_CA.cert, dane.PKIX_TA),
        Tlsa(3, 2, 1, good.data),  # unknown selector
        Tlsa(3, 1, 3, good.data),  # unknown matching type
        Tlsa(3, 1, 1, good.data[:20]),  # a sha256 that is not 32 octets
        Tlsa(3, 1, 2, good.data),  # a "sha512" of 32 octets
    ]
    assert all(not dane.is_usable(r) for r in unusable)
    assert dane.usable([*unusable, good]) == (good,)
    # PKIX-EE data that would match is still not accepted under DANE rules.
    with pytest.raises(DaneMismatch, match="no usable"):
        dane.verify_chain([LEAF.der], unusable, ["mx.dane.test"])


def test_several_records_any_one_matches() -> None:
    # Key rollover: old and new keys are published together (RFC 7671 §8.1).
    records = [tlsa_for(STRANGER.cert, dane.DANE_EE), tlsa_for(LEAF.cert, dane.DANE_EE)]
    assert dane.verify_chain([LEAF.der], records, ["mx.dane.test"]) == records[1]
    with pytest.raises(DaneMismatch, match="no certificate"):
        dane.verify_chain([], records, ["mx.dane.test"])


# -- the DNSSEC world -----------------------------------------------------------------------


@dataclass
class World:
    dns: DnssecWorld
    certs: dict[str, ssl.SSLContext]
    port: int


HOSTS = {  # MX host (in dane.test unless dotted) -> its loopback address
    "mx-ee": "127.0.0.2",
    "mx-bad": "127.0.0.3",
    "mx-notls": "127.0.0.4",
    "mx-ta": "127.0.0.5",
    "mx-taname": "127.0.0.6",
    "mx-bogus": "127.0.0.7",
    "mx-unusable": "127.0.0.8",
    "mx.plain.test": "127.0.0.9",
    "mx-good2": "127.0.0.10",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("dane-world")
    ca = issue([], ca=True, cn="DANE World CA")
    # DANE-EE: a certificate with neither the right name nor valid dates.
    ee = issue(["elsewhere.invalid"], not_after=NOW - dt.timedelta(days=1))
    good2 = issue(["mx-good2.dane.test"])
    ta_leaf = issue(["mx-ta.dane.test"], ca)
    ta_wrong = issue(["somebody-else.dane.test"], ca)
    valid = issue(["mx-bad.dane.test"])
    certs = {
        "mx-ee": server_context(directory, "ee", ee),
        "mx-bad": server_context(directory, "bad", valid),
        "mx-ta": server_context(directory, "ta", ta_leaf, ca),
        "mx-taname": server_context(directory, "taname", ta_wrong, ca),
        "mx-unusable": server_context(directory, "unusable", valid),
        "mx-good2": server_context(directory, "good2", good2),
    }
    other = issue(["mx-bad.dane.test"])  # what mx-bad's TLSA names: not its certificate
    signed = "\n".join(
        [
            "ee IN MX 10 mx-ee",
            "bad IN MX 10 mx-bad",
            "fallback IN MX 10 mx-bad",
            "fallback IN MX 20 mx-good2",
            "notls IN MX 10 mx-notls",
            "ta IN MX 10 mx-ta",
            "taname IN MX 10 mx-taname",
            "bogus IN MX 10 mx-bogus",
            "unusable IN MX 10 mx-unusable",
            *(f"{h} IN A {ip}" for h, ip in HOSTS.items() if "." not in h),
            f"_25._tcp.mx-ee IN TLSA {zone_tlsa(tlsa_for(ee.cert, 3))}",
            f"_25._tcp.mx-bad IN TLSA {zone_tlsa(tlsa_for(other.cert, 3))}",
            f"_25._tcp.mx-good2 IN TLSA {zone_tlsa(tlsa_for(good2.cert, 3))}",
            f"_25._tcp.mx-notls IN TLSA {zone_tlsa(tlsa_for(other.cert, 3))}",
            f"_25._tcp.mx-ta IN TLSA {zone_tlsa(tlsa_for(ca.cert, 2, 0, 1))}",
            f"_25._tcp.mx-taname IN TLSA {zone_tlsa(tlsa_for(ca.cert, 2, 0, 1))}",
            f"_25._tcp.mx-bogus IN TLSA {zone_tlsa(tlsa_for(other.cert, 3))}",
            f"_25._tcp.mx-unusable IN TLSA {zone_tlsa(tlsa_for(valid.cert, 1))}",
        ]
    )
    unsigned = "\n".join(
        [
            "@ IN MX 10 mx",
            "mx IN A 127.0.0.9",
            # Would not match anything; an unsigned zone's TLSA must simply be ignored.
            f"_25._tcp.mx IN TLSA {zone_tlsa(tlsa_for(other.cert, 3))}",
        ]
    )
    dns = DnssecWorld(directory)
    dns.add_zone("dane.test", signed + "\n", bogus=frozenset({("_25._tcp.mx-bogus", "TLSA")}))
    dns.add_zone("plain.test", unsigned + "\n", signed=False)
    try:
        dns.start()
    except WorldUnavailable as exc:
        pytest.skip(f"no DNSSEC test world (knot + unbound): {exc}")
    try:
        yield World(dns, certs, free_port_on(*sorted(set(HOSTS.values()))))
    finally:
        dns.stop()


@pytest.fixture
def queue_log() -> Iterator[list[str]]:
    """The queue's log lines, formatted as in production."""
    lines: list[str] = []
    formatter = log.KeyValueFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    logger = logging.getLogger("pillarbox.queue")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def peers(world: World) -> Iterator[dict[str, SmtpPeer]]:
    made: dict[str, SmtpPeer] = {}
    for host, ip in HOSTS.items():
        name = host if "." in host else f"{host}.dane.test"
        peer = made[host] = SmtpPeer(ip, world.port, name=name)
        peer.starttls = world.certs.get(host)
    yield made
    # Each close waits for its serve_forever poll (0.5 s): close them all at once.
    closers = [threading.Thread(target=peer.close) for peer in made.values()]
    for thread in closers:
        thread.start()
    for thread in closers:
        thread.join(10)


@pytest.fixture
def running(tmp_path: Path, world: World) -> Iterator[pbserver.RunningServer]:
    settings = queue_settings(
        tmp_path, world.dns.resolver, world.port, {"dns": {"nameservers": [world.dns.resolver]}}
    )
    with pbserver.RunningServer(settings) as server:
        yield server


def deferral(running: pbserver.RunningServer, qid: str) -> str:
    entry = wait_for(
        lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
        what="a deferral",
    )
    assert entry["recipients"][0]["state"] == "queued"
    return str(entry["recipients"][0]["last_reply"])


def no_mail(peer: SmtpPeer) -> bool:
    return peer.messages == [] and not any(line.startswith("MAIL") for line in peer.log)


def test_dane_ee_match_is_delivered_and_logged(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer], queue_log: list[str]
) -> None:
    enqueue(running, ["bob@ee.dane.test"])
    (msg,) = wait_for(lambda: peers["mx-ee"].messages, what="delivery")
    assert msg.tls  # although the certificate is expired and for another name (§3.1.1)
    line = wait_for(lambda: [x for x in queue_log if 'event="data accepted"' in x])[0]
    assert 'dane="verified(3 1 1)"' in line
    assert "tls=TLSv1.3/TLS_" in line


def test_dane_mismatch_is_deferred_and_never_sent(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer]
) -> None:
    qid = enqueue(running, ["bob@bad.dane.test"])
    reply = deferral(running, qid)
    assert reply.startswith("4.7.5 DANE: the certificate of mx-bad.dane.test does not match")
    assert "_25._tcp.mx-bad.dane.test" in reply
    assert peers["mx-bad"].connections >= 1  # it was tried (TLS), and then given nothing
    assert no_mail(peers["mx-bad"])


def test_dane_mismatch_moves_on_to_the_next_mx(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer], queue_log: list[str]
) -> None:
    enqueue(running, ["bob@fallback.dane.test"])
    (msg,) = wait_for(lambda: peers["mx-good2"].messages, what="delivery to the second MX")
    assert msg.tls
    assert no_mail(peers["mx-bad"])
    failed = [x for x in queue_log if 'event="host failed"' in x and "mx-bad" in x]
    assert failed and "DANE" in failed[0]


def test_tlsa_without_starttls_is_deferred_never_plaintext(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer]
) -> None:
    qid = enqueue(running, ["bob@notls.dane.test"])
    reply = deferral(running, qid)
    assert reply.startswith("4.7.4 DANE: mx-notls.dane.test does not offer STARTTLS")
    assert no_mail(peers["mx-notls"])


def test_dane_ta_with_the_right_name_is_verified(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer], queue_log: list[str]
) -> None:
    enqueue(running, ["bob@ta.dane.test"])
    (msg,) = wait_for(lambda: peers["mx-ta"].messages, what="delivery")
    assert msg.tls
    line = wait_for(lambda: [x for x in queue_log if 'event="data accepted"' in x])[0]
    assert 'dane="verified(2 0 1)"' in line


def test_dane_ta_with_the_wrong_name_is_deferred(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer]
) -> None:
    qid = enqueue(running, ["bob@taname.dane.test"])
    reply = deferral(running, qid)
    assert reply.startswith("4.7.5 DANE:")
    assert "somebody-else.dane.test, not mx-taname.dane.test" in reply
    assert no_mail(peers["mx-taname"])


def test_bogus_tlsa_defers_the_mx_without_connecting(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer]
) -> None:
    qid = enqueue(running, ["bob@bogus.dane.test"])
    reply = deferral(running, qid)
    assert reply.startswith("4.7.5 DANE: TLSA lookup for _25._tcp.mx-bogus.dane.test failed")
    assert peers["mx-bogus"].connections == 0


def test_only_unusable_tlsa_still_requires_tls(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer], queue_log: list[str]
) -> None:
    enqueue(running, ["bob@unusable.dane.test"])
    (msg,) = wait_for(lambda: peers["mx-unusable"].messages, what="delivery")
    assert msg.tls
    line = wait_for(lambda: [x for x in queue_log if 'event="data accepted"' in x])[0]
    assert 'dane="encrypt(no usable TLSA)"' in line


def test_unsigned_zone_tlsa_is_ignored(
    running: pbserver.RunningServer, peers: dict[str, SmtpPeer], queue_log: list[str]
) -> None:
    # No STARTTLS, a TLSA record that matches nothing, no DNSSEC: plain opportunistic TLS,
    # so plaintext delivery, exactly as without DANE.
    enqueue(running, ["bob@plain.test"])
    (msg,) = wait_for(lambda: peers["mx.plain.test"].messages, what="delivery")
    assert not msg.tls
    connected = [x for x in queue_log if "event=connected" in x]
    assert connected and 'tls="no STARTTLS offered"' in connected[0]
    assert "dane=" not in connected[0]


# -- the policy lookups -----------------------------------------------------------------------


async def test_policy_states_from_the_validating_resolver(world: World) -> None:
    resolver = Resolver([parse_nameserver(world.dns.resolver)], timeout=1.0)
    ee = await dane.dane_policy(resolver, "mx-ee.dane.test")
    assert ee.state == dane.AUTHENTICATE
    assert ee.tlsa == "_25._tcp.mx-ee.dane.test"
    assert ee.names == ("mx-ee.dane.test",)
    assert (await dane.dane_policy(resolver, "mx-unusable.dane.test")).state == dane.ENCRYPT
    # Signed zone, proven absence of TLSA (secure NXDOMAIN): DANE does not apply.
    assert (await dane.dane_policy(resolver, "ns.dane.test")).state == dane.NONE
    assert (await dane.dane_policy(resolver, "mx.plain.test")).state == dane.NONE
    with pytest.raises(DaneLookupFailed, match="TLSA lookup"):
        await dane.dane_policy(resolver, "mx-bogus.dane.test")


async def test_no_ad_bit_no_dane(world: World) -> None:
    # knot itself is authoritative, not validating: it never sets AD, so the same signed
    # records give no DANE (the AD bit of a validating resolver is what DANE trusts).
    direct = Resolver([("127.0.0.1", world.dns.knot_port)], timeout=1.0)
    assert direct.trusts_ad
    policy = await dane.dane_policy(direct, "mx-ee.dane.test")
    assert policy.state == dane.NONE
    assert "not DNSSEC-signed" in policy.reason

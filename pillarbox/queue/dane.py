"""DANE for outbound SMTP (RFC 7672): which MX hosts must use TLS, and is it the right TLS?

For each MX host (never a smarthost or a domain literal, which have no TLSA base domain):

1. The host's address records must be DNSSEC-authenticated (RFC 7672 §2.2.2), else DANE
   does not apply and delivery is the usual opportunistic TLS.
2. Its TLSA RRset at ``_25._tcp.<host>`` (after a secure CNAME expansion of the host, the
   expanded name first, RFC 7672 §2.2.3) decides:
   - a failed lookup (SERVFAIL, e.g. bogus signatures, or a timeout) is neither "records"
     nor "none": the host is skipped for now, 4.7.5 (RFC 7672 §2.2);
   - a secure NXDOMAIN/NODATA, or an unsigned answer: DANE does not apply;
   - secure records, at least one usable: STARTTLS is mandatory and the certificate must
     match one of the usable records (:func:`verify_chain`);
   - secure records, none usable: STARTTLS is still mandatory, without authentication
     (RFC 7672 §2.2: the server has said it does TLS).
3. DANE takes precedence over MTA-STS for that host (RFC 8461 §2): the TLSA records, not
   the WebPKI, authenticate it.

Usable records (RFC 7672 §3.1): usage DANE-TA(2) or DANE-EE(3); PKIX-TA(0)/PKIX-EE(1) are
unusable for SMTP (§3.1.3), as are unknown selectors and matching types (RFC 6698 §4.1).
DANE-EE authenticates the leaf key or certificate alone: no name check, no expiry check
(§3.1.1). DANE-TA names a trust anchor that the server must send in its chain (§3.1.2):
the chain up to it is checked (signatures, validity dates) and the leaf must carry one of
the reference identifiers (§3.2.2: the TLSA base domain and the MX host name; §3.2.3:
DNS-ID SANs, else the CN; a wildcard only as the whole left-most label).

The matching functions are pure (certificates in, verdict out) so every combination is
unit-tested without any network; :func:`dane_policy` does the lookups.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pillarbox.dns.resolver import DnsTempError, Resolver, Tlsa
from pillarbox.dns.tlsa import host_security, lookup_tlsa, tlsa_name

PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2
_DIGEST_SIZE = {MATCH_SHA256: 32, MATCH_SHA512: 64}

# DanePolicy.state
NONE = "none"  # DANE does not apply: opportunistic TLS as without it
AUTHENTICATE = "authenticate"  # mandatory TLS, certificate checked against the records
ENCRYPT = "encrypt"  # mandatory TLS, nothing usable to check it with (RFC 7672 §2.2)


class DaneMismatch(Exception):
    """The server's certificate chain matches none of the usable TLSA records."""


class DaneLookupFailed(Exception):
    """The DNS could not say whether DANE applies: do not use this MX now (RFC 7672 §2.2)."""


@dataclass(frozen=True)
class DanePolicy:
    """What DANE requires of one MX host."""

    state: str = NONE
    tlsa: str = ""  # the TLSA owner name the records came from
    records: tuple[Tlsa, ...] = ()  # the usable ones (AUTHENTICATE only)
    names: tuple[str, ...] = ()  # reference identifiers for DANE-TA (RFC 7672 §3.2.2)
    reason: str = ""

    @property
    def mandatory(self) -> bool:
        return self.state != NONE


NO_DANE = DanePolicy(NONE, reason="not applicable")


def describe(record: Tlsa) -> str:
    """``"3 1 1"``: usage, selector and matching type as the zone file writes them."""
    return f"{record.usage} {record.selector} {record.mtype}"


# -- matching (pure) ------------------------------------------------------------------------


def is_usable(record: Tlsa) -> bool:
    """RFC 7672 §3.1: DANE-TA/DANE-EE with a known selector and matching type, and a
    digest of the right size (a truncated one could never match)."""
    if record.usage not in (DANE_TA, DANE_EE):
        return False
    if record.selector not in (SELECTOR_CERT, SELECTOR_SPKI):
        return False
    if record.mtype == MATCH_FULL:
        return bool(record.data)
    return len(record.data) == _DIGEST_SIZE.get(record.mtype, -1)


def usable(records: Sequence[Tlsa]) -> tuple[Tlsa, ...]:
    return tuple(r for r in records if is_usable(r))


def association_data(cert_der: bytes, selector: int, mtype: int) -> bytes:
    """What a TLSA record with ``selector``/``mtype`` holds for this certificate
    (RFC 6698 §2.1.2-§2.1.3): the whole DER certificate or its SubjectPublicKeyInfo,
    as is or as SHA-256/SHA-512. ValueError for unknown parameters or a bad certificate."""
    if selector == SELECTOR_CERT:
        selected = cert_der
    elif selector == SELECTOR_SPKI:
        cert = x509.load_der_x509_certificate(cert_der)
        selected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise ValueError(f"unknown TLSA selector {selector}")
    if mtype == MATCH_FULL:
        return selected
    if mtype == MATCH_SHA256:
        return hashlib.sha256(selected).digest()
    if mtype == MATCH_SHA512:
        return hashlib.sha512(selected).digest()
    raise ValueError(f"unknown TLSA matching type {mtype}")


def matches(record: Tlsa, cert_der: bytes) -> bool:
    try:
        return association_data(cert_der, record.selector, record.mtype) == record.data
    except ValueError:
        return False


def name_matches(pattern: str, name: str) -> bool:
    """RFC 7672 §3.2.3 (RFC 6125 §6.4.3): exact, or "*" as the whole left-most label
    standing for exactly one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    first, dot, rest = name.partition(".")
    return bool(first) and bool(dot) and rest == pattern[2:] and "*" not in rest


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS-ID SANs, or the subject CNs when there are none (RFC 7672 §3.2.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if names:
        return [str(n) for n in names]
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def verify_chain(
    chain: Sequence[bytes],
    records: Sequence[Tlsa],
    names: Sequence[str],
    now: dt.datetime | None = None,
) -> Tlsa:
    """The usable record that authenticates ``chain`` (DER, leaf first, as sent);
    DaneMismatch saying why none does."""
    if not chain:
        raise DaneMismatch("the server sent no certificate")
    records = usable(records)
    for record in records:
        # RFC 7672 §3.1.1: DANE-EE binds the key; names and dates are not checked.
        if record.usage == DANE_EE and matches(record, chain[0]):
            return record
    problems: list[str] = []
    if any(r.usage == DANE_EE for r in records):
        problems.append("the certificate matches no DANE-EE(3) record")
    anchors = [r for r in records if r.usage == DANE_TA]
    if anchors:
        found, problem = _via_trust_anchor(chain, anchors, names, now or _now())
        if found is not None:
            return found
        problems.append(problem)
    raise DaneMismatch("; ".join(problems) or "no usable TLSA record")


def _via_trust_anchor(
    chain: Sequence[bytes], anchors: Sequence[Tlsa], names: Sequence[str], now: dt.datetime
) -> tuple[Tlsa | None, str]:
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return None, f"unreadable certificate in the chain ({exc})"
    problem = "no certificate in the chain matches a DANE-TA(2) record"
    for depth, der in enumerate(chain):
        for record in anchors:
            if not matches(record, der):
                continue
            trouble = _chain_problem(certs, depth, now) or _name_problem(certs[0], names)
            if trouble is None:
                return record, ""
            problem = f"DANE-TA({describe(record)}) trust anchor found, but {trouble}"
    return None, problem


def _chain_problem(certs: Sequence[x509.Certificate], depth: int, now: dt.datetime) -> str | None:
    """Why the chain from the leaf up to the trust anchor at ``depth`` is not sound: each
    certificate below the anchor signed by the next one, which is a CA, and in date (the
    anchor's own dates are the TLSA record's business, RFC 7671 §5.2.2)."""
    for i in range(depth):
        child, issuer = certs[i], certs[i + 1]
        if not _is_ca(issuer):
            return f"certificate {i + 1} in the chain is not a CA"
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return f"certificate {i} is not signed by certificate {i + 1}"
        if not child.not_valid_before_utc <= now <= child.not_valid_after_utc:
            return f"certificate {i} is expired or not yet valid"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _name_problem(leaf: x509.Certificate, names: Sequence[str]) -> str | None:
    presented = cert_names(leaf)
    if any(name_matches(p, n) for p in presented for n in names):
        return None
    return f"the certificate names {', '.join(presented) or 'nothing'}, not {', '.join(names)}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- lookups --------------------------------------------------------------------------------


async def dane_policy(resolver: Resolver, host: str, port: int = 25) -> DanePolicy:
    """What DANE requires for SMTP to ``host``; DaneLookupFailed when DNS cannot tell."""
    if not resolver.trusts_ad:
        return DanePolicy(NONE, reason="the resolver is not trusted to validate DNSSEC")
    try:
        security = await host_security(resolver, host)
    except DnsTempError as exc:
        raise DaneLookupFailed(f"address lookup for {host} failed: {exc}") from None
    if not security.secure:
        return DanePolicy(NONE, reason="the MX host's addresses are not DNSSEC-signed")
    # RFC 7672 §2.2.3: a securely expanded CNAME's target is tried first, then the name.
    bases = list(dict.fromkeys([security.canonical, host]))
    for base in bases:
        try:
            found = await lookup_tlsa(resolver, base, port)
        except DnsTempError as exc:
            raise DaneLookupFailed(
                f"TLSA lookup for {tlsa_name(base, port)} failed: {exc}"
            ) from None
        if found.secure and found.records:
            return _policy_for(found.name, found.records, (base, host))
    return DanePolicy(NONE, reason="no DNSSEC-signed TLSA records")


def _policy_for(owner: str, records: Sequence[Tlsa], names: Sequence[str]) -> DanePolicy:
    good = usable(records)
    names = tuple(dict.fromkeys(names))
    if not good:
        return DanePolicy(ENCRYPT, owner, (), names, reason="TLSA records, none usable")
    return DanePolicy(AUTHENTICATE, owner, good, names, reason="TLSA records")

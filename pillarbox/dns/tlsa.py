"""DNSSEC-aware lookups for DANE (RFC 7672 §2.2): an MX host's address security and TLSA.

DANE hangs on the DNSSEC status of each answer, not only on its records, so these helpers
return both (the AD bit as :class:`pillarbox.dns.resolver.Resolver` reports it from a
trusted validating resolver):

- :func:`host_security`: are the MX host's A/AAAA records authenticated, and what is its
  name after CNAMEs? RFC 7672 §2.2.2: DANE applies only to hosts with secure addresses.
- :func:`lookup_tlsa`: the TLSA RRset at ``_25._tcp.<host>`` with its status; a proven
  absence (secure NXDOMAIN/NODATA) and an unsigned answer come back as data, any other
  failure (SERVFAIL, as for bogus signatures, or a timeout) as DnsTempError, which the
  caller must treat as "this MX cannot be used now" (RFC 7672 §2.2).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pillarbox.dns.resolver import DnsNotFound, Resolver, SecureAnswer, Tlsa


@dataclass(frozen=True, slots=True)
class HostSecurity:
    """``secure``: every address RRset of the host was DNSSEC-authenticated."""

    secure: bool
    canonical: str  # the host name after (authenticated or not) CNAMEs


@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """The TLSA RRset at ``name``; ``records`` is empty when there is none."""

    name: str
    records: tuple[Tlsa, ...]
    secure: bool  # the records (or their absence) were DNSSEC-authenticated


def tlsa_name(host: str, port: int = 25) -> str:
    """The TLSA owner name for SMTP to ``host`` (RFC 6698 §3, RFC 7672 §2.2.3)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


async def host_security(resolver: Resolver, host: str) -> HostSecurity:
    """DNSSEC status of ``host``'s addresses. A host with no addresses is not secure (there
    is nothing to protect); DnsTempError (e.g. a bogus A RRset) propagates."""
    results = await asyncio.gather(
        resolver.query_secure(host, "A"),
        resolver.query_secure(host, "AAAA"),
        return_exceptions=True,
    )
    answers: list[SecureAnswer] = []
    for result in results:
        if isinstance(result, SecureAnswer):
            answers.append(result)
        elif isinstance(result, DnsNotFound):
            continue  # that family has no records: nothing of it will be used
        elif isinstance(result, BaseException):
            raise result
    if not answers:
        return HostSecurity(False, host)
    return HostSecurity(all(a.secure for a in answers), answers[0].canonical or host)


async def lookup_tlsa(resolver: Resolver, host: str, port: int = 25) -> TlsaLookup:
    """The TLSA records for SMTP to ``host``; DnsTempError when the lookup failed."""
    name = tlsa_name(host, port)
    try:
        answer = await resolver.query_secure(name, "TLSA")
    except DnsNotFound as exc:
        return TlsaLookup(name, (), exc.secure)
    records = tuple(
        Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert)) for r in answer.records
    )
    return TlsaLookup(name, records, answer.secure)

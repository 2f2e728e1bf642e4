"""DMARC (RFC 7489): record discovery, identifier alignment and the policy to apply.

Parsing (``parse_record``, ``from_domains``) is separate from evaluation (``evaluate``), and
DNS is confined to ``discover``, so the outcome table is testable as a pure function.

The organisational domain comes from the public suffix list bundled with publicsuffix2
(RFC 7489 §3.2; no network access at run time).
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from publicsuffix2 import PublicSuffixList

from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver

POLICIES = ("none", "quarantine", "reject")

_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


# Pure functions asked the same questions for every message from a sender: remembered.
@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registrable domain: ``mail.example.co.uk`` -> ``example.co.uk`` (RFC 7489 §3.2)."""
    global _psl
    with _psl_lock:
        if _psl is None:
            _psl = PublicSuffixList()
        psl = _psl
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    # An unknown TLD gets the list's implicit "*" rule (publicsuffix2 in non-strict mode
    # would call "example.test" a public suffix of "test"), so its suffix is one label.
    suffix = psl.get_tld(name, wildcard=True, strict=True) or labels[-1]
    suffix_labels = len(str(suffix).split("."))
    if len(labels) <= suffix_labels:
        return name
    return ".".join(labels[-(suffix_labels + 1) :])


# -- the record --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: str  # p=
    subdomain_policy: str  # sp= (defaults to p=)
    adkim: str = "r"  # "r" relaxed | "s" strict
    aspf: str = "r"
    pct: int = 100
    rua: str = ""
    raw: str = ""


class DmarcRecordError(ValueError):
    pass


@functools.lru_cache(maxsize=1024)
def parse_record(text: str) -> DmarcRecord:
    """Parse a ``v=DMARC1`` record (RFC 7489 §6.3-6.4). Unknown tags are ignored (§6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    first = text.split(";", 1)[0].partition("=")[0].strip().lower()
    if tags.get("v") != "DMARC1" or first != "v":
        raise DmarcRecordError("not a DMARC1 record (v=DMARC1 must come first)")
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        # §6.6.3 step 6: a bad or missing p= with a valid rua= is treated as p=none.
        if tags.get("rua"):
            policy = "none"
        else:
            raise DmarcRecordError(f"bad or missing p= ({tags.get('p', '')!r})")
    subdomain_policy = tags.get("sp", "").lower()
    if subdomain_policy not in POLICIES:
        subdomain_policy = policy
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain_policy,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=pct,
        rua=tags.get("rua", ""),
        raw=text,
    )


# -- the From domain ---------------------------------------------------------------------


def from_domains(from_values: Sequence[str]) -> list[str]:
    """Domains of the RFC5322.From addresses (§3.1.1); the caller wants exactly one."""
    return [domain for value in from_values for domain in _domains_in(value)]


@functools.lru_cache(maxsize=4096)
def _domains_in(value: str) -> tuple[str, ...]:
    domains: list[str] = []
    for _name, address in email.utils.getaddresses([value]):
        local, at, domain = address.rpartition("@")
        if at and local and domain:
            domains.append(domain.lower().rstrip("."))
        else:
            domains.append("")
    return tuple(domains)


# -- evaluation --------------------------------------------------------------------------


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 §3.1.1, §3.1.2)."""
    identifier = identifier.lower().rstrip(".")
    if not identifier:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    from_domain: str = ""
    policy: str = "none"  # the published policy that applies (p= or sp=), "none" if none
    disposition: str = "none"  # what to do: none | quarantine | reject (after pct=)
    record_domain: str = ""  # where the record was found
    reason: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False


@dataclass(frozen=True, slots=True)
class Discovery:
    record: DmarcRecord | None
    record_domain: str = ""
    temp_error: str = ""
    error: str = ""


def evaluate(
    from_domain: str,
    discovery: Discovery,
    *,
    spf_result: str,
    spf_domain: str,
    dkim_passes: Sequence[str],
    dkim_temperror: bool = False,
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """Apply RFC 7489 §6.6 to already discovered data. ``dkim_passes`` are the d= of the
    DKIM signatures that passed; ``spf_domain`` is the domain SPF authenticated;
    ``dkim_temperror`` says a signature could not be checked for a DNS failure."""
    if discovery.temp_error:
        return DmarcResult("temperror", from_domain, reason=discovery.temp_error)
    record = discovery.record
    if record is None:
        return DmarcResult("none", from_domain, reason=discovery.error or "no DMARC record")
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf)
    dkim_ok = any(aligned(d, from_domain, record.adkim) for d in dkim_passes)
    # §6.6.3 step 3 / §6.3 sp=: the subdomain policy applies when the record was found at
    # the organisational domain rather than at the From domain itself.
    policy = record.policy if discovery.record_domain == from_domain else record.subdomain_policy
    if spf_ok or dkim_ok:
        result, disposition, reason = "pass", "none", ""
    elif spf_result == "temperror" or dkim_temperror:
        # A check that might have passed could not run: no policy on a guess (§6.6.2 allows
        # deferring); the inbound path accepts temperror and notes it.
        result, disposition, reason = "temperror", "none", "SPF or DKIM hit a DNS failure"
    else:
        result, disposition = "fail", policy
        reason = "neither SPF nor DKIM authenticated an identifier aligned with the From domain"
        # §6.6.4: a message outside the pct= sample gets the next less strict policy.
        if record.pct < 100 and sample() * 100 >= record.pct:
            disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult(
        result,
        from_domain,
        policy,
        disposition,
        discovery.record_domain,
        reason,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_ok,
    )


# -- DNS ---------------------------------------------------------------------------------


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    try:
        texts = await resolver.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return []
    return _dmarc_records(texts)


def _dmarc_records(texts: Sequence[str]) -> list[str]:
    # §6.6.3 step 2: only records that start with v=DMARC1 count.
    return [t for t in texts if re.match(r"^\s*v\s*=\s*DMARC1\s*(;|$)", t)]


def _policy_domains(from_domain: str) -> Iterable[str]:
    """Where the policy record is looked for, in order: the From domain, then its
    organisational domain (§6.6.3 steps 1 and 3)."""
    return dict.fromkeys((from_domain, organizational_domain(from_domain)))


def _found_at(domain: str, records: list[str]) -> Discovery | None:
    """What the DMARC records at ``domain`` decide, or None to look at the next domain."""
    if len(records) > 1:
        # §6.6.3 step 5: more than one record means no record.
        return Discovery(None, domain, error=f"{len(records)} DMARC records at _dmarc.{domain}")
    if records:
        try:
            return Discovery(parse_record(records[0]), domain)
        except DmarcRecordError as exc:
            return Discovery(None, domain, error=f"_dmarc.{domain}: {exc}")
    return None


async def discover(resolver: Resolver, from_domain: str) -> Discovery:
    """Find the policy record: at the From domain, else at its organisational domain."""
    for domain in _policy_domains(from_domain):
        try:
            records = await _records_at(resolver, domain)
        except DnsTempError as exc:
            return Discovery(None, domain, temp_error=str(exc))
        found = _found_at(domain, records)
        if found is not None:
            return found
    return Discovery(None)


def discover_cached(resolver: Resolver, from_domain: str) -> Discovery | None:
    """What :func:`discover` would find, from the resolver's cache alone; None when a
    lookup is needed. The inbound path asks for the same few policies all day."""
    for domain in _policy_domains(from_domain):
        texts = resolver.cached_txt(f"_dmarc.{domain}")
        if texts is None:
            return None
        found = _found_at(domain, _dmarc_records(texts))
        if found is not None:
            return found
    return Discovery(None)

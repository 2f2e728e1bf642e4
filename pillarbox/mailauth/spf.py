"""SPF (RFC 7208) for the MAIL FROM and HELO identities, with pyspf over our async resolver.

pyspf follows ``include:`` and ``redirect=`` recursively, so its lookups cannot be known in
advance and prefetched. It runs in a worker thread (a pool of its own) instead, and every
DNS query it makes is sent back to the event loop through
:class:`pillarbox.dns.resolver.SyncLookup`: the loop is never blocked, and the configured
nameservers and per-query timeout apply. pyspf itself enforces the limits of RFC 7208
§4.6.4 (10 DNS-querying mechanisms, 2 void lookups, 10 MX/PTR names), and ``querytime``
bounds the whole evaluation.

pyspf looks up DNS through its module-level ``DNSLookup`` function; we replace that once with
a dispatcher that uses the lookup function of the current thread (a thread-local set while
our check runs) and falls back to pyspf's own for any other caller.

Cost on a busy MX: the same senders send again and again. A lookup the resolver's cache
can answer is answered in the worker thread (no trip through the loop), and a finished
verdict is kept, keyed by everything check_host() reads (client IP, sender, HELO name),
until the first TTL of the DNS answers it was derived from runs out — so a cached verdict
is exactly what a fresh evaluation against caching DNS would give. Temporary errors are
never kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import spf

from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver, SyncLookup

# RFC 7208 §4.6.4: "at least 20 seconds" for the whole evaluation.
TOTAL_TIME = 20.0

# pyspf threads spend their time waiting for DNS answers from the loop, so they get their own
# pool rather than the default executor's few threads that hashing work needs.
_EXECUTOR = ThreadPoolExecutor(max_workers=32, thread_name_prefix="spf")
_log = logging.getLogger("pillarbox.mailauth.spf")

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome for one identity (RFC 7208 §2.6)."""

    result: str  # one of SPF_RESULTS
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain checked ("" if there was none)
    sender: str  # the identity as checked: "user@domain" or "postmaster@helo"
    explanation: str = ""


LookupFn = Callable[[str, str], list[tuple[tuple[str, str], Any]]]

# Verdicts kept per resolver (one per server); bounded, the least recently used go first.
VERDICT_CACHE_SIZE = 10_000


class VerdictCache:
    """check_host() verdicts by (ip, sender, helo), each until its DNS TTLs run out."""

    def __init__(self, size: int = VERDICT_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, str, str]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[str, str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, result, explanation = entry
        if expires <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result, explanation

    def put(self, key: tuple[str, str, str], expires: float, result: str, explanation: str) -> None:
        if expires <= time.time() or result == "temperror":
            return
        self._entries[key] = (expires, result, explanation)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


_verdicts: weakref.WeakKeyDictionary[Resolver, VerdictCache] = weakref.WeakKeyDictionary()


def verdicts_of(resolver: Resolver) -> VerdictCache:
    cache = _verdicts.get(resolver)
    if cache is None:
        cache = _verdicts[resolver] = VerdictCache()
    return cache


_thread_lookup = threading.local()
_pyspf_lookup = spf.DNSLookup


def _dispatch_lookup(name: str, qtype: str, strict: Any = True, timeout: Any = 30) -> Any:
    lookup: LookupFn | None = getattr(_thread_lookup, "fn", None)
    if lookup is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return lookup(name, qtype)


spf.DNSLookup = _dispatch_lookup


class _Expiry:
    """The earliest expiry of the DNS answers one evaluation used, and whether any TXT
    record it read had a macro (RFC 7208 §7): without one, the verdict cannot depend on
    the sender's local part or the HELO name, only on the client IP and the domain."""

    def __init__(self) -> None:
        self.at = float("inf")
        self.macros = False


def _pyspf_answers(bridge: SyncLookup, expiry: _Expiry) -> LookupFn:
    """A pyspf-style lookup: [((name, qtype), value), ...]; [] for NXDOMAIN/NODATA."""

    def lookup(name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        if qtype == "SPF":
            return []  # RFC 7208 §3.1: type 99 is obsolete, never queried
        try:
            records, expires = bridge.lookup(name, qtype)
        except DnsNotFound:  # not a valid DNS name
            expiry.at = min(expiry.at, time.time())
            return []
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        expiry.at = min(expiry.at, expires)
        key = (name, qtype)
        if qtype in ("A", "AAAA"):
            return [(key, str(r.address)) for r in records]
        if qtype == "MX":
            return [(key, (int(r.preference), _text(r.exchange))) for r in records]
        if qtype == "PTR":
            return [(key, _text(r.target)) for r in records]
        if qtype == "TXT":
            if any(b"%" in part for r in records for part in r.strings):
                expiry.macros = True
            return [(key, tuple(r.strings)) for r in records]
        return []

    return lookup


def _text(name: Any) -> str:
    return str(name.to_text(omit_final_dot=True))


@functools.lru_cache(maxsize=4096)
def _valid_ip(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; SPF's ip4: needs the v4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def _domain_of(sender: str) -> str:
    return sender.rpartition("@")[2].lower().rstrip(".")


def _looks_like_domain(name: str) -> bool:
    # An address literal or a bare word is no identity to check (RFC 7208 §2.3).
    return "." in name and not name.startswith("[") and not name.replace(".", "").isdigit()


def _run_pyspf(
    bridge: SyncLookup, ip: str, sender: str, helo: str, timeout: float
) -> tuple[str, str, _Expiry]:
    """(result, explanation, until when and how widely the result may be reused)."""
    expiry = _Expiry()
    _thread_lookup.fn = _pyspf_answers(bridge, expiry)
    try:
        query = spf.query(i=ip, s=sender, h=helo, timeout=timeout, querytime=TOTAL_TIME)
        result, _code, explanation = query.check()
        return result, explanation, expiry
    finally:
        _thread_lookup.fn = None


async def check_identity(
    resolver: Resolver, *, ip: str, sender: str, helo: str, identity: str
) -> SpfResult:
    """check_host() for one identity; never raises for DNS or record problems."""
    domain = _domain_of(sender)
    if not ip:
        return SpfResult("none", identity, domain, sender, "no client IP address to check")
    if not domain or not _looks_like_domain(domain):
        return SpfResult("none", identity, domain, sender, "no domain to check")
    try:
        client = _valid_ip(ip)
    except ValueError as exc:
        return SpfResult("permerror", identity, domain, sender, str(exc))
    verdicts = verdicts_of(resolver)
    known = _known(verdicts, client, sender, domain, helo)
    if known is not None:
        return SpfResult(known[0], identity, domain, sender, known[1])
    loop = asyncio.get_running_loop()
    bridge = SyncLookup(resolver, loop)
    try:
        result, explanation, expiry = await loop.run_in_executor(
            _EXECUTOR, _run_pyspf, bridge, client, sender, helo, resolver.timeout
        )
    except ValueError as exc:
        return SpfResult("permerror", identity, domain, sender, str(exc))
    except Exception as exc:  # pyspf on hostile input: a bad record, never a crash
        _log.warning("SPF check of %r raised %r", sender, exc)
        return SpfResult("permerror", identity, domain, sender, f"SPF evaluation failed: {exc}")
    result = str(result).lower()
    if result not in SPF_RESULTS:
        result = "permerror"
    _remember(verdicts, client, sender, domain, helo, expiry, result, str(explanation or ""))
    return SpfResult(result, identity, domain, sender, str(explanation or ""))


def _keys(
    client: str, sender: str, domain: str, helo: str
) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """Everything check_host() reads (RFC 7208 §4.1): <ip>, <sender> as given (macros
    expand its local part, §7.2) and the HELO name (%{h}); and the key of a verdict that
    used no macro, which only <ip> and the domain decide (every sender of a company)."""
    return (client, sender, helo.lower()), (client, "@" + domain, "")


def _known(
    verdicts: VerdictCache, client: str, sender: str, domain: str, helo: str
) -> tuple[str, str] | None:
    exact, shared = _keys(client, sender, domain, helo)
    return verdicts.get(exact) or verdicts.get(shared)


def _remember(
    verdicts: VerdictCache,
    client: str,
    sender: str,
    domain: str,
    helo: str,
    expiry: _Expiry,
    result: str,
    explanation: str,
) -> None:
    exact, shared = _keys(client, sender, domain, helo)
    verdicts.put(shared if not expiry.macros else exact, expiry.at, result, explanation)


def _both_known(
    resolver: Resolver, ip: str, sender: str, helo_sender: str, helo: str
) -> tuple[SpfResult, SpfResult] | None:
    """Both verdicts from the cache, or None if either must be evaluated."""
    try:
        client = _valid_ip(ip)
    except ValueError:
        return None
    verdicts = verdicts_of(resolver)
    results = []
    for identity, who in (("mailfrom", sender or helo_sender), ("helo", helo_sender)):
        domain = _domain_of(who)
        known = _known(verdicts, client, who, domain, helo)
        if known is None:
            return None
        results.append(SpfResult(known[0], identity, domain, who, known[1]))
    return results[0], results[1]


def _identities(helo: str, mail_from: str) -> tuple[str, str, str]:
    """(HELO name, postmaster@HELO, MAIL FROM address) as the checks compare them."""
    helo_name = helo.strip().lower().rstrip(".")
    return (
        helo_name,
        f"postmaster@{helo_name}",
        mail_from.strip().removeprefix("<").removesuffix(">"),
    )


def known_spf(
    resolver: Resolver, *, ip: str, helo: str, mail_from: str
) -> tuple[SpfResult, SpfResult] | None:
    """What :func:`check_spf` would answer, when both verdicts are still remembered
    (synchronous: the caller then needs no task for SPF); None when they must be checked."""
    helo_name, helo_sender, sender = _identities(helo, mail_from)
    return _both_known(resolver, ip, sender, helo_sender, helo_name)


async def check_spf(
    resolver: Resolver, *, ip: str, helo: str, mail_from: str
) -> tuple[SpfResult, SpfResult]:
    """(MAIL FROM result, HELO result), checked concurrently.

    RFC 7208 §2.4: with a null reverse-path the MAIL FROM identity is ``postmaster@HELO``,
    so both results then concern the HELO domain.
    """
    helo_name, helo_sender, sender = _identities(helo, mail_from)
    known = _both_known(resolver, ip, sender, helo_sender, helo_name)
    if known is not None:
        return known  # the usual case for a repeat sender: no tasks, no threads
    helo_check = check_identity(
        resolver, ip=ip, sender=helo_sender, helo=helo_name, identity="helo"
    )
    if not sender:
        helo_result = await helo_check
        return dataclasses.replace(helo_result, identity="mailfrom"), helo_result
    mailfrom_result, helo_result = await asyncio.gather(
        check_identity(resolver, ip=ip, sender=sender, helo=helo_name, identity="mailfrom"),
        helo_check,
    )
    return mailfrom_result, helo_result

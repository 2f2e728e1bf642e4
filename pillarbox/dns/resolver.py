"""One async DNS resolver for the whole server, over dnspython's ``dns.asyncresolver``.

Every lookup Pillarbox makes (MX for delivery, SPF/DKIM/DMARC for inbound checks, PTR and
DNSBLs for ``check``, TLSA/MTA-STS names) goes through :class:`Resolver`, built once from
``Settings.dns``::

    resolver = Resolver.from_settings(settings.dns)
    await resolver.txt("_dmarc.example.com")      # ["v=DMARC1; p=reject"]
    await resolver.mx("example.com")              # [(10, "mx.example.com")]

Names are always treated as absolute (no search list: a mail server must never append the
host's own domain to a name taken from a message). Each call is bounded by the configured
timeout as a whole, so a dead nameserver costs at most ``timeout`` seconds per lookup.

Outcomes are told apart with exceptions, because SPF, DMARC and delivery all treat them
differently (RFC 7208 §4.4, RFC 7489 §6.6.3, RFC 5321 §5.1):

- :class:`DnsNotFound`  the name does not exist (NXDOMAIN);
- :class:`DnsNoData`    the name exists but has no records of that type (subclass of
  DnsNotFound, so ``except DnsNotFound`` covers both "nothing there" cases);
- :class:`DnsTempError` timeout, SERVFAIL, REFUSED or a network error: try again later.

A lookup that returns records returns a non-empty list; it never returns ``[]``.

DNSSEC: every query asks for the AD bit (RFC 6840 §5.7) and :meth:`Resolver.query_secure`
reports it, for DANE (RFC 7672). Pillarbox does not validate signatures itself: like
Postfix's ``smtp_dns_support_level = dnssec`` it trusts the AD bit of its nameservers, which
must therefore be a *validating* resolver on a trusted path (unbound or knot-resolver on the
same host is the usual choice). AD is believed only from nameservers named in ``[dns]
nameservers`` or, without them, from system nameservers that are all on loopback: an AD bit
that crossed a network unprotected proves nothing (RFC 4035 §4.9.3).

:class:`SyncLookup` lets synchronous libraries (pyspf, which follows includes recursively
and so cannot be prefetched) run in a worker thread while their DNS queries still go through
this resolver on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from pillarbox.config import DnsSettings

T = TypeVar("T")

# Room for a 2048-bit DKIM key plus a second one in one UDP answer (DNS flag day 2020).
EDNS_PAYLOAD = 1232
CACHE_SIZE = 4096
# A TXT record of more than this is not something mail authentication needs; refuse it
# rather than hand megabytes to a parser.
MAX_TXT_LENGTH = 16384


class DnsError(Exception):
    """A lookup that did not produce records; ``name`` and ``rdtype`` say which one.

    ``secure`` is True for an NXDOMAIN/NODATA that a trusted validating resolver
    authenticated (AD bit): a proven "nothing there", as DANE needs (RFC 7672 §2.2)."""

    def __init__(
        self, message: str, *, name: str = "", rdtype: str = "", secure: bool = False
    ) -> None:
        super().__init__(message)
        self.name = name
        self.rdtype = rdtype
        self.secure = secure


class DnsNotFound(DnsError):
    """NXDOMAIN: the name does not exist (or is not a valid DNS name at all)."""


class DnsNoData(DnsNotFound):
    """The name exists but holds no records of the asked type (NOERROR, empty answer)."""


class DnsTempError(DnsError):
    """Timeout, SERVFAIL, REFUSED or a network error: the answer is unknown for now."""


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SecureAnswer:
    """Records with their DNSSEC status: ``secure`` is the AD bit of a trusted resolver."""

    records: tuple[Any, ...]
    secure: bool
    canonical: str  # the owner name after CNAMEs (lower case, no trailing dot)


def parse_nameserver(value: str) -> tuple[str, int]:
    """``"127.0.0.1:5353"``, ``"[::1]:53"``, ``"::1"`` or ``"192.0.2.1"`` -> (ip, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, "53"
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"nameserver must be an IP address, got {value!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad nameserver port in {value!r}")
    return address, int(port)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _absolute(name: str) -> dns.name.Name:
    """Parse ``name`` as an absolute DNS name; invalid names count as non-existent.
    Cached: the same few names are asked for every message (dnspython names are
    immutable)."""
    try:
        return dns.name.from_text(name.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsNotFound(f"not a valid DNS name: {name!r} ({exc})", name=name) from None


def _host(name: dns.name.Name) -> str:
    """Lower-case text form without the trailing dot ("" for the root, as in a null MX)."""
    return name.to_text(omit_final_dot=True).lower().rstrip(".")


class Resolver:
    """Async stub resolver talking to the configured nameservers (else the system's)."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        *,
        timeout: float = 3.0,
        cache: bool = True,
    ) -> None:
        self.timeout = timeout
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # No /etc/resolv.conf: a local caching resolver is the usual thing to have.
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        resolver.search = []
        resolver.use_search_by_default = False
        # Ask for the AD bit (RFC 6840 §5.7); a validating resolver then says whether the
        # answer was DNSSEC-authenticated. Without DO we get no signatures, only the verdict.
        resolver.flags = dns.flags.RD | dns.flags.AD
        self.trusts_ad = bool(nameservers) or all(
            _is_loopback(str(getattr(ns, "address", ns))) for ns in resolver.nameservers
        )
        # Each try gets half the budget, so a lost UDP packet is retried (or the second
        # nameserver asked) before the whole lookup gives up at ``timeout``.
        resolver.timeout = max(timeout / 2, 0.1)
        resolver.lifetime = timeout
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        if cache:
            resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self._resolver = resolver

    @classmethod
    def from_settings(cls, settings: DnsSettings, *, cache: bool = True) -> Resolver:
        servers = [parse_nameserver(ns) for ns in settings.nameservers]
        return cls(servers, timeout=settings.timeout, cache=cache)

    @property
    def nameservers(self) -> list[str]:
        return [str(ns) for ns in self._resolver.nameservers]

    async def query(self, name: str, rdtype: str) -> list[Any]:
        """The rdata of ``name``/``rdtype`` (CNAMEs followed); raises a DnsError otherwise."""
        hit = self._cache_entry(name, rdtype)
        if hit is not None:
            # Answered by the cache without dnspython's resolution machinery (a task, a
            # Resolution, name parsing): DMARC discovery asks the same names per message.
            records, _, nxdomain = hit
            if records:
                return records
            if nxdomain:
                raise DnsNotFound(f"{name}: no such domain", name=name, rdtype=rdtype)
            raise DnsNoData(f"{name}: no {rdtype} records", name=name, rdtype=rdtype)
        answer = await self._resolve(name, rdtype)
        records = list(answer)
        if not records:
            raise DnsNoData(f"{name}: no {rdtype} records", name=name, rdtype=rdtype)
        return records

    def cached(self, name: str, rdtype: str) -> tuple[list[Any], float] | None:
        """What the cache knows of ``name``/``rdtype`` and when that expires (``time.time()``):
        the records, or [] for a cached NXDOMAIN/NODATA (kept for the SOA's negative TTL,
        RFC 2308 §5); None when the cache does not know.

        Synchronous and thread-safe (dnspython's LRUCache takes a lock), so a worker thread
        can answer from the cache without a round trip through the event loop."""
        hit = self._cache_entry(name, rdtype)
        return None if hit is None else (hit[0], hit[1])

    def _cache_entry(self, name: str, rdtype: str) -> tuple[list[Any], float, bool] | None:
        """(records, expiry, is NXDOMAIN) from dnspython's cache, keyed as it stores them:
        answers and NODATA by (name, type), NXDOMAIN by (name, ANY)."""
        cache = self._resolver.cache
        if cache is None:
            return None
        try:
            qname = _absolute(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, ValueError):
            return None
        answer = cache.get((qname, qtype, dns.rdataclass.IN))
        if answer is not None:
            return (list(answer) if answer.rrset is not None else []), answer.expiration, False
        nxdomain = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
        if nxdomain is not None and nxdomain.response.rcode() == dns.rcode.NXDOMAIN:
            return [], nxdomain.expiration, True
        return None

    async def query_secure(self, name: str, rdtype: str) -> SecureAnswer:
        """Like :meth:`query`, also telling whether the answer is DNSSEC-authenticated.

        NXDOMAIN/NODATA raise DnsNotFound/DnsNoData with ``secure`` set when the denial
        itself was authenticated. ``secure`` is never True from an untrusted resolver."""
        answer = await self._resolve(name, rdtype)
        records = tuple(answer)
        secure = self._authenticated(answer.response)
        if not records:
            raise DnsNoData(f"{name}: no {rdtype} records", name=name, rdtype=rdtype, secure=secure)
        return SecureAnswer(records, secure, _host(answer.canonical_name))

    def _authenticated(self, response: dns.message.Message | None) -> bool:
        return self.trusts_ad and response is not None and bool(response.flags & dns.flags.AD)

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer:
        qname = _absolute(name)
        try:
            return await self._resolver.resolve(qname, rdtype, search=False, lifetime=self.timeout)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())
            secure = bool(responses) and all(self._authenticated(r) for r in responses)
            raise DnsNotFound(
                f"{name}: no such domain", name=name, rdtype=rdtype, secure=secure
            ) from None
        except dns.resolver.NoAnswer as exc:
            secure = self._authenticated(exc.kwargs.get("response"))
            raise DnsNoData(
                f"{name}: no {rdtype} records", name=name, rdtype=rdtype, secure=secure
            ) from None
        except dns.resolver.NoNameservers as exc:
            # Every server answered SERVFAIL/REFUSED or was unreachable.
            raise DnsTempError(f"{name} {rdtype}: {exc}", name=name, rdtype=rdtype) from None
        except dns.exception.Timeout:
            raise DnsTempError(
                f"{name} {rdtype}: timed out after {self.timeout:g}s", name=name, rdtype=rdtype
            ) from None
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel) as exc:
            raise DnsNotFound(f"not a valid DNS name: {name!r} ({exc})", name=name) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}", name=name, rdtype=rdtype) from None

    async def txt(self, name: str) -> list[str]:
        """Each TXT record as one string (its character-strings concatenated, RFC 7208 §3.3)."""
        return [_decode_txt(b"".join(r.strings)) for r in await self.query(name, "TXT")]

    def cached_txt(self, name: str) -> list[str] | None:
        """:meth:`txt` from the cache alone: the strings ([] for a cached NXDOMAIN or
        NODATA), or None when only a lookup can tell."""
        hit = self._cache_entry(name, "TXT")
        return None if hit is None else [_decode_txt(b"".join(r.strings)) for r in hit[0]]

    async def txt_bytes(self, name: str) -> list[bytes]:
        """Like :meth:`txt` without decoding, for parsers that must see the raw octets."""
        return [b"".join(r.strings)[:MAX_TXT_LENGTH] for r in await self.query(name, "TXT")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, host) sorted by preference; a null MX (RFC 7505) has host ""."""
        records = await self.query(name, "MX")
        return sorted((int(r.preference), _host(r.exchange)) for r in records)

    async def a(self, name: str) -> list[str]:
        return [str(r.address) for r in await self.query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(ipaddress.IPv6Address(r.address)) for r in await self.query(name, "AAAA")]

    async def addresses(self, name: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``name``; DnsNoData only if it has neither."""
        results = await asyncio.gather(self.a(name), self.aaaa(name), return_exceptions=True)
        found: list[str] = []
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                found.extend(result)
        if found:
            return found
        for error in errors:
            if not isinstance(error, DnsNotFound):
                raise error
        raise errors[0]

    async def ptr(self, ip: str) -> list[str]:
        """Reverse names of ``ip`` (lower case, no trailing dot)."""
        try:
            reverse = dns.reversename.from_address(ip)
        except (dns.exception.SyntaxError, ValueError):
            raise DnsNotFound(f"not an IP address: {ip!r}", name=ip, rdtype="PTR") from None
        return [_host(r.target) for r in await self.query(reverse.to_text(), "PTR")]

    async def tlsa(self, name: str) -> list[Tlsa]:
        records = await self.query(name, "TLSA")
        return [Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert)) for r in records]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _decode_txt(raw: bytes) -> str:
    # TXT is octets; mail-auth records are ASCII, so anything else is kept visible but inert.
    return raw[:MAX_TXT_LENGTH].decode("utf-8", errors="replace")


class SyncLookup:
    """Blocking calls into :class:`Resolver` for code running in a worker thread.

    The queries still run on the event loop (``loop``), so a synchronous library such as
    pyspf, run with ``asyncio.to_thread``, never blocks the loop and still uses the
    configured nameservers and timeouts. Calling these methods on the loop thread itself
    would deadlock, so that raises RuntimeError instead.
    """

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop) -> None:
        self.resolver = resolver
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("SyncLookup called on the event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            # The resolver bounds each query; the extra second only guards a stuck loop.
            return future.result(timeout=self.resolver.timeout + 1.0)
        except TimeoutError:
            future.cancel()
            raise DnsTempError("DNS lookup did not finish (event loop busy)") from None

    def query(self, name: str, rdtype: str) -> list[Any]:
        return self.run(self.resolver.query(name, rdtype))

    def lookup(self, name: str, rdtype: str) -> tuple[list[Any], float]:
        """(records, expiry): the records ([] for NXDOMAIN/NODATA) and the ``time.time()``
        until which anything derived from them may be cached (now, if they are not cached).
        Answered from the cache without waking the event loop when it knows (a busy MX asks
        the same SPF records for every message). DnsTempError when the answer is unknown."""
        hit = self.resolver.cached(name, rdtype)
        if hit is not None:
            return hit
        try:
            records = self.run(self.resolver.query(name, rdtype))
        except DnsNotFound:
            records = []
        stored = self.resolver.cached(name, rdtype)  # the TTL the query just cached with
        return records, stored[1] if stored is not None else time.time()

"""SPF for the deliverability check: a parser, a static lookup counter and check_host().

The inbound path verifies SPF with pyspf (``pillarbox.mailauth.spf``). The check needs more
than a verdict: *why* a record is broken, and how many DNS lookups it costs in total, so an
operator sees "11 lookups (limit 10): include:a.example 4, include:b.example 6" before the
first receiver answers permerror. So this module parses the record itself and evaluates it
over the async :class:`~pillarbox.dns.resolver.Resolver`.

- :func:`parse` is pure: the RFC 7208 §12 grammar, raising :class:`SpfSyntaxError`.
- :func:`count_lookups` walks every include/redirect (not stopping at a match) and counts
  the terms that cost a DNS query (§4.6.4: include, a, mx, ptr, exists, redirect).
- :func:`check_host` is the §4 evaluation for one client IP: pass, fail, softfail,
  neutral, none, temperror or permerror, enforcing the 10-lookup and 2-void-lookup limits.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pillarbox.dns.resolver import DnsError, DnsNotFound, DnsTempError, Resolver

T = TypeVar("T")

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4
MAX_MX_OR_PTR_NAMES = 10  # RFC 7208 §4.6.4
MAX_RECORD_LENGTH = 4096  # far above any sane record; bounds the parser's work
MAX_DEPTH = 20  # include/redirect nesting the static counter follows (loops end here)

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
LOOKUP_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}
_MECHANISM_RE = re.compile(
    r"^(?P<q>[-+~?]?)(?P<name>all|include|a|mx|ptr|ip4|ip6|exists)"
    r"(?::(?P<arg>[^/]*))?(?P<cidr>/.*)?$",
    re.IGNORECASE,
)
_MODIFIER_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)$")
_MACRO_RE = re.compile(
    r"%(?:\{(?P<letter>[slodiphcrtvSLODIPHCRTV])(?P<digits>\d*)(?P<r>[rR]?)(?P<delims>[-.+,/_=]*)\}|(?P<esc>[%_-]))"
)
_CIDR4_RE = re.compile(r"^/(\d{1,2})$")
_DUAL_CIDR_RE = re.compile(r"^(?:/(\d{1,2}))?(?://(\d{1,3}))?$")


class SpfSyntaxError(ValueError):
    """The record does not follow RFC 7208 §12; the message says where."""


@dataclass(frozen=True)
class Term:
    qualifier: str  # "+", "-", "~" or "?"
    mechanism: str  # all, include, a, mx, ptr, ip4, ip6, exists
    argument: str = ""  # domain-spec or network; "" when absent
    cidr4: int = 32
    cidr6: int = 128

    def __str__(self) -> str:
        text = ("" if self.qualifier == "+" else self.qualifier) + self.mechanism
        argument = self.argument
        if self.mechanism in ("ip4", "ip6"):
            argument = argument.removesuffix("/32" if self.mechanism == "ip4" else "/128")
        return text + (f":{argument}" if argument else "")


@dataclass(frozen=True)
class SpfRecord:
    terms: tuple[Term, ...]
    redirect: str | None = None
    exp: str | None = None


def is_spf(text: str) -> bool:
    """RFC 7208 §4.5: "v=spf1" followed by a space or the end of the record."""
    lower = text.lower()
    return lower == "v=spf1" or lower.startswith("v=spf1 ")


def parse(text: str) -> SpfRecord:
    if len(text) > MAX_RECORD_LENGTH:
        raise SpfSyntaxError(f"record longer than {MAX_RECORD_LENGTH} characters")
    if not is_spf(text):
        raise SpfSyntaxError('does not start with "v=spf1"')
    terms: list[Term] = []
    modifiers: dict[str, str] = {}
    for word in text.split(" ")[1:]:
        if not word:
            continue
        if (m := _MECHANISM_RE.match(word)) is not None:
            terms.append(_mechanism(word, m))
        elif (m := _MODIFIER_RE.match(word)) is not None:
            name = m["name"].lower()
            if name in modifiers and name in ("redirect", "exp"):
                raise SpfSyntaxError(f"{name}= appears twice (RFC 7208 §6)")
            _check_macros(m["value"], word)
            modifiers[name] = m["value"]
        else:
            raise SpfSyntaxError(f"unknown term {word!r}")
    for name in ("redirect", "exp"):
        if name in modifiers and not modifiers[name]:
            raise SpfSyntaxError(f"{name}= needs a domain")
    return SpfRecord(tuple(terms), modifiers.get("redirect"), modifiers.get("exp"))


def _mechanism(word: str, m: re.Match[str]) -> Term:
    qualifier = m["q"] or "+"
    name = m["name"].lower()
    arg = m["arg"]
    cidr = m["cidr"] or ""
    if name == "all":
        if arg is not None or cidr:
            raise SpfSyntaxError(f"{word!r}: 'all' takes no argument")
        return Term(qualifier, name)
    if name in ("ip4", "ip6"):
        return _ip_term(word, qualifier, name, arg or "", cidr)
    if name in ("include", "exists") and not arg:
        raise SpfSyntaxError(f"{word!r}: {name} needs a domain")
    if arg is not None:
        if not arg:
            raise SpfSyntaxError(f"{word!r}: empty domain after ':'")
        _check_domain_spec(arg, word)
    if cidr and name not in ("a", "mx"):
        raise SpfSyntaxError(f"{word!r}: {name} takes no prefix length")
    c4, c6 = 32, 128
    if cidr:
        dual = _DUAL_CIDR_RE.match(cidr)
        if dual is None:
            raise SpfSyntaxError(f"{word!r}: bad prefix length {cidr!r}")
        c4 = int(dual[1]) if dual[1] else 32
        c6 = int(dual[2]) if dual[2] else 128
        if c4 > 32 or c6 > 128:
            raise SpfSyntaxError(f"{word!r}: prefix length out of range")
    return Term(qualifier, name, arg or "", c4, c6)


def _ip_term(word: str, qualifier: str, name: str, arg: str, cidr: str) -> Term:
    try:
        network = ipaddress.ip_network(arg + cidr, strict=False)
    except ValueError:
        raise SpfSyntaxError(f"{word!r}: not an IP network") from None
    if (name == "ip4") != (network.version == 4):
        raise SpfSyntaxError(f"{word!r}: {name} with an IPv{network.version} address")
    if name == "ip4" and cidr and not _CIDR4_RE.match(cidr):
        raise SpfSyntaxError(f"{word!r}: bad prefix length")
    return Term(qualifier, name, str(network))


def _check_macros(value: str, word: str) -> None:
    stripped = _MACRO_RE.sub("", value)
    if "%" in stripped:
        raise SpfSyntaxError(f"{word!r}: bad macro")


def _check_domain_spec(spec: str, word: str) -> None:
    _check_macros(spec, word)
    if "%" in spec:
        return  # the domain-end may be a macro; checked once expanded
    labels = spec.rstrip(".").split(".")
    # RFC 7208 §7.1 toplabel: alphanumeric with at least one letter (so not an IP address).
    top = labels[-1]
    if len(labels) < 2 or not re.fullmatch(r"[A-Za-z0-9-]+", top) or top.isdigit():
        raise SpfSyntaxError(f"{word!r}: {spec!r} is not a domain name")


# -- macros (RFC 7208 §7) -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    ip: str
    sender: str  # local@domain (postmaster@domain when MAIL FROM is the domain itself)
    helo: str


def expand(spec: str, domain: str, who: Identity) -> str:
    local, _, sender_domain = who.sender.rpartition("@")
    address = ipaddress.ip_address(who.ip)
    # %{i}: dotted quad, or dot-separated nibbles for IPv6 (RFC 7208 §7.3).
    nibbles = ".".join(address.exploded.replace(":", ""))
    ip_text = str(address) if address.version == 4 else nibbles
    values = {
        "s": who.sender,
        "l": local or "postmaster",
        "o": sender_domain,
        "d": domain,
        "i": ip_text,
        "p": "unknown",  # §7.3: discouraged; we do not look it up
        "v": "in-addr" if address.version == 4 else "ip6",
        "h": who.helo,
    }

    def one(m: re.Match[str]) -> str:
        if m["esc"]:
            return {"%": "%", "_": " ", "-": "%20"}[m["esc"]]
        letter = m["letter"].lower()
        if letter not in values:
            raise SpfSyntaxError(f"macro %{{{letter}}} is only allowed in exp=")
        parts = re.split("[" + re.escape(m["delims"] or ".") + "]", values[letter])
        if m["r"]:
            parts.reverse()
        if m["digits"]:
            keep = int(m["digits"])
            if keep == 0:
                raise SpfSyntaxError("macro with zero labels")
            parts = parts[-keep:]
        return ".".join(parts)

    return _MACRO_RE.sub(one, spec)


# -- static lookup count --------------------------------------------------------------------


@dataclass
class LookupCount:
    """DNS-querying terms in the whole tree, and the problems met while walking it."""

    total: int = 0
    by_include: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    temp_errors: list[str] = field(default_factory=list)


async def fetch_record(resolver: Resolver, domain: str) -> str | None:
    """The one SPF record at ``domain``; None if there is none. Raises DnsTempError and
    SpfSyntaxError (for several records, RFC 7208 §4.5 permerror)."""
    try:
        texts = await resolver.txt(domain)
    except DnsNotFound:
        return None
    found = [t for t in texts if is_spf(t)]
    if len(found) > 1:
        raise SpfSyntaxError(f"{domain} has {len(found)} SPF records; exactly one is allowed")
    return found[0] if found else None


async def count_lookups(resolver: Resolver, domain: str, who: Identity) -> LookupCount:
    count = LookupCount()
    await _count(resolver, domain, who, count, depth=0, top=None)
    return count


async def _count(
    resolver: Resolver,
    domain: str,
    who: Identity,
    count: LookupCount,
    *,
    depth: int,
    top: str | None,
) -> None:
    if depth > MAX_DEPTH:
        count.errors.append(f"include/redirect chain deeper than {MAX_DEPTH} (a loop?)")
        return
    try:
        text = await fetch_record(resolver, domain)
        if text is None:
            if depth:
                count.errors.append(f"{domain} (included) has no SPF record")
            return
        record = parse(text)
    except DnsTempError as exc:
        count.temp_errors.append(str(exc))
        return
    except SpfSyntaxError as exc:
        count.errors.append(f"{domain}: {exc}")
        return
    targets: list[tuple[str, str]] = []
    for term in record.terms:
        if term.mechanism in LOOKUP_MECHANISMS:
            _add(count, top or f"{term}")
            if term.mechanism == "include":
                targets.append((term.argument, str(term)))
    if record.redirect is not None:
        _add(count, top or f"redirect={record.redirect}")
        targets.append((record.redirect, f"redirect={record.redirect}"))
    for target, label in targets:
        try:
            name = expand(target, domain, who)
        except SpfSyntaxError as exc:
            count.errors.append(f"{domain}: {exc}")
            continue
        await _count(resolver, name, who, count, depth=depth + 1, top=top or label)


def _add(count: LookupCount, key: str) -> None:
    count.total += 1
    count.by_include[key] = count.by_include.get(key, 0) + 1


# -- check_host (RFC 7208 §4) -----------------------------------------------------------------


@dataclass
class _State:
    lookups: int = 0
    voids: int = 0


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True)
class SpfVerdict:
    result: str  # pass, fail, softfail, neutral, none, temperror, permerror
    reason: str = ""


async def check_host(resolver: Resolver, domain: str, who: Identity) -> SpfVerdict:
    try:
        return await _check_host(resolver, domain, who, _State(), depth=0)
    except _PermError as exc:
        return SpfVerdict("permerror", str(exc))
    except _TempError as exc:
        return SpfVerdict("temperror", str(exc))


async def _check_host(
    resolver: Resolver, domain: str, who: Identity, state: _State, *, depth: int
) -> SpfVerdict:
    if depth > MAX_DEPTH:
        raise _PermError("include/redirect loop")
    try:
        text = await fetch_record(resolver, domain)
    except DnsTempError as exc:
        raise _TempError(str(exc)) from None
    except SpfSyntaxError as exc:
        raise _PermError(str(exc)) from None
    if text is None:
        return SpfVerdict("none", f"{domain} has no SPF record")
    try:
        record = parse(text)
    except SpfSyntaxError as exc:
        raise _PermError(f"{domain}: {exc}") from None
    for term in record.terms:
        if term.mechanism in LOOKUP_MECHANISMS:
            _count_lookup(state)
        if await _matches(resolver, term, domain, who, state, depth):
            return SpfVerdict(QUALIFIERS[term.qualifier], f"matched {term} in {domain}")
    if record.redirect is not None:
        _count_lookup(state)
        target = _expand(record.redirect, domain, who)
        verdict = await _check_host(resolver, target, who, state, depth=depth + 1)
        if verdict.result == "none":
            raise _PermError(f"redirect={target} has no SPF record")
        return verdict
    return SpfVerdict("neutral", f"nothing in {domain} matched (no 'all')")


def _count_lookup(state: _State) -> None:
    state.lookups += 1
    if state.lookups > MAX_LOOKUPS:
        raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups (RFC 7208 §4.6.4)")


def _expand(spec: str, domain: str, who: Identity) -> str:
    try:
        return expand(spec, domain, who)
    except SpfSyntaxError as exc:
        raise _PermError(str(exc)) from None


async def _matches(
    resolver: Resolver, term: Term, domain: str, who: Identity, state: _State, depth: int
) -> bool:
    ip = _client(who.ip)
    mech = term.mechanism
    if mech == "all":
        return True
    if mech in ("ip4", "ip6"):
        network = ipaddress.ip_network(term.argument)
        return network.version == ip.version and ip in network
    target = _expand(term.argument, domain, who) if term.argument else domain
    if mech == "include":
        verdict = await _check_host(resolver, target, who, state, depth=depth + 1)
        if verdict.result in ("temperror",):
            raise _TempError(verdict.reason)
        if verdict.result in ("permerror", "none"):
            raise _PermError(f"include:{target}: {verdict.reason}")
        return verdict.result == "pass"
    if mech == "a":
        return _in_any(ip, await _addresses(resolver, target, ip.version, state), term)
    if mech == "mx":
        hosts = [h for _, h in await _lookup(resolver.mx, target, state) if h]
        if len(hosts) > MAX_MX_OR_PTR_NAMES:
            raise _PermError(f"mx:{target} has more than {MAX_MX_OR_PTR_NAMES} MX records")
        for host in hosts:
            if _in_any(ip, await _addresses(resolver, host, ip.version, state), term):
                return True
        return False
    if mech == "exists":
        return bool(await _lookup(resolver.a, target, state))
    if mech == "ptr":
        return await _ptr_matches(resolver, ip, target, state)
    return False


def _client(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(ip)
    # RFC 7208 §5: an IPv4-mapped IPv6 client is evaluated as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _lookup(fn: Callable[[str], Awaitable[Sequence[T]]], name: str, state: _State) -> list[T]:
    try:
        return list(await fn(name))
    except DnsNotFound:
        return _void(state)
    except DnsTempError as exc:
        raise _TempError(str(exc)) from None


def _void(state: _State) -> list[Any]:
    state.voids += 1
    if state.voids > MAX_VOID_LOOKUPS:
        raise _PermError(f"more than {MAX_VOID_LOOKUPS} lookups found nothing (RFC 7208 §4.6.4)")
    return []


async def _addresses(resolver: Resolver, name: str, version: int, state: _State) -> list[str]:
    return await _lookup(resolver.a if version == 4 else resolver.aaaa, name, state)


def _in_any(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addresses: list[str], term: Term
) -> bool:
    prefix = term.cidr4 if ip.version == 4 else term.cidr6
    return any(ip in ipaddress.ip_network(f"{a}/{prefix}", strict=False) for a in addresses)


async def _ptr_matches(
    resolver: Resolver,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    target: str,
    state: _State,
) -> bool:
    try:
        names = await resolver.ptr(str(ip))
    except DnsError:
        return False  # §5.5: a PTR failure is just no match
    for name in names[:MAX_MX_OR_PTR_NAMES]:
        if not (name == target or name.endswith("." + target)):
            continue
        try:
            forward = await (resolver.a(name) if ip.version == 4 else resolver.aaaa(name))
        except DnsError:
            continue
        if str(ip) in forward:
            return True
    return False

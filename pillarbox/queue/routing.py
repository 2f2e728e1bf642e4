"""Where mail for a domain goes: MX lookup and ordering, address selection.

RFC 5321 §5.1: look up the MX records; try them in preference order, choosing at random among
equal preferences (load spreading); no MX but an address record means the domain itself is
the one host ("implicit MX"); a domain that does not exist is a permanent failure, a DNS
error a temporary one. RFC 7505: a single MX of "." (preference 0) says the domain accepts
no mail at all: bounce at once, 5.1.10.

The pure functions (``order_mx``, ``order_addresses``, ``parse_literal``) hold the rules;
``resolve_route`` does the lookups.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pillarbox.dns.resolver import DnsNoData, DnsNotFound, DnsTempError, Resolver


class RouteError(Exception):
    """No usable route; ``permanent`` decides bounce or retry. ``status`` is RFC 3463."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class Hop:
    """One next-hop host: its name (for TLS verification and MTA-STS) and addresses."""

    name: str
    addresses: tuple[str, ...]
    preference: int = 0


def parse_literal(domain: str) -> str | None:
    """The IP of a domain literal (RFC 5321 §4.1.3: "[192.0.2.1]", "[IPv6:2001:db8::1]")."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def order_mx(records: Sequence[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """Sort by preference, shuffling hosts of equal preference (RFC 5321 §5.1)."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        if host not in by_pref.setdefault(pref, []):
            by_pref[pref].append(host)
    ordered: list[tuple[int, str]] = []
    for pref in sorted(by_pref):
        hosts = by_pref[pref]
        rng.shuffle(hosts)
        ordered += [(pref, h) for h in hosts]
    return ordered


def is_null_mx(records: Sequence[tuple[int, str]]) -> bool:
    """RFC 7505 §3: one MX, exchange "." (the resolver gives ""); any preference counts."""
    return len(records) == 1 and records[0][1] == ""


def family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def order_addresses(addresses: Sequence[str], preference: str) -> list[str]:
    """Addresses in the order to try: the preferred family first ("ipv4"/"ipv6"), or for
    "any" the families alternating, IPv6 first (as RFC 8305 §4 does), each in DNS order.

    Like Postfix's smtp_address_preference this is an order, not a filter: the other
    family is still tried when the preferred one fails."""
    v6 = [a for a in addresses if family(a) == socket.AF_INET6]
    v4 = [a for a in addresses if family(a) == socket.AF_INET]
    if preference == "ipv4":
        return v4 + v6
    if preference == "ipv6":
        return v6 + v4
    mixed: list[str] = []
    for i in range(max(len(v4), len(v6))):
        mixed += v6[i : i + 1] + v4[i : i + 1]
    return mixed


async def host_addresses(resolver: Resolver, name: str) -> list[str]:
    """A and AAAA of ``name`` ([] when it has none); DnsTempError propagates."""
    literal = parse_literal(f"[{name}]")
    if literal is not None:
        return [literal]
    try:
        return await resolver.addresses(name)
    except DnsNotFound:
        return []


async def resolve_route(
    resolver: Resolver, domain: str, rng: random.Random, *, preference: str
) -> list[Hop]:
    """The hops for ``domain`` in the order to try; raises RouteError when there are none.

    Hosts whose addresses cannot be resolved right now are skipped; if that leaves nothing,
    the failure is temporary."""
    literal = parse_literal(domain)
    if literal is not None:
        return [Hop(literal, (literal,))]
    try:
        records = await resolver.mx(domain)
    except DnsNoData:
        records = []  # implicit MX: the domain itself (RFC 5321 §5.1)
    except DnsNotFound:
        raise RouteError(
            f"domain {domain} does not exist", permanent=True, status="5.1.2"
        ) from None
    except DnsTempError as exc:
        raise RouteError(
            f"MX lookup for {domain}: {exc}", permanent=False, status="4.4.3"
        ) from None
    if is_null_mx(records):
        raise RouteError(
            f"domain {domain} accepts no mail (null MX, RFC 7505)",
            permanent=True,
            status="5.1.10",
        )
    ordered = order_mx([r for r in records if r[1]], rng) or [(0, domain)]
    hops: list[Hop] = []
    temp_errors: list[str] = []
    for pref, host in ordered:
        try:
            addresses = await host_addresses(resolver, host)
        except DnsTempError as exc:
            temp_errors.append(str(exc))
            continue
        if addresses:
            hops.append(Hop(host, tuple(order_addresses(addresses, preference)), pref))
    if hops:
        return hops
    if temp_errors:
        raise RouteError(
            f"address lookup failed: {'; '.join(temp_errors)}", permanent=False, status="4.4.3"
        )
    if records:
        # MX hosts that do not resolve: a misconfiguration the owner may fix; retry.
        raise RouteError(f"no address for any MX host of {domain}", permanent=False, status="4.4.4")
    raise RouteError(f"domain {domain} has no MX and no address", permanent=True, status="5.1.2")

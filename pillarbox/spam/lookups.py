"""What DNS says about the connecting client: DNSBL listings and reverse names.

Started when the client's first MAIL arrives (the SMTP backend's earliest call), so the
answers are usually in by the end of DATA; cached per address for ``CACHE_TTL`` seconds,
so a client that sends many messages (or reconnects) costs one lookup, and the benchmark's
loopback client none after the first. Every query goes through the server's resolver with
its timeout; a failure is "unknown", never "listed".

DNSBL answers are read as ``pillarbox check`` reads them (:mod:`pillarbox.check.dnsbl`,
RFC 5782 §2.1): 127.0.0.0/8 is a listing, except 127.255.255.0/24, which is the list
*refusing* to answer (a public resolver, rate limits) and is logged, not scored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from pillarbox import log
from pillarbox.check.dnsbl import classify, query_name
from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver

_log = log.get("spam")
CACHE_TTL = 600.0
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class ClientDns:
    listed: tuple[str, ...]  # zones that list the address
    ptr_names: tuple[str, ...] | None  # None: not asked (not a public address) or unknown


class ClientLookups:
    def __init__(self, resolver: Resolver, zones: tuple[str, ...], timeout: float):
        self.resolver = resolver
        self.zones = zones
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[float, asyncio.Task[ClientDns]]] = OrderedDict()

    def start(self, ip: str) -> None:
        """Begin the lookups for ``ip`` unless they are cached."""
        now = time.monotonic()
        entry = self._cache.get(ip)
        if entry is not None and entry[0] > now:
            return
        task = asyncio.get_running_loop().create_task(self._lookup(ip))
        self._cache[ip] = (now + CACHE_TTL, task)
        self._cache.move_to_end(ip)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def result(self, ip: str) -> ClientDns:
        entry = self._cache.get(ip)
        if entry is None:
            self.start(ip)
            entry = self._cache[ip]
        try:
            # The lookups are bounded by the resolver's timeout; this is a second fence.
            return await asyncio.wait_for(asyncio.shield(entry[1]), self.timeout * 2 + 1)
        except TimeoutError:
            return ClientDns((), None)

    async def _lookup(self, ip: str) -> ClientDns:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ClientDns((), None)
        # Reverse DNS only means something for a public address; a loopback or LAN client
        # has no PTR to find (and asking the world about 10.x is a leak).
        want_ptr = address.is_global
        results = await asyncio.gather(
            *(self._listed(ip, zone) for zone in self.zones),
            self._ptr(ip) if want_ptr else _none(),
        )
        listed = tuple(zone for zone, hit in zip(self.zones, results, strict=False) if hit)
        return ClientDns(listed, results[-1] if isinstance(results[-1], tuple) else None)

    async def _listed(self, ip: str, zone: str) -> bool:
        try:
            answers = await self.resolver.a(query_name(ip, zone))
        except DnsNotFound:
            return False
        except (DnsTempError, ValueError):
            return False
        verdict, codes = classify(answers)
        if verdict == "refused":
            _log.warning("dnsbl refused", zone=zone, client=ip, answer=",".join(codes))
            return False
        if verdict == "bogus":
            _log.warning("dnsbl bogus answer", zone=zone, client=ip, answer=",".join(codes))
            return False
        return True

    async def _ptr(self, ip: str) -> tuple[str, ...] | None:
        try:
            return tuple(await self.resolver.ptr(ip))
        except DnsNotFound:
            return ()
        except DnsTempError:
            return None


async def _none() -> None:
    return None

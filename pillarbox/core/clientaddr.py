"""Who a client is, for limits and bans: its IPv4 address, or its IPv6 /64.

One IPv6 subscriber usually gets a whole /64 (RFC 6177), so counting single IPv6
addresses would let one host take 2^64 identities; limits, throttles and bans therefore
key an IPv6 client by its /64. An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a
dual-stack socket reports) is the IPv4 client it maps.
"""

from __future__ import annotations

import functools
import ipaddress

IPV6_CLIENT_PREFIX = 64


@functools.lru_cache(maxsize=4096)
def client_key(ip: str) -> str:
    """The key that groups ``ip`` with the addresses of the same client."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # a Unix socket or an unknown form: itself
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(address)


def in_networks(
    ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Whether ``ip`` lies in one of ``networks`` (False for anything not an IP address)."""
    if not networks:
        return False  # the usual case (no trusted networks): no address to parse
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)

"""The PROXY protocol, versions 1 and 2 (HAProxy's "proxy-protocol.txt"): the header a
trusted proxy sends before anything else, naming the client it is forwarding.

This module only parses: :func:`header_length` says how many bytes of a peeked prefix make
up the header (or that more are needed), and :func:`parse_header` turns exactly those bytes
into a :class:`ProxiedAddress`. Reading them off the socket without taking a byte of what
follows (a TLS ClientHello, an SMTP command) is the listener's job.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Spec §2.1: a v1 header is at most 107 bytes, CRLF included.
V1_MAX = 107
V1_PREFIX = b"PROXY "
# Spec §2.2: the 12-byte signature, then version/command, family/transport, length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# A v2 header carries addresses and TLVs; 536 bytes is the spec's advice for a receive
# buffer that always holds it (§2.2); longer ones are refused rather than buffered.
V2_MAX = 536
# How many bytes to peek at before deciding anything.
PEEK = V2_MAX


class ProxyHeaderError(ValueError):
    """Not a valid PROXY header: the connection is closed (spec §2: never guess)."""


@dataclass(frozen=True)
class ProxiedAddress:
    """The connection as the proxy received it; None for a ``LOCAL`` (v2) or ``UNKNOWN``
    (v1) header, sent by the proxy on its own behalf (health checks): the connection's
    own addresses stand."""

    client: tuple[str, int] | None
    server: tuple[str, int] | None = None


def header_length(prefix: bytes) -> int | None:
    """The length of the header that ``prefix`` starts with, or None if more bytes are
    needed to tell. Raises ProxyHeaderError when ``prefix`` cannot start a header."""
    if prefix[:1] == V2_SIGNATURE[:1]:
        return _v2_length(prefix)
    if prefix[:1] == V1_PREFIX[:1]:
        return _v1_length(prefix)
    if prefix:
        raise ProxyHeaderError("no PROXY header where one was required")
    return None


def _v1_length(prefix: bytes) -> int | None:
    if not V1_PREFIX.startswith(prefix[: len(V1_PREFIX)]):
        raise ProxyHeaderError("no PROXY header where one was required")
    end = prefix.find(b"\r\n", 0, V1_MAX)
    if end >= 0:
        return end + 2
    if len(prefix) >= V1_MAX:
        raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
    return None


def _v2_length(prefix: bytes) -> int | None:
    if not V2_SIGNATURE.startswith(prefix[: len(V2_SIGNATURE)]):
        raise ProxyHeaderError("no PROXY header where one was required")
    if len(prefix) < V2_FIXED:
        return None
    (length,) = struct.unpack_from("!H", prefix, 14)
    if V2_FIXED + length > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header longer than {V2_MAX} bytes")
    return V2_FIXED + length


def parse_header(header: bytes) -> ProxiedAddress:
    """The addresses in one whole header (as measured by :func:`header_length`)."""
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    return _parse_v1(header)


# -- version 1: "PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n" ----------------------------


def _parse_v1(header: bytes) -> ProxiedAddress:
    if not header.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1 header without CRLF")
    try:
        words = header[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if words[:2] == ["PROXY", "UNKNOWN"]:
        return ProxiedAddress(None)  # §2.1: the receiver ignores anything after UNKNOWN
    if len(words) != 6 or words[0] != "PROXY" or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header: {header[:-2]!r}")
    version = 4 if words[1] == "TCP4" else 6
    client = (_v1_address(words[2], version), _v1_port(words[4]))
    server = (_v1_address(words[3], version), _v1_port(words[5]))
    return ProxiedAddress(client, server)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: not an IP address: {text!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {text} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    # §2.1: ports are decimal without leading zeros, 0..65535.
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: bad port {text!r}")
    return int(text)


# -- version 2: binary -----------------------------------------------------------------------

_LOCAL, _PROXY = 0x0, 0x1
_TCP4, _TCP6 = 0x11, 0x21  # family (high nibble) and transport (low nibble): STREAM
_ADDRESS_SIZES = {_TCP4: 12, _TCP6: 36}


def _parse_v2(header: bytes) -> ProxiedAddress:
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command == _LOCAL:
        return ProxiedAddress(None)  # §2.2: the proxy's own connection (a health check)
    if command != _PROXY:
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    body = header[V2_FIXED:]
    size = _ADDRESS_SIZES.get(family)
    if size is None:
        # §2.2: UNSPEC, UDP or UNIX: accept the connection, keep its own addresses.
        return ProxiedAddress(None)
    if len(body) < size:
        raise ProxyHeaderError("PROXY v2 header shorter than its addresses")
    if family == _TCP4:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxiedAddress(
            (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
        )
    src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    return ProxiedAddress(
        (_v6(src), sport),
        (_v6(dst), dport),
    )


def _v6(packed: bytes) -> str:
    address = ipaddress.IPv6Address(packed)
    # An IPv4 client forwarded over an IPv6 socket: the IPv4 address is who it is.
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def v2_header(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A v2 PROXY header for a TCP connection (tests and tools that speak for a proxy)."""
    src, dst = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1])
    return V2_SIGNATURE + bytes([0x20 | _PROXY, family]) + struct.pack("!H", len(body)) + body

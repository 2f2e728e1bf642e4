"""Just enough of a TLS ClientHello parser to read the ALPN protocols a client offers.

The https listener uses it to show the ACME TLS-ALPN-01 validation certificate only to a
client that asks for ``acme-tls/1`` (RFC 8737 §3) — an ordinary browser or mail client
connecting during a validation keeps getting the real certificate. The ssl module cannot
tell an SNI callback which ALPN protocols were offered, so we look at the first record
ourselves before OpenSSL does. Pure and defensive: any malformed or truncated input gives
``None`` ("no ALPN seen"), never an exception.
"""

from __future__ import annotations

RECORD_HEADER = 5
MAX_RECORD = 16384 + 2048  # RFC 8446 §5.1/5.2 upper bound for a record's payload
HANDSHAKE_RECORD = 22
CLIENT_HELLO = 1
ALPN_EXTENSION = 16  # RFC 7301 §3.1


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))


def record_length(header: bytes) -> int | None:
    """Total length of the first TLS record from its 5-byte header; None if not a handshake
    record (a client speaking something else)."""
    if len(header) < RECORD_HEADER or header[0] != HANDSHAKE_RECORD or header[1] != 3:
        return None
    length = int.from_bytes(header[3:5], "big")
    return RECORD_HEADER + length if 0 < length <= MAX_RECORD else None


def offered_alpn(record: bytes) -> list[bytes] | None:
    """The ALPN protocol names in the ClientHello carried by ``record``, or None."""
    try:
        return _offered_alpn(record)
    except ValueError:
        return None


def _offered_alpn(record: bytes) -> list[bytes] | None:
    outer = _Reader(record)
    if outer.number(1) != HANDSHAKE_RECORD:
        return None
    outer.take(2)  # legacy record version
    hello = _Reader(outer.vector(2))
    if hello.number(1) != CLIENT_HELLO:
        return None
    # The handshake message may continue in the next record; parse what this one holds.
    body = _Reader(hello.data[hello.pos + 3 :])
    body.take(2 + 32)  # legacy_version, random (RFC 8446 §4.1.2)
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    extensions = _Reader(body.vector(2))
    while extensions.pos < len(extensions.data):
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind == ALPN_EXTENSION:
            names = _Reader(_Reader(data).vector(2))
            found = []
            while names.pos < len(names.data):
                found.append(names.vector(1))
            return found
    return None

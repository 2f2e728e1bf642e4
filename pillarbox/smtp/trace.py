"""Trace information we add to received mail: the Received header (RFC 5321 §4.4).

The ``from`` clause records the client's EHLO name and its address literal (we do not make
a reverse DNS lookup on the receiving path: it costs a round trip per connection and
its answer is the client's to choose anyway). The TLS version and cipher are recorded as
Postfix's ``smtpd_tls_received_header`` does, the authenticated user as Postfix's
``smtpd_sasl_authenticated_header``. ``with`` is the protocol type of RFC 3848 (ESMTP,
ESMTPS, ESMTPA, ESMTPSA) or RFC 6531 §3.7.3 (UTF8SMTP...), and ``for`` names the recipient
only when there is exactly one (several would disclose Bcc recipients to each other).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol


class _TlsLike(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def cipher(self) -> str: ...
    @property
    def bits(self) -> int: ...


@functools.lru_cache(maxsize=4096)
def address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return "[unknown]"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"[{parsed.ipv4_mapped}]"
        return f"[IPv6:{parsed.compressed}]"
    return f"[{parsed}]"


_date_cache: tuple[int, str] = (0, "")


def _current_date() -> str:
    """RFC 5322 date of the current second (formatted once per second: hot path)."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_cache[1]


def protocol_type(*, esmtp: bool, tls: bool, authenticated: bool, utf8: bool) -> str:
    base = "UTF8SMTP" if utf8 else "ESMTP" if esmtp else "SMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    if not esmtp and not utf8 and suffix:
        base = "ESMTP"  # RFC 3848 defines the S/A forms on ESMTP only
    return base + suffix


def received_header(
    *,
    helo: str,
    peer_ip: str,
    hostname: str,
    queue_id: str,
    protocol: str,
    tls: _TlsLike | None,
    user: str | None,
    recipients: list[str],
    now: datetime | None = None,
) -> bytes:
    lines = [f"Received: from {helo or 'unknown'} ({address_literal(peer_ip)})"]
    if tls is not None:
        lines.append(f"(using {tls.version} with cipher {tls.cipher} ({tls.bits}/{tls.bits} bits))")
    if user:
        lines.append(f"(Authenticated sender: {user})")
    by = f"by {hostname} (Pillarbox) with {protocol} id {queue_id}"
    if len(recipients) == 1:
        by += f"\r\n\tfor <{recipients[0]}>"
    lines.append(by + ";")
    lines.append(_current_date() if now is None else format_datetime(now))
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")

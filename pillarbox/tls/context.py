"""Server TLS contexts, and a holder that swaps them without dropping connections.

Every listener asks ``TlsProvider.current()`` at handshake time (implicit TLS and STARTTLS
alike), so replacing the context on SIGHUP or after an ACME renewal takes effect for the
next handshake while established TLS sessions keep the context they started with.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from pillarbox import log
from pillarbox.metrics import registry as metrics

_log = log.get("tls")

# Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3 suites are
# fixed by OpenSSL and all fine.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class TlsConfigError(Exception):
    pass


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context: TLS 1.2+, AEAD suites, no session tickets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    # TLS 1.3 session tickets made Microsoft's outbound servers fail against several
    # self-hosted MTAs in 2024; sending none costs a full handshake per connection only.
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load certificate {cert} / key {key}: {exc}") from exc
    return ctx


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a session records about its TLS layer (for Received headers and logs)."""

    version: str
    cipher: str
    bits: int

    @classmethod
    def of(cls, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TlsInfo | None:
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        if cipher is None:
            return None
        name, version, bits = cipher
        # Interned: every connection would keep its own copy of the same two names.
        version = sys.intern(ssl_object.version() or version)
        info = cls(version=version, cipher=sys.intern(name), bits=bits)
        # Every inbound session takes its TlsInfo from here once, right after its handshake.
        metrics.count(metrics.TLS_SESSIONS, info.version)
        return info

    def __str__(self) -> str:
        return f"{self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


class TlsProvider:
    """Holds the current server context; ``reload`` swaps in a freshly loaded one.

    Implicit-TLS listeners are created once with ``front()``, whose SNI callback (called by
    OpenSSL for every ClientHello, with or without SNI) moves the handshake onto the
    *current* context, so they pick up a new certificate without being re-bound.
    """

    def __init__(self, cert: Path, key: Path):
        self.cert = cert
        self.key = key
        self._context = server_context(cert, key)
        self._front = server_context(cert, key)
        self._front.sni_callback = self._select

    def current(self) -> ssl.SSLContext:
        return self._context

    def front(self) -> ssl.SSLContext:
        return self._front

    def _select(
        self, ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        if self._context is not front:
            ssl_object.context = self._context

    def reload(self, cert: Path | None = None, key: Path | None = None) -> None:
        """Load new files (or the same paths again); on error keep the old context."""
        new = server_context(cert or self.cert, key or self.key)
        self.cert, self.key = cert or self.cert, key or self.key
        self._context = new


def quiet_bad_server_names() -> None:
    """Make a ClientHello with a non-ASCII SNI name cost one log line, not a traceback.

    CPython's ssl module decodes the server_name as ASCII *before* it calls our SNI
    callback (RFC 6066 §3 says host names there are ASCII, A-labels for IDNs) and, when
    that fails, refuses the handshake with an internal_error alert and hands the
    UnicodeDecodeError to ``sys.unraisablehook`` — whose default prints a traceback on
    stderr. Any client could fill the log that way; every other unraisable error still
    goes to the hook that was there before."""
    if sys.unraisablehook is not _unraisable_hook:
        global _previous_unraisable_hook
        _previous_unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable_hook


_previous_unraisable_hook = sys.unraisablehook


def _unraisable_hook(unraisable: sys.UnraisableHookArgs) -> None:
    if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(
        unraisable.object, bytes
    ):
        _log.info("tls handshake refused", reason="server name (SNI) is not ASCII")
        return
    _previous_unraisable_hook(unraisable)

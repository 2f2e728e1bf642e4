"""SASL PLAIN (RFC 4616) and LOGIN state machines, shared by SMTP, IMAP and POP3.

The protocols differ only in framing (SMTP ``334``, IMAP ``+``); both carry base64 text.
A session starts an exchange with the mechanism name and the optional initial response
(RFC 4954 §4, RFC 4959), sends each ``challenge`` it is given, feeds back the client's line
and ends when ``credentials`` is set or ``SaslError`` is raised.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")

# Bound on a decoded SASL message: user, authzid and password together.
MAX_SASL_MESSAGE = 4096


class SaslError(Exception):
    """The exchange failed: malformed data, unknown mechanism or cancelled by the client."""

    def __init__(self, reason: str, *, cancelled: bool = False, unknown: bool = False):
        super().__init__(reason)
        self.cancelled = cancelled
        self.unknown_mechanism = unknown


@dataclass(frozen=True)
class Credentials:
    authcid: str  # who is logging in
    password: str
    authzid: str = ""  # who to act as; we allow only the same identity


def decode_line(line: bytes | str) -> bytes:
    """Decode one client SASL line: ``*`` cancels (RFC 4954 §4), ``=`` is empty."""
    text = line.strip() if isinstance(line, bytes) else line.strip().encode("ascii", "replace")
    if text == b"*":
        raise SaslError("authentication cancelled", cancelled=True)
    if text == b"=":
        return b""
    if len(text) > MAX_SASL_MESSAGE * 2:
        raise SaslError("SASL message too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("invalid base64 in SASL response") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("SASL data is not UTF-8") from None


class SaslExchange:
    """One authentication exchange; see the module docstring for the protocol."""

    def __init__(self, mechanism: str, initial_response: bytes | str | None = None):
        self.mechanism = mechanism.upper()
        if self.mechanism not in MECHANISMS:
            raise SaslError(f"unsupported mechanism {mechanism}", unknown=True)
        self.challenge: bytes | None = None
        self.credentials: Credentials | None = None
        self._username: str | None = None
        if initial_response is not None:
            self.feed(initial_response)
        else:
            self._prompt()

    @property
    def challenge_b64(self) -> str:
        return base64.b64encode(self.challenge or b"").decode("ascii")

    def _prompt(self) -> None:
        if self.mechanism == "PLAIN":
            self.challenge = b""  # RFC 4616 §2: the server sends an empty challenge
        else:
            # The LOGIN mechanism (draft-murchison-sasl-login) prompts with these texts.
            self.challenge = b"Username:" if self._username is None else b"Password:"

    def feed(self, line: bytes | str) -> None:
        data = decode_line(line)
        if self.mechanism == "PLAIN":
            self._plain(data)
        else:
            self._login(data)

    def _plain(self, data: bytes) -> None:
        # message = [authzid] UTF8NUL authcid UTF8NUL passwd   (RFC 4616 §2)
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise SaslError("malformed PLAIN message")
        authzid, authcid, password = (_utf8(p) for p in parts)
        self._finish(Credentials(authcid=authcid, password=password, authzid=authzid))

    def _login(self, data: bytes) -> None:
        if self._username is None:
            self._username = _utf8(data)
            if not self._username or "\0" in self._username:
                raise SaslError("empty user name")
            self._prompt()
        else:
            self._finish(Credentials(authcid=self._username, password=_utf8(data)))

    def _finish(self, credentials: Credentials) -> None:
        self.challenge = None
        self.credentials = credentials

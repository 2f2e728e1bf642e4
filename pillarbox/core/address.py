"""Mail address and domain normalisation shared by every layer.

An address is stored and compared in one canonical form: the local part kept as written
(RFC 5321 §2.4 leaves local-part case to the receiving host, and we compare it
case-insensitively by lower-casing it, as Postfix and Dovecot do for virtual users), the
domain lower-cased and converted to its IDNA A-label form so that ``bücher.example`` and
``xn--bcher-kva.example`` are one domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: local part up to 64 octets, domain up to 255.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

# A dot-atom local part (RFC 5322 §3.2.3) with UTF-8 allowed (RFC 6531 §3.3).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM_RE = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressError(ValueError):
    """An address or domain that cannot be accepted, with a reason a person can read."""


def normalize_domain(domain: str) -> str:
    """Return the lower-case IDNA A-label form of ``domain`` or raise AddressError."""
    raw = domain.strip().rstrip(".")
    if not raw:
        raise AddressError("empty domain")
    try:
        ascii_form = raw.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError(f"invalid domain {domain!r}: not a valid IDNA name") from exc
    if len(ascii_form) > MAX_DOMAIN:
        raise AddressError(f"invalid domain {domain!r}: longer than {MAX_DOMAIN} octets")
    labels = ascii_form.split(".")
    if len(labels) < 2 and ascii_form != "localhost":
        raise AddressError(f"invalid domain {domain!r}: needs at least two labels")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise AddressError(f"invalid domain {domain!r}: bad label {label!r}")
    return ascii_form


@dataclass(frozen=True, slots=True)
class Address:
    """A normalised ``local@domain`` mailbox address."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def base(self, delimiter: str) -> Address:
        """The address without its ``+tag`` sub-address (any char of ``delimiter`` splits)."""
        return Address(strip_subaddress(self.local, delimiter), self.domain)


def strip_subaddress(local: str, delimiter: str) -> str:
    """Cut ``local`` at the first character that is one of ``delimiter``'s characters.

    Postfix's recipient_delimiter semantics: each character of the setting is a delimiter.
    """
    if not delimiter:
        return local
    for index, char in enumerate(local):
        if char in delimiter and index > 0:
            return local[:index]
    return local


def parse_address(text: str) -> Address:
    """Parse and normalise a bare ``local@domain`` (no angle brackets, no display name)."""
    text = text.strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local:
        raise AddressError(f"invalid address {text!r}: expected local@domain")
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        raise AddressError(f"invalid address {text!r}: quoted local parts are not supported")
    if not _DOT_ATOM_RE.match(local):
        raise AddressError(f"invalid address {text!r}: bad local part")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError(f"invalid address {text!r}: local part longer than 64 octets")
    return Address(local.lower(), normalize_domain(domain))


def is_catch_all(text: str) -> bool:
    """True for the ``@domain`` catch-all alias form."""
    return text.strip().startswith("@")

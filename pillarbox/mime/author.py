"""Who a message says it is from: the From and Sender fields, read the way readers read them.

A submission server must judge the author by what mail clients, DMARC (RFC 7489 §3.1.1
aligns on the From *domain*) and our own IMAP ENVELOPE will show, and spoofing lives in the
differences between parsers. So this module reports everything that any reader could take
for an author address:

- every From/Sender field, counted on the raw header block (an obsolete ``From :`` with
  white space before the colon, RFC 5322 §4.5.6, counts too);
- the mailboxes of the first field by :func:`pillarbox.mime.address.parse_address_list`,
  the parser behind IMAP ENVELOPE;
- the addr-specs the standard library's ``email`` package finds (what most Python tools,
  dkimpy and authheaders among them, see);
- every address-like text anywhere in the field, RFC 2047 encoded words decoded: display
  names and comments are what a phone shows, and ``"boss@corp.example" <me@mine.example>``
  reads as from boss@ on most of them.

The rule (which addresses are acceptable) is policy and lives with the caller.
"""

from __future__ import annotations

import email.headerregistry
import email.policy
import re
from dataclasses import dataclass, field
from typing import Final

from pillarbox.mime.address import parse_address_list
from pillarbox.mime.headers import decode_words, unfold

# A field start at a line start, its name case-insensitive; RFC 5322 §4.5.6 obsolete
# syntax allows white space before the colon, and readers accept it.
_FIELD_RE: Final = {
    name: re.compile(rb"(?im)^" + name.encode() + rb"[ \t]*:") for name in ("from", "sender")
}
# Text that reads as an email address to a person: dot-atom-ish local part, a dotted domain.
_ADDRESS_LIKE_RE: Final = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_HEADER_FACTORY: Final = email.headerregistry.HeaderRegistry()


@dataclass(frozen=True)
class Mailbox:
    """One mailbox of a From/Sender field as ENVELOPE shows it (raw, not decoded)."""

    name: str | None
    local: str
    host: str

    @property
    def address(self) -> str:
        return f"{self.local}@{self.host}" if self.host else self.local


@dataclass
class AuthorField:
    """What readers can see in one of From/Sender (its first occurrence)."""

    count: int = 0  # how many fields of this name the header block holds
    mailboxes: list[Mailbox] = field(default_factory=list)
    has_group: bool = False
    # Addresses other readers see: the email package's addr-specs and address-like text in
    # display names and comments (decoded), lower-cased, in order of appearance.
    shown: list[str] = field(default_factory=list)


def field_count(head: bytes, name: str) -> int:
    """How many ``name`` fields (``from`` or ``sender``) start a line of ``head``."""
    return len(_FIELD_RE[name].findall(head))


def first_value(head: bytes, name: str) -> bytes | None:
    """The raw (folded) value of the first ``name`` field, up to the next field start."""
    match = _FIELD_RE[name].search(head)
    if match is None:
        return None
    end = head.find(b"\r\n", match.end())
    while end >= 0 and head[end + 2 : end + 3] in (b" ", b"\t"):
        end = head.find(b"\r\n", end + 2)
    return head[match.end() : len(head) if end < 0 else end]


def read_author_field(head: bytes, name: str) -> AuthorField:
    """The From or Sender field of a CRLF header block, as every reader would see it."""
    result = AuthorField(count=field_count(head, name))
    raw = first_value(head, name)
    if raw is None:
        return result
    text = unfold(raw)
    for entry in parse_address_list(text) or []:
        _name, _adl, local, host = entry
        if host is None:  # a group start or end marker (RFC 3501 §7.4.2)
            result.has_group = True
        elif local is not None:
            result.mailboxes.append(Mailbox(_name, local, host))
    result.shown = list(dict.fromkeys([*_stdlib_addresses(text), *_address_like(text)]))
    return result


def _stdlib_addresses(text: str) -> list[str]:
    try:
        header = _HEADER_FACTORY("from", text)
        return [a.addr_spec.lower() for a in getattr(header, "addresses", ()) if a.addr_spec]
    except Exception:  # the email package raises many types on hostile input
        return []


def _address_like(text: str) -> list[str]:
    found = _ADDRESS_LIKE_RE.findall(text) + _ADDRESS_LIKE_RE.findall(decode_words(text))
    return [a.lower().strip(".") for a in found]


def has_encoded_word(text: str) -> bool:
    """RFC 2047 §5(3): an encoded word must not appear in an addr-spec."""
    return "=?" in text

"""The message as a Sieve script sees it: decoded header fields, the size, the body.

Only the header section is parsed up front (it is all most scripts look at); the whole
message is read and MIME-parsed the first time a ``body`` test asks (RFC 5173), through the
``load`` callable the caller gives, so a 50 MB attachment costs nothing to a script that
files by subject. Everything here is synchronous: delivery runs scripts in a thread.
"""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage, Message

# A header field value longer than this is cut before matching: no legitimate field is
# this long, and :matches patterns must not get unbounded input.
MAX_VALUE_CHARS = 16 * 1024
# The body test looks at this much decoded text per part at most.
MAX_BODY_CHARS = 1024 * 1024

_FOLD = re.compile(r"\r?\n(?=[ \t])")


class SieveMessage:
    """One message: ``head`` is its header section (bytes up to the blank line)."""

    def __init__(self, head: bytes, size: int, load: Callable[[], bytes] | None = None):
        self.size = size
        self._load = load
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        self._fields: list[tuple[str, str]] = [
            (name.lower(), _decode(value)) for name, value in parsed.items()
        ]
        self._message: Message | None = None

    def header_values(self, name: str) -> list[str]:
        """Every value of the field ``name`` (case-insensitive), unfolded and RFC 2047
        decoded (RFC 5228 §5.7: comparisons are done on the decoded text), in order."""
        key = name.lower()
        return [value for field, value in self._fields if field == key]

    def full(self) -> Message:
        if self._message is None:
            data = self._load() if self._load is not None else b""
            self._message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        return self._message

    def body(self, transform: str, types: tuple[str, ...]) -> list[str]:
        """The body for the body test (RFC 5173 §5): ``raw`` is the undecoded body,
        ``text`` the decoded text/* parts, ``content`` the parts of the given types
        ("text" matches text/*, "text/html" exactly, "" every part)."""
        message = self.full()
        if transform == "raw":
            payload = message.get_payload(decode=False)
            if isinstance(payload, list):
                return [message.as_string().partition("\n\n")[2][:MAX_BODY_CHARS]]
            return [str(payload)[:MAX_BODY_CHARS]]
        wanted = ("text",) if transform == "text" else types
        out: list[str] = []
        for part in message.walk():
            if part.is_multipart():
                continue
            if not _type_matches(part.get_content_type(), wanted):
                continue
            out.append(_part_text(part)[:MAX_BODY_CHARS])
        return out


def _type_matches(content_type: str, wanted: tuple[str, ...]) -> bool:
    main = content_type.split("/", 1)[0]
    for item in wanted:
        item = item.lower()
        if item == "" or item == content_type or ("/" not in item and item == main):
            return True
    return False


def _part_text(part: Message) -> str:
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
        except (LookupError, ValueError, AssertionError):
            content = None
        if isinstance(content, str):
            return content
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    return ""


def _decode(value: object) -> str:
    # compat32 hands 8-bit header bytes over as surrogate escapes: undo them as UTF-8
    # (RFC 6532 headers), replacing what is not UTF-8.
    text = str(value)
    try:
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        pass
    value = _FOLD.sub("", text).strip()  # RFC 5322 §2.2.3: unfolding removes CRLF only
    if "=?" in value:
        try:
            value = str(email.header.make_header(email.header.decode_header(value)))
        except (LookupError, ValueError, email.errors.HeaderParseError):
            pass  # not valid RFC 2047: match the text as written
    return value[:MAX_VALUE_CHARS]

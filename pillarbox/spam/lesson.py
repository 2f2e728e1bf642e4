"""What a message teaches (and what the classifier asks about): its :class:`Lesson`.

The same function serves both sides, so what is learnt from a stored message when the user
moves it and what is looked up for a new one are the same keys: the From address and its
domain, the DKIM domains that verified, and the body's tokens. At learning time the DKIM
result is read back from our own Authentication-Results field (the first one, which
delivery prepended and which no sender can forge: others claiming our authserv-id are
removed on arrival, RFC 8601 §5).
"""

from __future__ import annotations

import hashlib
import re

from pillarbox.spam.reputation import Lesson
from pillarbox.spam.rules import address_of, parse_fields
from pillarbox.spam.tokens import tokenize

_DKIM_PASS_RE = re.compile(r"\bdkim=pass\b[^;]*?\bheader\.d=([A-Za-z0-9.-]+)", re.IGNORECASE)


def split_message(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
        return (data, b"") if end < 0 else (data[: end + 2], data[end + 2 :])
    return data[: end + 4], data[end + 4 :]


def lesson_of(fields: dict[str, list[str]], body: bytes, dkim_domains: tuple[str, ...]) -> Lesson:
    sender = address_of(fields.get("from", [""])[0])
    domain = sender.rpartition("@")[2] if "@" in sender else ""
    subject = fields.get("subject", [""])[0]
    return Lesson(sender, domain, dkim_domains, tokenize(subject, domain, body))


def stored_dkim_domains(fields: dict[str, list[str]], authserv_id: str) -> tuple[str, ...]:
    for value in fields.get("authentication-results", []):
        if value.split(";", 1)[0].strip().lower() == authserv_id.lower():
            return tuple(sorted({d.lower() for d in _DKIM_PASS_RE.findall(value)}))
    return ()


def lesson_from_stored(data: bytes, authserv_id: str) -> tuple[str, Lesson]:
    """(message key, lesson) of a stored message; the key is its Message-ID (or a hash),
    so that the same message is not counted twice."""
    head, body = split_message(data[: 512 * 1024])
    fields = parse_fields(head)
    key = fields.get("message-id", [""])[0].strip()[:250]
    if not key:
        key = "sha256:" + hashlib.sha256(body[:65536]).hexdigest()
    return key, lesson_of(fields, body, stored_dkim_domains(fields, authserv_id))

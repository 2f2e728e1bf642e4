"""The searchable text of a message: text parts decoded (transfer encoding and charset).

SEARCH BODY/TEXT compare against what the user reads (RFC 3501 §6.4.4 "contains"), so a
quoted-printable ``caf=C3=A9`` must match ``café``. Attachments other than text and
messages are skipped; undecodable input degrades to replacement characters, never an
exception.
"""

from __future__ import annotations

import binascii
import codecs
import quopri
from typing import Any, Final

from pillarbox.mime.headers import decode_words, iter_fields, unfold

MAX_TEXT: Final = 4 * 1024 * 1024  # bound the work per message


def _decode_transfer(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.upper()
    try:
        if encoding == "BASE64":
            return binascii.a2b_base64(raw)
        if encoding == "QUOTED-PRINTABLE":
            return quopri.decodestring(raw)
    except (binascii.Error, ValueError):
        return raw
    return raw


def _charset(part: dict[str, Any]) -> str:
    for key, value in part.get("params") or []:
        if key == "charset":
            try:
                return codecs.lookup(value).name
            except LookupError:
                return "utf-8"
    return "utf-8"


def _texts(data: bytes, part: dict[str, Any]) -> list[str]:
    """The searchable texts of ``part`` in order: text/* and message/* leaves decoded, and
    an attached message's header fields (a forwarded message is found by its subject)."""
    if "parts" in part:
        return [text for child in part["parts"] for text in _texts(data, child)]
    if "msg" in part:
        inner = part["msg"]
        return [header_text(data[inner["hs"] : inner["bs"]]), *_texts(data, inner)]
    # message/delivery-status and its kin (RFC 3464) are text a user searches too.
    if part["type"] not in ("text", "message"):
        return []
    raw = _decode_transfer(data[part["bs"] : part["end"]], part["enc"])
    return [raw.decode(_charset(part), "replace")]


def body_text(data: bytes, structure: dict[str, Any]) -> str:
    """The text SEARCH BODY/TEXT look in (RFC 3501 §6.4.4 "the body of the message"): every
    text/* and message/* part decoded, and the header of every attached message."""
    out: list[str] = []
    size = 0
    for text in _texts(data, structure):
        out.append(text)
        size += len(text)
        if size > MAX_TEXT:
            break
    return "\n".join(out)


def header_text(block: bytes) -> str:
    """Header fields with encoded words decoded, one per line."""
    return "\n".join(f"{n}: {decode_words(unfold(v))}" for n, v in iter_fields(block))


def search_texts(data: bytes, structure: dict[str, Any], header_end: int) -> tuple[str, str]:
    """(body text, header text) case-folded: exactly what SEARCH BODY and TEXT compare a
    needle against (RFC 9051 §6.4.4: substring, case-insensitive). The full-text index
    stores these same strings, so an indexed answer and a scan cannot disagree."""
    return body_text(data, structure).casefold(), header_text(data[:header_end]).casefold()

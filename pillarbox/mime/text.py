"""The searchable text of a message: text parts decoded (transfer encoding and charset).

SEARCH BODY/TEXT compare against what the user reads (RFC 3501 §6.4.4 "contains"), so a
quoted-printable ``caf=C3=A9`` must match ``café``. Non-text parts are skipped; undecodable
input degrades to replacement characters, never an exception.
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


def _leaves(part: dict[str, Any]) -> list[dict[str, Any]]:
    if "parts" in part:
        return [leaf for child in part["parts"] for leaf in _leaves(child)]
    if "msg" in part:
        return _leaves(part["msg"])
    return [part]


def body_text(data: bytes, structure: dict[str, Any]) -> str:
    """The decoded text of every text/* leaf part, joined by newlines."""
    out: list[str] = []
    size = 0
    for leaf in _leaves(structure):
        if leaf["type"] != "text":
            continue
        raw = _decode_transfer(data[leaf["bs"] : leaf["end"]], leaf["enc"])
        text = raw.decode(_charset(leaf), "replace")
        out.append(text)
        size += len(text)
        if size > MAX_TEXT:
            break
    return "\n".join(out)


def header_text(block: bytes) -> str:
    """Header fields with encoded words decoded, one per line."""
    return "\n".join(f"{n}: {decode_words(unfold(v))}" for n, v in iter_fields(block))

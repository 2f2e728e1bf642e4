"""Message text to classifier tokens: words of the subject and body, plus a few header facts.

Quoted-printable and base64 text parts are decoded first (spam hides its words in them);
HTML tags are dropped. Tokens are lower case, 3 to 24 characters, at most
``MAX_TOKENS`` distinct ones per message (a huge message must not cost a huge update).
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re

MAX_TOKENS = 1000
MAX_TEXT = 256 * 1024

_WORD_RE = re.compile(r"[^\W\d_][\w'$€-]{2,23}", re.UNICODE)
_TAG_RE = re.compile(r"<[^>]{0,2000}>")
_URL_HOST_RE = re.compile(r"https?://([a-z0-9.-]+)", re.IGNORECASE)
_PART_HEAD_RE = re.compile(
    rb"content-transfer-encoding:[ \t]*(base64|quoted-printable)[^\n]*\n(?:[^\r\n][^\n]*\n)*\r?\n",
    re.IGNORECASE,
)


def decoded_text(body: bytes) -> str:
    """The body with base64 / quoted-printable sections decoded (best effort)."""
    body = body[:MAX_TEXT]
    pieces: list[bytes] = []
    position = 0
    for match in _PART_HEAD_RE.finditer(body):
        pieces.append(body[position : match.end()])
        end = body.find(b"\n--", match.end())
        end = len(body) if end < 0 else end
        chunk = body[match.end() : end]
        try:
            if match.group(1).lower() == b"base64":
                chunk = base64.b64decode(b"".join(chunk.split()), validate=False)
            else:
                chunk = quopri.decodestring(chunk)
        except (binascii.Error, ValueError):
            pass
        pieces.append(chunk)
        position = end
    pieces.append(body[position:])
    return b"".join(pieces).decode("utf-8", errors="replace")


def tokenize(subject: str, from_domain: str, body: bytes) -> list[str]:
    text = _TAG_RE.sub(" ", decoded_text(body))
    seen: dict[str, None] = {}
    if from_domain:
        seen["from:" + from_domain] = None
    for host in _URL_HOST_RE.findall(text):
        seen["url:" + host.lower()[:60]] = None
    for word in _WORD_RE.findall(subject):
        seen["subject:" + word.lower()] = None
    for word in _WORD_RE.findall(text):
        seen[word.lower()] = None
        if len(seen) >= MAX_TOKENS:
            break
    return list(seen)[:MAX_TOKENS]

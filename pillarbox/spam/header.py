"""The ``X-Pillarbox-Spam`` header field: the verdict, the score and every rule that fired.

Format (one field, folded at 78 characters, RFC 5322 §2.2.3)::

    X-Pillarbox-Spam: verdict=junk; score=7.5; junk=5.0; reject=15.0; engine=pillarbox;
     rules=HELO_NOT_FQDN(1.5:box) SUBJECT_SPAMMY(1.5:viagra) REPUTATION_SENDER(3.0)

``verdict`` is ``inbox``, ``junk`` or ``reject`` (a rejected message is never stored, so
stored mail carries the first two). A Sieve script tests it with ``header :contains
"X-Pillarbox-Spam" "verdict=junk"``. The field describes our own judgement only: one that
arrives from outside is a forgery (or another server's opinion) and is removed before ours
is prepended, as RFC 8601 §5 asks for Authentication-Results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pillarbox.spam.rules import Hit

FIELD = b"X-Pillarbox-Spam"
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9.@_+,/=-]")


def _detail(text: str) -> str:
    """A hit's detail as header-safe text: hostile input (a HELO name, a zone) cannot add
    fields or break the syntax."""
    return _UNSAFE_RE.sub("_", text)[:48]


def format_hit(hit: Hit) -> str:
    points = f"{hit.points:g}"
    return f"{hit.name}({points}:{_detail(hit.detail)})" if hit.detail else f"{hit.name}({points})"


def format_rules(hits: Sequence[Hit]) -> str:
    return " ".join(format_hit(h) for h in hits) or "none"


def build(
    verdict: str, score: float, junk: float, reject: float, engine: str, hits: Sequence[Hit]
) -> bytes:
    words = [
        f"verdict={verdict};",
        f"score={score:g};",
        f"junk={junk:g};",
        f"reject={reject:g};",
        f"engine={engine};",
        "rules=" + (format_hit(hits[0]) if hits else "none"),
        *(format_hit(h) for h in hits[1:]),
    ]
    lines: list[str] = []
    line = FIELD.decode() + ":"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line.strip():
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")


_FIELD_RE = re.compile(rb"^x-pillarbox-spam[ \t]*:", re.IGNORECASE)


def strip(head: bytes) -> bytes:
    """``head`` without any X-Pillarbox-Spam field (with its continuation lines)."""
    if b"x-pillarbox-spam" not in head.lower():
        return head
    out: list[bytes] = []
    skipping = False
    for line in head.splitlines(keepends=True):
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = bool(_FIELD_RE.match(line))
        if not skipping:
            out.append(line)
    return b"".join(out)

"""RFC 5322 address lists as IMAP wants them in ENVELOPE (RFC 3501 §7.4.2).

Each address is ``[name, adl, mailbox, host]`` with raw (not RFC 2047 decoded) text; a group
``Friends: a@b, c@d;`` becomes a start marker ``[None, None, "Friends", None]``, its members,
and an end marker ``[None, None, None, None]``. The parser is lenient: real headers are
often broken, and a garbled address must still yield something rather than fail the message.
"""

from __future__ import annotations

import re
from typing import Final

Address = list[str | None]

MAX_ADDRESSES: Final = 1000

_TOKEN_RE: Final = re.compile(
    r'"(?P<q>(?:[^"\\]|\\.)*)"?'  # quoted string (unterminated tolerated)
    r"|(?P<c>\()"  # comment start: handled by _skip_comment
    r"|<(?P<angle>[^>]*)>?"  # angle address
    r"|(?P<s>[,:;@.])"
    r"|(?P<a>[^\s\"(),:;<>@.\[\]]+|\[[^\]]*\]?)"  # atom or domain literal
    r"|(?P<ws>\s+)"
    r"|(?P<other>.)",
    re.S,
)


def _skip_comment(text: str, pos: int) -> tuple[int, str]:
    """Skip a (possibly nested) comment starting after ``(``; return (end, text)."""
    depth, start = 1, pos
    while pos < len(text) and depth:
        ch = text[pos]
        if ch == "\\":
            pos += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        pos += 1
    return pos, text[start : pos - 1 if depth == 0 else pos]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text) and len(out) < MAX_ADDRESSES * 8:
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # pragma: no cover - the pattern matches any character
            break
        kind = m.lastgroup or "other"
        pos = m.end()
        if kind == "c":
            pos, comment = _skip_comment(text, pos)
            out.append(("c", comment))
        elif kind == "q":
            out.append(("q", re.sub(r"\\(.)", r"\1", m.group("q"))))
        elif kind != "ws":
            out.append((kind, m.group(kind)))
    return out


def _addr_spec(text: str) -> tuple[str, str]:
    """Split ``local@host`` (after an optional source route, which we drop into adl)."""
    local, at, host = text.strip().rpartition("@")
    if not at:
        return text.strip(), ""
    return local, host


def _phrase(words: list[tuple[str, str]]) -> str | None:
    text = " ".join(value for kind, value in words if kind != "c")
    return text or None


def _spec_text(words: list[tuple[str, str]]) -> str:
    parts = []
    for kind, value in words:
        if kind == "q":
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif kind != "c":
            parts.append(value)
    return "".join(parts)


def _mailbox_from_words(words: list[tuple[str, str]], angle: str | None) -> Address | None:
    if angle is not None:
        route, colon, spec = angle.rpartition(":")
        local, host = _addr_spec(spec)
        adl = route.strip() if colon and route.strip() else None
        return [_phrase(words), adl, local, host]
    if not words:
        return None
    comments = [v for k, v in words if k == "c"]
    local, host = _addr_spec(_spec_text(words))
    if not local and not host:
        return None
    name = comments[0].strip() if comments and comments[0].strip() else None
    return [name, None, local, host]


def parse_address_list(text: str) -> list[Address] | None:
    """An envelope address list, or None (NIL) when there are no addresses."""
    result: list[Address] = []
    words: list[tuple[str, str]] = []
    angle: str | None = None
    in_group = False
    for kind, value in [*_tokens(text), ("s", ",")]:
        if len(result) >= MAX_ADDRESSES:
            break
        if kind == "angle":
            angle = value
        elif kind == "s" and value == ":" and angle is None and not in_group:
            result.append([None, None, _phrase(words) or "", None])
            in_group, words = True, []
        elif kind == "s" and value in ",;":
            address = _mailbox_from_words(words, angle)
            if address is not None:
                result.append(address)
            words, angle = [], None
            if value == ";" and in_group:
                result.append([None, None, None, None])
                in_group = False
        elif angle is None:
            words.append((kind, value))
    if in_group:
        result.append([None, None, None, None])
    return result or None

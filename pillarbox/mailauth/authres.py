"""Authentication-Results header fields (RFC 8601): writing ours, removing forged ones.

Writing is plain formatting of already decided results; every value that came from the
message or the SMTP session is quoted or reduced so it cannot inject header syntax.

Removal follows RFC 8601 §5: a field that claims our authserv-id was not written by us (we
add ours after removing), so it is deleted before the message is stored, wherever it sits
in the header. The authserv-id is the first token of the field, after any comments, and is
compared case-insensitively (it is a domain name, §2.5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LINE = 78

_TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+./=?^_`{|}~@-]+$")  # RFC 2045 token, plus @ and /
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One ``method=result (comment) ptype.property=value ...`` entry."""

    method: str
    result: str
    comment: str = ""
    properties: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode("ascii")


def quote_value(value: str) -> str:
    """A property value as a token when possible, else a quoted-string (RFC 8601 §2.2).

    Values are kept ASCII (RFC 2045 ``value``): anything else, which can only come from a
    malformed or hostile header, becomes "?" so no reader chokes on our header."""
    value = _ascii(_CONTROL_RE.sub("", value))
    if value and _TOKEN_RE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment_text(value: str) -> str:
    """Text safe inside a ( ) comment: no control characters, no unbalanced parentheses."""
    value = _ascii(_CONTROL_RE.sub("", value)).replace("\\", "").replace("(", "[").replace(")", "]")
    return value[:200]


def format_resinfo(info: ResInfo) -> str:
    parts = [f"{info.method}={info.result}"]
    if info.comment:
        parts.append(f"({comment_text(info.comment)})")
    if info.reason:
        parts.append(f"reason={quote_value(info.reason[:200])}")
    parts.extend(f"{name}={quote_value(value)}" for name, value in info.properties if value)
    return " ".join(parts)


def build_header(authserv_id: str, results: Sequence[ResInfo], linesep: bytes = b"\r\n") -> bytes:
    """The complete ``Authentication-Results:`` field, folded, ending in ``linesep``."""
    items = [format_resinfo(r) for r in results] or ["none"]
    lines = [f"Authentication-Results: {authserv_id};"]
    for index, item in enumerate(items):
        text = item + (";" if index < len(items) - 1 else "")
        lines.extend(_fold(text))
    return linesep.join(line.encode("utf-8") for line in lines) + linesep


def _fold(text: str) -> list[str]:
    """Continuation lines (leading space) of at most MAX_LINE where spaces allow."""
    out: list[str] = []
    current = ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > MAX_LINE - 1:
            out.append(" " + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(" " + current)
    return out


# -- parsing and removal -----------------------------------------------------------------


def _skip_cfws(text: str) -> str:
    """Drop leading whitespace and (nested) comments."""
    text = text.lstrip()
    while text.startswith("("):
        depth = 0
        for index, char in enumerate(text):
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    text = text[index + 1 :].lstrip()
                    break
        else:
            return ""
    return text


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results field value ("" if unparseable)."""
    text = _skip_cfws(value)
    if text.startswith('"'):
        end = text.find('"', 1)
        return text[1:end].strip().lower().rstrip(".") if end > 0 else ""
    match = re.match(r"[^\s;()]+", text)
    return match.group(0).lower().rstrip(".") if match else ""


def split_header_block(message: bytes) -> tuple[list[bytes], bytes]:
    """(raw header fields with their folded lines and line endings, rest of the message)."""
    fields: list[bytes] = []
    position = 0
    while position < len(message):
        end = message.find(b"\n", position)
        end = len(message) if end < 0 else end + 1
        line = message[position:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        position = end
    return fields, message[position:]


def strip_authentication_results(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results fields that claim ``authserv_id``."""
    ours = authserv_id.lower().rstrip(".")
    fields, rest = split_header_block(message)
    kept = []
    for raw in fields:
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() == b"authentication-results":
            unfolded = re.sub(rb"\r?\n[ \t]", b" ", value).decode("utf-8", errors="replace")
            if authserv_id_of(unfolded) == ours:
                continue
        kept.append(raw)
    return b"".join(kept) + rest

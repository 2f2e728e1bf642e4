"""Message structure: ENVELOPE and BODYSTRUCTURE data with section offsets (RFC 3501 §7.4.2).

A part is a dict (JSON-ready, stored as is in the mailbox index)::

    {"type": "text", "subtype": "plain", "params": [["charset", "utf-8"]], "id": None,
     "desc": None, "enc": "7BIT", "size": 1234, "lines": 40, "md5": None,
     "disp": ["inline", [["filename", "a.txt"]]] | None, "lang": ["en"] | None, "loc": None,
     "hs": header start, "bs": body start, "end": body end,
     "parts": [...]            # multipart only
     "env": [...], "msg": {...}  # message/rfc822 only: the embedded envelope and body
    }

Offsets are into the CRLF form of the message (see :func:`to_crlf`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from dataclasses import dataclass
from typing import Any, Final

from pillarbox.mime.address import parse_address_list
from pillarbox.mime.headers import FieldList, decode_text, split_fields, split_header, unfold

Part = dict[str, Any]
MAX_DEPTH: Final = 20  # nesting beyond this is treated as an opaque leaf
MAX_PARTS: Final = 2000

_PARAM_RE: Final = re.compile(r'\s*;\s*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))', re.S)
_TOKEN_RE: Final = re.compile(r"\s*([^\s;/]+)\s*(?:/\s*([^\s;]+))?")


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    envelope: list[Any]  # [date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, id]
    structure: Part
    header_end: int  # offset of the body of the top-level message
    sent_date: int | None  # proleptic ordinal of the Date: header's date (SENTON etc.)
    fields: FieldList  # the top-level header split into (lower-case name, raw value)


def to_crlf(data: bytes) -> bytes:
    """``data`` with every line ending as CRLF (bare LF and bare CR converted)."""
    if data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def parse(data: bytes) -> ParsedMessage:
    """Parse a CRLF message; never raises on malformed input."""
    counter = [0]
    top: list[FieldList] = []
    structure = _parse_part(data, 0, len(data), None, 0, counter, top)
    fields = top[0]
    return ParsedMessage(
        envelope=envelope(fields),
        structure=structure,
        header_end=structure["bs"],
        sent_date=sent_date(fields),
        fields=fields,
    )


def sent_date(fields: FieldList) -> int | None:
    """The proleptic ordinal of the date of the first Date: field (SENTON etc.)."""
    for name, value in fields:
        if name == "date":
            try:
                parsed = email.utils.parsedate_tz(unfold(value))
                if parsed is None:
                    return None
                return dt.date(parsed[0], parsed[1], parsed[2]).toordinal()
            except (ValueError, TypeError, OverflowError):
                return None
    return None


def envelope(header: bytes | FieldList) -> list[Any]:
    """ENVELOPE fields from a header block or its split fields (RFC 3501 §7.4.2);
    sender/reply-to default to from."""
    split = split_fields(header) if isinstance(header, bytes) else header
    fields: dict[str, str] = {}
    for name, value in split:
        if name in _ENVELOPE_FIELDS and name not in fields:
            fields[name] = unfold(value)
    addresses = {
        name: parse_address_list(fields[name]) if name in fields else None
        for name in ("from", "sender", "reply-to", "to", "cc", "bcc")
    }
    sender = addresses["sender"] or addresses["from"]
    reply_to = addresses["reply-to"] or addresses["from"]
    return [
        fields.get("date"),
        fields.get("subject"),
        addresses["from"],
        sender,
        reply_to,
        addresses["to"],
        addresses["cc"],
        addresses["bcc"],
        fields.get("in-reply-to"),
        fields.get("message-id"),
    ]


_ENVELOPE_FIELDS: Final = frozenset(
    {
        "date",
        "subject",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "in-reply-to",
        "message-id",
    }
)


def _params(text: str) -> list[list[str]]:
    params: list[list[str]] = []
    for m in _PARAM_RE.finditer(text):
        value = m.group(2) if m.group(2) is not None else m.group(3) or ""
        params.append([m.group(1).lower(), re.sub(r"\\(.)", r"\1", value)])
        if len(params) >= 100:
            break
    return _join_rfc2231(params)


def _join_rfc2231(params: list[list[str]]) -> list[list[str]]:
    """Keep parameters as sent (IMAP passes them through, RFC 3501 §7.4.2)."""
    return params


def _content_type(value: str | None, default: tuple[str, str]) -> tuple[str, str, list[list[str]]]:
    if value is None:
        return default[0], default[1], [["charset", "us-ascii"]] if default[0] == "text" else []
    m = _TOKEN_RE.match(value)
    if m is None or not m.group(2):
        # RFC 2045 §5.2: an unparseable Content-Type means text/plain; charset=us-ascii.
        return "text", "plain", [["charset", "us-ascii"]]
    rest = value[m.end() :]
    return m.group(1).lower(), m.group(2).lower(), _params(rest)


def _disposition(value: str | None) -> list[Any] | None:
    if value is None:
        return None
    m = re.match(r"\s*([^\s;]+)", value)
    if m is None:
        return None
    return [m.group(1).lower(), _params(value[m.end() :]) or None]


def _line_count(data: bytes, start: int, end: int) -> int:
    lines = data.count(b"\n", start, end)
    if end > start and data[end - 1 : end] != b"\n":
        lines += 1
    return lines


def _parse_part(
    data: bytes,
    start: int,
    end: int,
    parent_subtype: str | None,
    depth: int,
    counter: list[int],
    top: list[FieldList] | None = None,
) -> Part:
    counter[0] += 1
    body_start = split_header(data, start, end)
    split = split_fields(data[start:body_start])
    if top is not None:
        top.append(split)  # the caller wants the top-level fields (ENVELOPE, Date, SEARCH)
    fields: dict[str, str] = {}
    for name, value in split:
        if name.startswith("content-") and name not in fields:
            fields[name] = unfold(value)
    # RFC 2046 §5.1.5: in multipart/digest the default is message/rfc822.
    default = ("message", "rfc822") if parent_subtype == "digest" else ("text", "plain")
    ctype, subtype, params = _content_type(fields.get("content-type"), default)
    lang = fields.get("content-language")
    part: Part = {
        "type": ctype,
        "subtype": subtype,
        "params": params,
        "id": fields.get("content-id"),
        "desc": fields.get("content-description"),
        "enc": (fields.get("content-transfer-encoding") or "7BIT").upper(),
        "size": end - body_start,
        "lines": None,
        "md5": fields.get("content-md5"),
        "disp": _disposition(fields.get("content-disposition")),
        "lang": [x.strip() for x in lang.split(",") if x.strip()] if lang else None,
        "loc": fields.get("content-location"),
        "hs": start,
        "bs": body_start,
        "end": end,
    }
    leaf = depth >= MAX_DEPTH or counter[0] >= MAX_PARTS
    if ctype == "multipart" and not leaf:
        boundary = dict((k, v) for k, v in params).get("boundary")
        children = _split_multipart(data, body_start, end, boundary) if boundary else []
        if children:
            part["parts"] = [
                _parse_part(data, s, e, subtype, depth + 1, counter) for s, e in children
            ]
            return part
        # RFC 3501 requires at least one body part; a multipart without any becomes an
        # empty text/plain leaf so the structure stays renderable.
        part.update(type="text", subtype="plain", params=[["charset", "us-ascii"]])
    if ctype == "message" and subtype in ("rfc822", "global") and not leaf:
        inner = _parse_part(data, body_start, end, None, depth + 1, counter)
        part["env"] = envelope(data[inner["hs"] : inner["bs"]])
        part["msg"] = inner
        part["lines"] = _line_count(data, body_start, end)
    elif part["type"] == "text":
        part["lines"] = _line_count(data, body_start, end)
    return part


def _split_multipart(data: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """(start, end) of each body part between the boundary delimiters (RFC 2046 §5.1.1)."""
    try:
        delim = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        delim = b"--" + boundary.encode("utf-8")
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while pos <= end:
        if data.startswith(delim, pos) and (pos == start or data[pos - 2 : pos] == b"\r\n"):
            after = pos + len(delim)
            closing = data.startswith(b"--", after)
            if part_start is not None:
                # The CRLF before the delimiter belongs to the delimiter.
                spans.append((part_start, max(part_start, pos - 2)))
                if len(spans) >= MAX_PARTS:
                    return spans
            if closing:
                return spans
            line_end = data.find(b"\r\n", after, end)
            part_start = end if line_end < 0 else line_end + 2
            pos = part_start
            continue
        nxt = data.find(b"\r\n" + delim, pos, end)
        if nxt < 0:
            break
        pos = nxt + 2
    if part_start is not None and part_start < end:
        spans.append((part_start, end))  # missing close delimiter: the rest is the last part
    return spans


# --- sections (RFC 3501 §6.4.5) --------------------------------------------------------------
def find_part(structure: Part, path: tuple[int, ...]) -> Part | None:
    """The part numbered ``path`` (1-based), or None if there is no such part."""
    node = structure
    for index in path:
        if "msg" in node and node is not structure:
            node = node["msg"]
        children = node.get("parts")
        if children is None:
            # A non-multipart has exactly one part, numbered 1 (its own body).
            if index != 1:
                return None
            continue
        if index > len(children):
            return None
        node = children[index - 1]
    return node


def section_range(
    structure: Part, path: tuple[int, ...], text: str | None
) -> tuple[int, int] | None:
    """Byte range of ``BODY[path.text]``; ``text`` is None, HEADER, TEXT or MIME.

    HEADER.FIELDS(.NOT) use the HEADER range and filter it. None if the section does not exist.
    """
    if not path:
        if text is None:
            return structure["hs"], structure["end"]
        if text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return structure["hs"], structure["bs"]
        if text == "TEXT":
            return structure["bs"], structure["end"]
        return None
    part = find_part(structure, path)
    if part is None:
        return None
    if text is None:
        # BODY[n] of a message/rfc822 part is the whole embedded message.
        return part["bs"], part["end"]
    if text == "MIME":
        if part is structure:
            return part["hs"], part["bs"]
        return part["hs"], part["bs"]
    inner = part.get("msg")
    if inner is None:
        return None  # HEADER/TEXT only apply to message/rfc822 parts
    if text == "TEXT":
        return inner["bs"], inner["end"]
    return inner["hs"], inner["bs"]


def decode_header_text(raw: bytes) -> str:
    return decode_text(raw)

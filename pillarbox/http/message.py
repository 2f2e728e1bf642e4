"""HTTP/1.1 messages: a pure request-head parser and a response renderer.

Only what Pillarbox's small web listeners need (RFC 9110 semantics, RFC 9112 syntax): a
request line, header fields, an optional ``Content-Length`` body. No chunked request bodies
(answered 411), no obsolete line folding, no pipelining: one request per connection. Every
rule that rejects input cites the section that makes it an error. The parser never touches
a socket; ``server.py`` reads bounded bytes and hands them here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 9112 §3.2 origin-form / §3.2.2 absolute-form (http and https only); printable ASCII.
_TARGET_CHARS = re.compile(rb"^[\x21-\x7e]+$")
_ABSOLUTE = re.compile(rb"^https?://([^/?#]+)(.*)$", re.IGNORECASE)
# RFC 9110 §5.5: field-value is visible characters, spaces and tabs (obs-text allowed).
_FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
# RFC 9110 §7.2: Host = uri-host [ ":" port ]; we accept reg-name / IPv4 / [IPv6].
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$")

STATUS_TEXT = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    308: "Permanent Redirect",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request we refuse; ``status`` is the response code to send."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    max_head: int = 8192  # request line + header fields, bytes
    max_target: int = 2048  # request-target, bytes
    max_fields: int = 64
    max_body: int = 65536
    head_timeout: float = 10.0  # seconds for the whole head (slow-loris bound)
    body_timeout: float = 10.0
    write_timeout: float = 10.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded path, always starting with "/"
    query: dict[str, list[str]]
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, list[str]]  # lower-case field name -> values in order
    host: str  # lower-case host without port ("" if the client sent none)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int:
        value = self.header("content-length")
        return int(value) if value is not None else 0


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # Fields that may repeat (Set-Cookie, RFC 6265 §3), after ``headers``.
    repeated: list[tuple[str, str]] = field(default_factory=list)

    def render(self, *, head_only: bool = False) -> bytes:
        """The response bytes; every response closes the connection (RFC 9112 §9.6)."""
        lines = [f"HTTP/1.1 {self.status} {STATUS_TEXT.get(self.status, 'Unknown')}"]
        fields = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Connection": "close",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            **self.headers,
        }
        for name, value in [*fields.items(), *self.repeated]:
            if "\r" in value or "\n" in value:  # never let a value split the header block
                raise ValueError(f"header {name} contains a line break")
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def text_response(status: int, text: str = "") -> Response:
    return Response(status, (text or STATUS_TEXT.get(status, "")).encode() + b"\n")


def parse_head(data: bytes, limits: Limits = Limits()) -> Request:
    """Parse a request head (everything before the empty line, without it).

    Raises HttpError with the status to answer; the body is attached by the caller."""
    if len(data) > limits.max_head:
        raise HttpError(431, "request head too large")
    if b"\r\n" not in data + b"\r\n":
        raise HttpError(400, "no request line")
    lines = data.split(b"\r\n")
    method, target, version = _parse_request_line(lines[0], limits)
    headers = _parse_fields(lines[1:], limits)
    host = _host(headers, version)
    absolute = _ABSOLUTE.match(target)
    if absolute:
        # RFC 9112 §3.2.2: with absolute-form the Host field is replaced by the target's host.
        host = _parse_host(absolute.group(1).decode("ascii"))
        target = absolute.group(2) or b"/"
    if not target.startswith(b"/"):
        raise HttpError(400, "request-target must be origin-form or absolute-form")
    raw_path, _, raw_query = target.decode("ascii").partition("?")
    raw_path = raw_path.partition("#")[0]
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "bad percent-encoding in path") from None
    if "\x00" in path or "\\" in path:
        raise HttpError(400, "bad path")
    _check_length_fields(headers)
    return Request(
        method=method,
        path=path,
        query=parse_qs(raw_query, max_num_fields=20) if raw_query else {},
        version=version,
        headers=headers,
        host=host,
    )


def _parse_request_line(line: bytes, limits: Limits) -> tuple[str, bytes, str]:
    # RFC 9112 §3: request-line = method SP request-target SP HTTP-version (single spaces).
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "bad method")
    if len(target) > limits.max_target:
        raise HttpError(414, "request-target too long")
    if not _TARGET_CHARS.match(target):
        raise HttpError(400, "bad request-target")
    if not re.match(rb"^HTTP/\d\.\d$", version):
        raise HttpError(400, "bad HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1")
    return method.decode("ascii"), target, version.decode("ascii")


def _parse_fields(lines: list[bytes], limits: Limits) -> dict[str, list[str]]:
    if len(lines) > limits.max_fields:
        raise HttpError(431, "too many header fields")
    headers: dict[str, list[str]] = {}
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: obs-fold outside message/http must be rejected (or replaced).
            raise HttpError(400, "obsolete line folding")
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: no whitespace between field name and colon -> 400.
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise HttpError(400, "bad header field value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    return headers


def _host(headers: dict[str, list[str]], version: str) -> str:
    values = headers.get("host", [])
    # RFC 9112 §3.2: a 1.1 request without Host, or with several, gets 400.
    if len(values) > 1 or (version == "HTTP/1.1" and not values):
        raise HttpError(400, "exactly one Host header field is required")
    return _parse_host(values[0]) if values else ""


def _parse_host(value: str) -> str:
    match = _HOST.match(value.strip())
    if not match or (match.group(2) and int(match.group(2)) > 65535):
        raise HttpError(400, "bad Host")
    return match.group(1).lower().rstrip(".")


def _check_length_fields(headers: dict[str, list[str]]) -> None:
    if "transfer-encoding" in headers:
        # We never need a streamed request body; RFC 9110 §15.5.12 lets us ask for a length.
        raise HttpError(411, "send a Content-Length, not Transfer-Encoding")
    lengths = headers.get("content-length", [])
    # RFC 9112 §6.3 (5): an invalid or conflicting Content-Length is unrecoverable.
    if len(set(lengths)) > 1 or any(not v.isdigit() or len(v) > 12 for v in lengths):
        raise HttpError(400, "bad Content-Length")

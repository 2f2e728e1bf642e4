"""The SMTP command grammar: a command line in, a typed command out. Pure, no I/O.

``split_command`` separates the verb from its argument; ``parse_mail``, ``parse_rcpt``,
``parse_helo``, ``parse_auth`` and ``parse_bdat`` turn arguments into frozen dataclasses or
raise :class:`SmtpSyntaxError` carrying the reply to send. Semantics (is this our domain,
may this user send as that address) belong to the session and the delivery policy.

Grammar references: RFC 5321 §4.1.2 (Reverse-path, Forward-path, Mailbox, address-literal),
§4.1.1.11 (esmtp-param), RFC 1870 (SIZE), RFC 6152 (BODY=8BITMIME), RFC 3030 (BDAT,
BINARYMIME), RFC 6531 (SMTPUTF8), RFC 3461 (RET, ENVID, NOTIFY, ORCPT, xtext),
RFC 4954 §5 (AUTH= on MAIL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pillarbox.smtp import codes
from pillarbox.smtp.codes import Reply


class SmtpSyntaxError(Exception):
    """The argument does not parse; ``reply`` says so to the client."""

    def __init__(self, reply: Reply):
        super().__init__(reply.text)
        self.reply = reply


# RFC 5321 §4.5.3.1: local part <= 64 octets, domain <= 255, path <= 256.
MAX_PATH = 256
# RFC 3461 §4.4: ENVID at most 100 characters; §4.2: ORCPT at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# qtextSMTP / quoted-pairSMTP (RFC 5321 §4.1.2), UTF-8 allowed (RFC 6531 §3.3).
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*"
_LABEL += r"[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX_RE = re.compile(rf"^(?:{_DOT_STRING}|{_QUOTED_STRING})@(?:{_DOMAIN}|{_ADDRESS_LITERAL})$")
# A source route (RFC 5321 §4.1.2 "A-d-l"), accepted and ignored (Appendix C).
_SOURCE_ROUTE_RE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
# HELO/EHLO: a domain or an address literal. We also allow "_" which Windows hosts send.
_HELO_RE = re.compile(
    r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,253})|\[[\x21-\x5a\x5e-\x7e]{1,64}\])$"
)
_XTEXT_RE = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
_KEYWORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
_MECHANISM_RE = re.compile(r"^[A-Z0-9_\-]{1,20}$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True, slots=True)
class MailCommand:
    sender: str  # "" is the null reverse-path <>
    size: int | None = None
    body: str = "7BIT"  # 7BIT | 8BITMIME | BINARYMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL | HDRS
    envid: str | None = None  # decoded from xtext


@dataclass(frozen=True, slots=True)
class RcptCommand:
    recipient: str  # a mailbox, or "postmaster" (RFC 5321 §4.1.1.3)
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None  # as received: addr-type;xtext


@dataclass(frozen=True, slots=True)
class AuthCommand:
    mechanism: str
    initial_response: str | None  # None: absent; "=" is the empty response (RFC 4954 §4)


@dataclass(frozen=True, slots=True)
class BdatCommand:
    size: int
    last: bool


def split_command(line: bytes) -> tuple[str, str]:
    """``b"MAIL FROM:<a@b>\\r\\n"`` -> ``("MAIL", "FROM:<a@b>")``.

    UTF-8 is allowed (RFC 6531 addresses); control characters are not."""
    text = line.rstrip(b"\r\n")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise SmtpSyntaxError(codes.SYNTAX_ERROR) from None
    if _CONTROL_RE.search(decoded):
        raise SmtpSyntaxError(codes.SYNTAX_ERROR)
    verb, _, argument = decoded.partition(" ")
    return verb.upper(), argument.strip()


def parse_helo(argument: str) -> str:
    # RFC 5321 §4.1.1.1: EHLO SP ( Domain / address-literal ); extra words are ignored.
    name = argument.split(" ", 1)[0]
    if not name or not _HELO_RE.match(name):
        raise SmtpSyntaxError(codes.BAD_HELO)
    return name


def _split_path(argument: str, prefix: str, bad: Reply) -> tuple[str, list[str]]:
    """``FROM:<path> params`` -> (path without brackets, [param, ...])."""
    if argument[: len(prefix)].upper() != prefix:
        raise SmtpSyntaxError(bad)
    rest = argument[len(prefix) :].lstrip(" ")  # "MAIL FROM: <x>" is common; be liberal
    if not rest.startswith("<"):
        raise SmtpSyntaxError(bad)
    close = rest.find(">")
    if close < 0:
        raise SmtpSyntaxError(bad)
    path = rest[1:close]
    if len(path) > MAX_PATH:
        raise SmtpSyntaxError(bad)
    params = rest[close + 1 :].split()
    if rest[close + 1 : close + 2] not in ("", " "):
        raise SmtpSyntaxError(bad)
    return path, params


def _mailbox(path: str, bad: Reply) -> str:
    route = _SOURCE_ROUTE_RE.match(path)
    if route:
        path = path[route.end() :]
    if not _MAILBOX_RE.match(path):
        raise SmtpSyntaxError(bad)
    return path


def _params(items: list[str]) -> dict[str, str | None]:
    """``["SIZE=10", "SMTPUTF8"]`` -> ``{"SIZE": "10", "SMTPUTF8": None}``; no repeats."""
    result: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.upper()
        if not _KEYWORD_RE.match(key) or key in result or (eq and not value):
            raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        result[key] = value if eq else None
    return result


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+HH`` escapes; raises on anything else outside printable ASCII."""
    if not _XTEXT_RE.match(value):
        raise SmtpSyntaxError(codes.PARAM_SYNTAX)
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _is_number(text: str) -> bool:
    # str.isdigit() also accepts "²" and other Unicode digits that int() refuses.
    return text.isascii() and text.isdigit()


def _require_value(value: str | None) -> str:
    if value is None:
        raise SmtpSyntaxError(codes.PARAM_SYNTAX)
    return value


def parse_mail(argument: str) -> MailCommand:
    path, items = _split_path(argument, "FROM:", codes.BAD_SENDER_SYNTAX)
    sender = _mailbox(path, codes.BAD_SENDER_SYNTAX) if path else ""
    params = _params(items)
    size: int | None = None
    body, smtputf8, ret, envid = "7BIT", False, None, None
    for key, value in params.items():
        if key == "SIZE":
            text = _require_value(value)
            if not _is_number(text) or len(text) > 20:
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
            size = int(text)
        elif key == "BODY":
            body = _require_value(value).upper()
            if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        elif key == "SMTPUTF8":
            if value is not None:
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
            smtputf8 = True
        elif key == "RET":
            ret = _require_value(value).upper()
            if ret not in ("FULL", "HDRS"):
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        elif key == "ENVID":
            envid = xtext_decode(_require_value(value))
            # RFC 3461 §4.4: printable US-ASCII only (it is copied into DSN headers).
            if len(envid) > MAX_ENVID or not all(" " <= c <= "~" for c in envid):
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
        elif key == "AUTH":
            xtext_decode(_require_value(value))  # RFC 4954 §5: accepted, not trusted
        else:
            raise SmtpSyntaxError(codes.UNKNOWN_PARAMETER)
    return MailCommand(sender, size, body, smtputf8, ret, envid)


def parse_rcpt(argument: str) -> RcptCommand:
    path, items = _split_path(argument, "TO:", codes.BAD_RECIPIENT_SYNTAX)
    # RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
    if path.lower() == "postmaster":
        recipient = "postmaster"
    else:
        recipient = _mailbox(path, codes.BAD_RECIPIENT_SYNTAX)
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    for key, value in _params(items).items():
        if key == "NOTIFY":
            words = frozenset(w.upper() for w in _require_value(value).split(","))
            # RFC 3461 §4.1: NEVER alone, or any combination of the three others.
            if not (words == {"NEVER"} or (words and words <= NOTIFY_WORDS)):
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
            notify = words
        elif key == "ORCPT":
            raw = _require_value(value)
            addr_type, semi, encoded = raw.partition(";")
            if not semi or not _KEYWORD_RE.match(addr_type) or len(raw) > MAX_ORCPT:
                raise SmtpSyntaxError(codes.PARAM_SYNTAX)
            xtext_decode(encoded)
            orcpt = raw
        else:
            raise SmtpSyntaxError(codes.UNKNOWN_PARAMETER)
    return RcptCommand(recipient, notify, orcpt)


def parse_auth(argument: str) -> AuthCommand:
    words = argument.split()
    if not 1 <= len(words) <= 2 or not _MECHANISM_RE.match(words[0].upper()):
        raise SmtpSyntaxError(codes.PARAM_SYNTAX)
    return AuthCommand(words[0].upper(), words[1] if len(words) == 2 else None)


def parse_bdat(argument: str) -> BdatCommand:
    # RFC 3030 §2: bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
    words = argument.split()
    if not 1 <= len(words) <= 2 or not _is_number(words[0]) or len(words[0]) > 18:
        raise SmtpSyntaxError(codes.PARAM_SYNTAX)
    if len(words) == 2 and words[1].upper() != "LAST":
        raise SmtpSyntaxError(codes.PARAM_SYNTAX)
    return BdatCommand(int(words[0]), len(words) == 2)

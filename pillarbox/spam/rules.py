"""The named rules: pure functions from what we know about a message to scored hits.

Each rule has a name (upper case, as SpamAssassin and rspamd name theirs, so a user's Sieve
script or a mail admin's grep can key on it) and a weight; a hit may carry a short detail.
Nothing here does I/O: the DNS answers and the authentication verdict are handed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_tz

# The Generic Test for Unsolicited Bulk Email: any filter must call it spam.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

WEIGHTS: dict[str, float] = {
    "GTUBE": 1000.0,
    # Mail authentication (RFC 7208, RFC 6376, RFC 7489); results computed by mailauth.
    # Moderate, as rspamd's: a forwarder or a mailing list breaks SPF (and then DMARC) for
    # honest mail, and a domain owner who publishes p=none asked for no action.
    "SPF_FAIL": 2.0,
    "SPF_SOFTFAIL": 1.0,
    "SPF_PASS": -0.5,
    "DKIM_INVALID": 1.0,
    "DKIM_VALID": -0.5,
    "DMARC_FAIL": 1.5,
    "DMARC_QUARANTINE": 2.5,  # on top of DMARC_FAIL: the domain owner asked for it
    "DMARC_PASS": -1.0,
    "ARC_PASS": -0.5,
    # The client.
    "DNSBL_LISTED": 5.0,  # per list
    "RDNS_NONE": 1.5,
    "HELO_IP_LITERAL": 0.5,
    "HELO_NOT_FQDN": 1.5,
    "HELO_FORGED_OURS": 4.0,
    # Header fields.
    "MISSING_FROM": 2.0,
    "MISSING_DATE": 1.0,
    "MISSING_MESSAGE_ID": 1.0,
    "MISSING_SUBJECT": 0.5,
    "DATE_INVALID": 1.0,
    "FROM_DISPLAY_ADDRESS_MISMATCH": 1.5,
    "SUBJECT_ALL_CAPS": 1.0,
    "SUBJECT_SPAMMY": 1.5,
    "REPLYTO_DIFFERS_FREEMAIL": 1.0,
    "TO_UNDISCLOSED": 0.5,
    # Body and MIME.
    "HTML_ONLY": 1.0,
    "MIME_EXECUTABLE": 4.0,
    "BODY_SPAMMY_PHRASES": 2.0,
    "BODY_MANY_URLS": 1.0,
    "BODY_URL_IP": 1.5,
}
# Per-user reputation and the classifier (weights scaled by the evidence, see engine).
LEARNED_WEIGHTS: dict[str, float] = {
    "REPUTATION_SENDER": 6.0,
    "REPUTATION_DOMAIN": 3.0,
    "REPUTATION_DKIM": 3.0,
    "BAYES": 6.0,
}


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    points: float
    detail: str = ""


@dataclass(frozen=True)
class ClientFacts:
    """What the SMTP session knew about the client."""

    ip: str
    helo: str
    ptr_names: tuple[str, ...] | None  # None: the lookup failed or was not made
    dnsbl_listed: tuple[str, ...] = ()  # zones that list the client
    our_names: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class AuthFacts:
    """The mail authentication results (from mailauth's verdict), as plain strings."""

    spf: str = "none"
    dkim: tuple[tuple[str, str], ...] = ()  # (result, d=) per signature
    dmarc: str = "none"
    dmarc_disposition: str = "none"
    arc: str = "none"


def hit(name: str, detail: str = "") -> Hit:
    return Hit(name, WEIGHTS[name], detail)


def gtube(head: bytes, body: bytes) -> list[Hit]:
    return [hit("GTUBE")] if GTUBE in body or GTUBE in head else []


def auth_rules(auth: AuthFacts) -> list[Hit]:
    hits: list[Hit] = []
    if auth.spf == "fail":
        hits.append(hit("SPF_FAIL"))
    elif auth.spf == "softfail":
        hits.append(hit("SPF_SOFTFAIL"))
    elif auth.spf == "pass":
        hits.append(hit("SPF_PASS"))
    good = [d for r, d in auth.dkim if r == "pass"]
    if good:
        hits.append(hit("DKIM_VALID", good[0]))
    elif any(r in ("fail", "permerror") for r, _ in auth.dkim):
        hits.append(hit("DKIM_INVALID"))
    if auth.dmarc == "pass":
        hits.append(hit("DMARC_PASS"))
    elif auth.dmarc == "fail":
        hits.append(hit("DMARC_FAIL"))
        if auth.dmarc_disposition in ("quarantine", "reject"):
            hits.append(hit("DMARC_QUARANTINE", auth.dmarc_disposition))
    if auth.arc == "pass":
        hits.append(hit("ARC_PASS"))
    return hits


_IP_LITERAL_RE = re.compile(r"^\[(?:ipv6:)?[0-9a-f:.]+\]$", re.IGNORECASE)


def client_rules(client: ClientFacts) -> list[Hit]:
    hits = [hit("DNSBL_LISTED", zone) for zone in client.dnsbl_listed]
    if client.ptr_names is not None and not client.ptr_names:
        hits.append(hit("RDNS_NONE", client.ip))
    helo = client.helo.lower().rstrip(".")
    if _IP_LITERAL_RE.match(helo):
        hits.append(hit("HELO_IP_LITERAL"))
    elif "." not in helo:
        # RFC 5321 §4.1.1.1: the EHLO argument is the client's FQDN (or an address literal).
        hits.append(hit("HELO_NOT_FQDN", helo[:64]))
    elif helo in client.our_names:
        hits.append(hit("HELO_FORGED_OURS", helo))
    return hits


# -- header fields ---------------------------------------------------------------------------


def parse_fields(head: bytes) -> dict[str, list[str]]:
    """Header fields by lower-case name, unfolded, decoded leniently (first 64 KiB)."""
    text = head[:65536].decode("utf-8", errors="replace")
    fields: dict[str, list[str]] = {}
    name = ""
    for line in re.split(r"\r?\n", text):
        if not line:
            break
        if line[0] in " \t" and name:
            fields[name][-1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        name = key.strip().lower()
        fields.setdefault(name, []).append(value.strip())
    return fields


_ADDR_RE = re.compile(r"<?([^<>\s@]+@[^<>\s@]+?)>?\s*$")
_DISPLAY_ADDR_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_FREEMAIL = frozenset(
    {"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com", "mail.ru", "gmx.com"}
)
_SPAMMY_SUBJECT = re.compile(
    r"\b(viagra|cialis|casino|lottery|winner|free money|bitcoin|crypto profit|"
    r"act now|urgent|100% free|weight loss|cheap meds|congratulations)\b",
    re.IGNORECASE,
)


def address_of(value: str) -> str:
    match = _ADDR_RE.search(value)
    return match.group(1).lower() if match else ""


def header_rules(fields: dict[str, list[str]]) -> list[Hit]:
    hits: list[Hit] = []
    for name, rule in (
        ("from", "MISSING_FROM"),
        ("date", "MISSING_DATE"),
        ("message-id", "MISSING_MESSAGE_ID"),
        ("subject", "MISSING_SUBJECT"),
    ):
        if not fields.get(name):
            hits.append(hit(rule))
    date = fields.get("date")
    if date and parsedate_tz(date[0]) is None:  # RFC 5322 §3.3 date-time, leniently
        hits.append(hit("DATE_INVALID"))
    sender = fields.get("from", [""])[0]
    address = address_of(sender)
    display = sender.partition("<")[0] if "<" in sender else ""
    shown = _DISPLAY_ADDR_RE.findall(display)
    if shown and address and any(s.lower() != address for s in shown):
        hits.append(hit("FROM_DISPLAY_ADDRESS_MISMATCH", shown[0][:80]))
    subject = fields.get("subject", [""])[0]
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 10 and all(c.isupper() for c in letters):
        hits.append(hit("SUBJECT_ALL_CAPS"))
    match = _SPAMMY_SUBJECT.search(subject)
    if match:
        hits.append(hit("SUBJECT_SPAMMY", match.group(0).lower()))
    reply_to = address_of(fields.get("reply-to", [""])[0])
    freemail = reply_to.rpartition("@")[2]
    if reply_to and address and reply_to != address and freemail in _FREEMAIL:
        hits.append(hit("REPLYTO_DIFFERS_FREEMAIL", freemail))
    to = fields.get("to", [""])[0].lower()
    if "undisclosed" in to:
        hits.append(hit("TO_UNDISCLOSED"))
    return hits


# -- body and MIME ---------------------------------------------------------------------------

# The body rules run on a lower-cased copy with case-sensitive patterns that start with a
# literal: an IGNORECASE alternation scans every position with every branch (measured: a
# 4 KiB message took 470 µs that way, 25 µs this way).
_CONTENT_TYPE_RE = re.compile(rb"content-type:[ \t]*([\w.+-]+/[\w.+-]+)")
_EXECUTABLE_RE = re.compile(
    rb"name\*?=\s*\"?[^\"\r\n;]{0,200}\.(exe|scr|pif|bat|cmd|com|js|vbs|jar|msi|hta|lnk)\b"
)
_URL_RE = re.compile(rb"https?://([^/\s\"'<>]+)")
_IP_HOST_RE = re.compile(rb"^\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?$")
SPAMMY_PHRASES = (
    b"click here", b"unsubscribe now", b"limited time offer", b"risk-free", b"risk free",
    b"wire transfer", b"claim your prize", b"no prescription", b"verify your account",
    b"million dollars", b"you have been selected",
)  # fmt: skip


def content_types(text: bytes) -> set[bytes]:
    """The media types of Content-Type fields (at the start of a line) in ``text``."""
    return {
        m.group(1)
        for m in _CONTENT_TYPE_RE.finditer(text)
        if m.start() == 0 or text[m.start() - 1] == 0x0A
    }


def body_rules(head: bytes, body: bytes) -> list[Hit]:
    """``body`` is a sample (the first part of the body: the rules look at its start)."""
    hits: list[Hit] = []
    text = body.lower()
    types = content_types(head.lower())
    if b"content-type:" in text:  # MIME parts
        types |= content_types(text)
    if b"text/html" in types and b"text/plain" not in types:
        hits.append(hit("HTML_ONLY"))
    match = _EXECUTABLE_RE.search(text) if b"name" in text else None
    if match:
        hits.append(hit("MIME_EXECUTABLE", match.group(1).decode("ascii")))
    phrases = {p.replace(b"risk free", b"risk-free") for p in SPAMMY_PHRASES if p in text}
    if len(phrases) >= 2:
        hits.append(hit("BODY_SPAMMY_PHRASES", ",".join(sorted(p.decode() for p in phrases))))
    hosts = _URL_RE.findall(text) if b"http" in text else []
    if len(hosts) >= 10:
        hits.append(hit("BODY_MANY_URLS", str(len(hosts))))
    if any(_IP_HOST_RE.match(h) for h in hosts):
        hits.append(hit("BODY_URL_IP"))
    return hits


def total(hits: Iterable[Hit]) -> float:
    return round(sum(h.points for h in hits), 2)

"""Delivery status notifications (RFC 3464 reports, RFC 3461 semantics, RFC 6522 container).

A DSN is a multipart/report with three parts: a human-readable explanation, the
machine-readable message/delivery-status (one block per recipient, quoting the remote
server's reply in Diagnostic-Code), and the original message (message/rfc822) or only its
header (text/rfc822-headers), as the sender's RET asked (RFC 3461 §4.3).

Who gets a report (RFC 3461 §4.1): a recipient with NOTIFY=NEVER never causes one; NOTIFY
given without FAILURE/DELAY/SUCCESS suppresses that kind; no NOTIFY means FAILURE and DELAY.
Reports go to the envelope sender and are sent from the null sender, and a message from the
null sender never gets one (RFC 5321 §4.5.5, §6.1: no bounce loops).
"""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_RETURNED_FULL = 256 * 1024  # without RET, return the full message up to this size
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RecipientReport:
    address: str
    action: str  # failed | delayed | delivered | relayed | expanded (RFC 3464 §2.3.3)
    status: str  # RFC 3463 code, e.g. 5.1.1
    diagnostic: str | None = None  # the remote reply, e.g. "550 5.1.1 no such user"
    remote_mta: str | None = None
    orcpt: str | None = None
    last_attempt: float | None = None
    explanation: str | None = None  # our own words when there is no remote reply


def wants_report(notify: frozenset[str], action: str) -> bool:
    """Whether a recipient's NOTIFY asks for a report of kind ``action`` (RFC 3461 §4.1)."""
    if "NEVER" in notify:
        return False
    if not notify:
        return action in ("failed", "delayed")
    wanted = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS"}
    return wanted.get(action, "") in notify


def status_of(reply: str, permanent: bool) -> str:
    """The RFC 3463 status of a reply ("550 5.1.1 ..." or our own "5.1.10 ...") or, when it
    has none, the generic one for its class."""
    words = reply.split()
    if words and _is_status(words[0]):
        return words[0]
    if len(words) >= 2 and words[0][:1] in "245" and _is_status(words[1]):
        return words[1]
    if words and words[0][:1] in "45" and words[0].isdigit():
        return f"{words[0][0]}.0.0"
    return "5.0.0" if permanent else "4.0.0"


def _is_status(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and parts[0] in ("2", "4", "5") and all(p.isdigit() for p in parts)


def decode_xtext(value: str) -> str:
    """RFC 3461 §4: "+XX" hex escapes."""
    out = []
    i = 0
    while i < len(value):
        if value[i] == "+" and _hex2(value[i + 1 : i + 3]):
            out.append(chr(int(value[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _hex2(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=False)


def _clean(text: str) -> str:
    """One header-safe line: no CR/LF, no control characters."""
    return "".join(c if c >= " " or c == "\t" else " " for c in text).strip()


def _field(name: str, value: str) -> str:
    """``Name: value`` folded at spaces near 78 columns (RFC 5322 §2.2.3)."""
    words = _clean(value).split(" ")
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > 78 and current.strip() != f"{name}:":
            lines.append(current)
            current = " "
        current = f"{current} {word}" if current != " " else f" {word}"
    lines.append(current)
    return "\r\n".join(lines)


def header_block(original: bytes) -> bytes:
    """The header section of a message (up to the blank line), CRLF line ends."""
    end = len(original)
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = original.find(sep)
        if pos != -1:
            end = min(end, pos)
    head = original[: min(end, MAX_HEADER_BYTES)]
    return b"\r\n".join(head.replace(b"\r\n", b"\n").split(b"\n")) + b"\r\n"


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}

_EXPLANATIONS = {
    "failed": (
        "I'm sorry to have to inform you that your message could not be delivered to one or "
        "more recipients. The reason is given below for each recipient."
    ),
    "delayed": (
        "This is a warning only; you do not need to resend your message. Delivery to the "
        "following recipients has been delayed; the mail system will keep trying until "
        "{until}."
    ),
    "relayed": (
        "Your message was delivered to the following recipients' mail system, which does not "
        "send delivery reports itself; this is the last report you will get."
    ),
    "delivered": "Your message was delivered to the following recipients.",
}


def build_dsn(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    reports: Sequence[RecipientReport],
    original: bytes,
    arrival: float,
    envid: str | None = None,
    ret: str | None = None,
    retry_until: float | None = None,
    now: float | None = None,
) -> bytes:
    """The complete DSN message (CRLF line ends), addressed to ``sender``.

    ``original`` is the returned content: pass the full message when it may be returned,
    it is cut down to the header here when RET=HDRS, the report is a delay warning, or it
    is large without RET."""
    now = time.time() if now is None else now
    action = reports[0].action
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    mailer_daemon = f"MAILER-DAEMON@{hostname}"
    headers = [
        _field("From", f"Mail Delivery System <{mailer_daemon}>"),
        _field("To", f"<{sender}>"),
        _field("Subject", _SUBJECTS.get(action, "Delivery Status Notification")),
        _field("Date", _date(now)),
        _field("Message-ID", f"<{queue_id}.{int(now)}.{secrets.token_hex(4)}@{hostname}>"),
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: never auto-answer this
        "MIME-Version: 1.0",
        _field(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    human = _human_part(hostname, action, reports, retry_until)
    status = _status_part(hostname, queue_id, reports, arrival, envid, retry_until)
    full = ret == "FULL" or (ret is None and len(original) <= MAX_RETURNED_FULL)
    if action == "failed" and full:
        returned_type, returned = "message/rfc822", original
    else:
        returned_type, returned = "text/rfc822-headers", header_block(original)
    if not returned.endswith(b"\n"):
        returned += b"\r\n"
    b = boundary.encode()
    out = [
        "\r\n".join(headers).encode("utf-8"),
        b"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n",
        b"--" + b + b"\r\nContent-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        human.encode("utf-8"),
        b"\r\n--" + b + b"\r\nContent-Description: Delivery report\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n",
        status.encode("utf-8"),
        b"\r\n--" + b + b"\r\nContent-Description: Undelivered message\r\n"
        b"Content-Type: " + returned_type.encode() + b"\r\n\r\n",
        returned,
        b"\r\n--" + b + b"--\r\n",
    ]
    return b"".join(out)


def _human_part(
    hostname: str, action: str, reports: Sequence[RecipientReport], retry_until: float | None
) -> str:
    intro = _EXPLANATIONS.get(action, "").format(
        until=_date(retry_until) if retry_until else "the message expires"
    )
    lines = [f"This is the mail system at host {hostname}.", "", intro, ""]
    for r in reports:
        where = f" (from {r.remote_mta})" if r.remote_mta else ""
        reason = _clean(r.diagnostic or r.explanation or r.status)
        lines.append(_clean(f"<{r.address}>: {reason}{where}"))
    return "\r\n".join(lines) + "\r\n"


def _status_part(
    hostname: str,
    queue_id: str,
    reports: Sequence[RecipientReport],
    arrival: float,
    envid: str | None,
    retry_until: float | None,
) -> str:
    # RFC 3464 §2.2: per-message fields, then one block per recipient (§2.3).
    blocks = [
        [
            _field("Reporting-MTA", f"dns; {hostname}"),
            _field("X-Pillarbox-Queue-ID", queue_id),
            *([_field("Original-Envelope-Id", envid)] if envid else []),
            _field("Arrival-Date", _date(arrival)),
        ]
    ]
    for r in reports:
        block = [_field("Final-Recipient", f"rfc822; {r.address}")]
        if r.orcpt:
            addr_type, _, value = r.orcpt.partition(";")
            block.append(_field("Original-Recipient", f"{addr_type}; {decode_xtext(value)}"))
        block += [_field("Action", r.action), _field("Status", r.status)]
        if r.remote_mta:
            block.append(_field("Remote-MTA", f"dns; {r.remote_mta}"))
        if r.diagnostic:
            block.append(_field("Diagnostic-Code", f"smtp; {r.diagnostic}"))
        if r.last_attempt:
            block.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
        if r.action == "delayed" and retry_until:
            block.append(_field("Will-Retry-Until", _date(retry_until)))
        blocks.append(block)
    return "\r\n\r\n".join("\r\n".join(b) for b in blocks) + "\r\n"

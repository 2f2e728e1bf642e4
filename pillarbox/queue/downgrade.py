"""8-bit to 7-bit MIME conversion for peers without 8BITMIME (RFC 6152 §3, RFC 2045).

RFC 6152 lets a relay facing a server without 8BITMIME either convert the message to 7 bit
or bounce it. We convert when the conversion is lossless: every 8-bit leaf body is
re-encoded (text as quoted-printable, the rest as base64) and containers whose
Content-Transfer-Encoding said 8bit/binary say 7bit. Header fields with raw 8-bit octets
cannot be converted without rewriting them (RFC 2047) and would need SMTPUTF8 anyway: such
a message is refused with :class:`DowngradeError` and the caller bounces it (5.6.3).

Converting changes the body, so a DKIM signature over the original no longer verifies: the
queue strips the signatures it added (they are the leading DKIM-Signature fields) and signs
the converted message again (see ``OutboundQueue._downgraded``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from email import encoders
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

_POLICY = compat32.clone(linesep="\r\n")
_EIGHT_BIT_CTE = ("8bit", "binary")


class DowngradeError(ValueError):
    """The message cannot be converted to 7 bit without losing information."""


def header_section(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = message.find(sep)
        if pos != -1:
            return message[:pos]
    return message


def strip_leading_signatures(message: bytes, domains: Iterable[str]) -> bytes:
    """Remove the DKIM-Signature fields at the very top whose d= is one of ``domains``
    (the ones the queue prepended at enqueue); any later or foreign signature stays."""
    wanted = {d.lower() for d in domains}
    lines = message.split(b"\n")
    i = 0
    while i < len(lines) and lines[i][:15].lower() == b"dkim-signature:":
        end = i + 1
        while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
            end += 1
        field = b" ".join(line.strip() for line in lines[i:end])
        if _signing_domain(field) not in wanted:
            break
        i = end
    return b"\n".join(lines[i:])


def _signing_domain(field: bytes) -> str:
    value = field.partition(b":")[2].decode("ascii", errors="replace")
    for tag in value.split(";"):
        name, _, tag_value = tag.strip().partition("=")
        if name.strip() == "d":
            return "".join(tag_value.split()).lower()
    return ""


def to_7bit(message: bytes) -> bytes:
    """The message with every 8-bit body re-encoded; raises DowngradeError."""
    msg = BytesParser(policy=compat32).parsebytes(message)
    if not msg.get("MIME-Version"):
        # A plain RFC 5322 message with 8-bit text: make it a MIME text part first.
        msg["MIME-Version"] = "1.0"
        if not msg.get("Content-Type"):
            body = msg.get_payload(decode=True)
            charset = "utf-8" if _is_utf8(body) else "unknown-8bit"
            msg["Content-Type"] = f"text/plain; charset={charset}"
    for part in msg.walk():
        _check_headers(part)
        if part.is_multipart() or part.get_content_maintype() == "message":
            if str(part.get("Content-Transfer-Encoding", "")).lower() in _EIGHT_BIT_CTE:
                part.replace_header("Content-Transfer-Encoding", "7bit")
            continue
        _encode_leaf(part)
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(msg)
    result = out.getvalue()
    if not result.isascii():
        raise DowngradeError("8-bit data left after conversion (malformed MIME structure)")
    return result


def _check_headers(part: Message) -> None:
    for name, value in part.items():
        if not (name.isascii() and str(value).isascii()):
            raise DowngradeError(f"8-bit octets in the {name} header field")


def _encode_leaf(part: Message) -> None:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes) or data.isascii():
        return
    del part["Content-Transfer-Encoding"]
    part.set_payload(data)
    if part.get_content_maintype() == "text":
        encoders.encode_quopri(part)
    else:
        encoders.encode_base64(part)


def _is_utf8(data: object) -> bool:
    if not isinstance(data, bytes):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

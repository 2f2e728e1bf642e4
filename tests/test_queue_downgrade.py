"""8-bit -> 7-bit MIME conversion for peers without 8BITMIME (pillarbox.queue.downgrade)."""

from __future__ import annotations

import email
import email.policy

import pytest

from pillarbox.queue.downgrade import DowngradeError, strip_leading_signatures, to_7bit

TEXT = "Grüße aus Köln.\r\n.leading dot\r\ntrailing space \r\n".encode()
BINARY = bytes(range(256)) * 4

MULTIPART = (
    b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\npreamble\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + TEXT
    + b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + BINARY
    + b"\r\n--XX\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"From: c@x\r\nSubject: inner\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Füße\r\n".encode() + b"--XX--\r\n"
)


def leaves(raw: bytes) -> list[tuple[str, bytes]]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [
        (p.get_content_type(), p.get_payload(decode=True))
        for p in msg.walk()
        if not p.is_multipart() and p.get_content_maintype() != "message"
    ]


def test_multipart_converted_losslessly() -> None:
    out = to_7bit(MULTIPART)
    assert out.isascii()
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    before, after = leaves(MULTIPART), leaves(out)
    assert [t for t, _ in after] == ["text/plain", "application/octet-stream", "text/plain"]
    assert before[0][1] == TEXT.removesuffix(b"\r\n")
    assert after[0][1].replace(b"\r\n", b"\n").rstrip(b"\n") == TEXT.replace(b"\r\n", b"\n").rstrip(
        b"\n"
    )
    assert after[1][1].rstrip(b"\r\n") == BINARY
    assert after[2][1].rstrip(b"\r\n") == "Füße".encode()
    parsed = email.message_from_bytes(out)
    assert parsed["Subject"] == "hi"
    inner = next(p for p in parsed.walk() if p.get_content_type() == "message/rfc822")
    assert inner["Content-Transfer-Encoding"] == "7bit"


def test_plain_message_becomes_mime() -> None:
    raw = b"From: a@x\r\nSubject: s\r\n\r\n" + "naïve\r\n".encode()
    out = to_7bit(raw)
    msg = email.message_from_bytes(out)
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_payload(decode=True).decode("utf-8").strip() == "naïve"


def test_eight_bit_header_cannot_be_converted() -> None:
    raw = "From: a@x\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    with pytest.raises(DowngradeError, match="Subject"):
        to_7bit(raw)


def test_seven_bit_message_is_unchanged_in_content() -> None:
    raw = b"From: a@x\r\nSubject: s\r\nMIME-Version: 1.0\r\n\r\nhello\r\n"
    assert email.message_from_bytes(to_7bit(raw)).get_payload() == "hello\r\n"


def test_strip_only_our_leading_signatures() -> None:
    ours = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=a;\r\n b=abc\r\n"
    ours2 = b"DKIM-Signature: v=1; a=ed25519-sha256; d=Example.Test; s=b; b=def\r\n"
    foreign = b"DKIM-Signature: v=1; d=other.test; s=x; b=ghi\r\n"
    body = b"From: a@example.test\r\n\r\nhi\r\n"
    assert strip_leading_signatures(ours + ours2 + body, ["example.test"]) == body
    assert strip_leading_signatures(foreign + ours + body, ["example.test"]) == (
        foreign + ours + body
    )
    later = b"From: a@example.test\r\n" + ours + b"\r\nhi\r\n"
    assert strip_leading_signatures(later, ["example.test"]) == later

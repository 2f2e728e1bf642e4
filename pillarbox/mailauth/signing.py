"""DKIM signing of outgoing mail (RFC 6376, RFC 8463) with dkimpy.

``sign(message, domain, keys) -> bytes`` returns the DKIM-Signature header fields to put in
front of ``message``; one per key, normally rsa-sha256 and ed25519-sha256 (see keys.py for
why both). The message itself is not touched: the caller prepends the result and must not
change the body afterwards. Both signatures use relaxed/relaxed canonicalisation
(RFC 6376 §3.4.2, §3.4.4), which survives the header refolding and trailing-whitespace
changes relays commonly make.

Which headers are signed (RFC 6376 §5.4.1 recommends the set, §8.15 explains oversigning):
every present header from :data:`SIGNED_HEADERS`, as many times as it occurs, and then the
headers in :data:`OVERSIGNED_HEADERS` once more, present or not. The extra entry matches an
empty header at verification time, so a relay that adds a second From, Subject, To, ... (the
classic DKIM replay trick) breaks the signature.

Signing costs an RSA operation and a pass over the body: call :func:`sign_async` from the
event loop, which runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import dkim

from pillarbox.mailauth.keys import DkimKey

SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "content-language", "in-reply-to", "references",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-message-id", "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post",
    "list-subscribe", "list-post", "list-owner", "list-archive", "autocrypt",
    "openpgp", "feedback-id",
)  # fmt: skip

OVERSIGNED_HEADERS: tuple[str, ...] = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "in-reply-to", "references",
    "list-unsubscribe", "list-unsubscribe-post",
)  # fmt: skip


class SigningError(Exception):
    """The message cannot be signed (no From header, unreadable key, ...)."""


def header_names(message: bytes) -> list[str]:
    """Lower-case names of the header fields of ``message``, in order (parser only)."""
    names = []
    for line in message.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue  # continuation of the previous field
        name, sep, _ = line.partition(b":")
        if sep:
            names.append(name.strip().decode("ascii", errors="replace").lower())
    return names


def headers_to_sign(names: Sequence[str]) -> list[str]:
    present = [name for name in names if name in SIGNED_HEADERS]
    return present + list(OVERSIGNED_HEADERS)


def sign(message: bytes, domain: str, keys: Sequence[DkimKey]) -> bytes:
    """DKIM-Signature fields for ``message``, one per key, with the message's line ending."""
    names = header_names(message)
    if "from" not in names:
        raise SigningError("message has no From header (RFC 6376 §5.4 requires signing it)")
    include = [name.encode("ascii") for name in headers_to_sign(names)]
    linesep = b"\r\n" if b"\r\n" in message.split(b"\n\n", 1)[0] + b"\n" else b"\n"
    out = []
    for key in keys:
        signer = dkim.DKIM(message, linesep=linesep)
        try:
            field = signer.sign(
                key.selector.encode("ascii"),
                domain.encode("ascii"),
                key.dkimpy_private_key(),
                signature_algorithm=key.signature_algorithm.encode("ascii"),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        except (OSError, ValueError, dkim.DKIMException) as exc:
            raise SigningError(f"DKIM signing with {key.dns_name} failed: {exc}") from exc
        out.append(field)
    return b"".join(out)


async def sign_async(message: bytes, domain: str, keys: Sequence[DkimKey]) -> bytes:
    return await asyncio.to_thread(sign, message, domain, keys)

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

Signing costs an RSA operation and a pass over the body: from the event loop call
:func:`sign_async`, or :func:`sign_outgoing`, which also picks the signing domain from the
From header and reads the domain's active keys; both run in a worker thread::

    fields = await sign_outgoing(message, settings.keys_dir, settings.domains)
    message = fields + message   # then never change the body again
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Iterable, Sequence
from pathlib import Path

import dkim

from pillarbox.mailauth.dkimverify import header_fields
from pillarbox.mailauth.keys import DkimKey, active_keys

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
    """Lower-case names of the header fields of ``message``, in order."""
    return [name.decode("ascii", errors="replace").lower() for name, _ in header_fields(message)]


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


def signing_domain(message: bytes, our_domains: Iterable[str]) -> str | None:
    """Which of our domains signs ``message``: the From domain, or the closest parent of it
    that is ours (so DMARC relaxed alignment holds); None if the From is not ours."""
    values = [v for n, v in header_fields(message) if n.lower() == b"from"]
    if len(values) != 1:
        return None
    _name, address = email.utils.parseaddr(values[0].decode("utf-8", errors="replace"))
    domain = address.rpartition("@")[2].lower().rstrip(".")
    ours = {d.lower() for d in our_domains}
    labels = domain.split(".")
    for index in range(len(labels) - 1):
        candidate = ".".join(labels[index:])
        if candidate in ours:
            return candidate
    return None


async def sign_outgoing(message: bytes, keys_dir: Path, our_domains: Iterable[str]) -> bytes:
    """The DKIM-Signature fields for a message we send (b"" when its From is not one of
    our domains or the domain has no keys). Reads the active keys each time, so a
    ``pillarbox dkim rotate`` takes effect from the next message."""
    domain = signing_domain(message, our_domains)
    if domain is None:
        return b""

    def work() -> bytes:
        keys = active_keys(keys_dir, domain)
        return sign(message, domain, keys) if keys else b""

    return await asyncio.to_thread(work)

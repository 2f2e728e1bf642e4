"""DKIM signing at enqueue, and the re-signed 7-bit copy for a peer without 8BITMIME.

A message is signed before any attempt when its From domain is one of ours and the envelope
sender is ours too (or the null sender of our own bounces), so forwarded mail that merely
claims one of our domains in From is not signed by us. Converting to 7 bit (RFC 6152 §3)
changes the body our signature covered, so the copy is signed again.
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
from pathlib import Path

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.mailauth import keys as dkim_keys
from pillarbox.mailauth.signing import SigningError, sign_async
from pillarbox.queue.downgrade import strip_leading_signatures, to_7bit
from pillarbox.queue.parts import join_parts, read_limited, write_parts

_log = log.get("queue")


def from_domains(message: bytes) -> list[str]:
    """Domains of the From header's addresses (first header block only)."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    unfolded = head.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ")
    values = [
        line[5:].decode("utf-8", errors="replace")
        for line in unfolded.split(b"\n")
        if line[:5].lower() == b"from:"
    ]
    return [
        addr.rpartition("@")[2].lower().rstrip(">")
        for _, addr in email.utils.getaddresses(values)
        if "@" in addr
    ]


async def signed(
    settings: Settings, qid: str, sender: str, parts: list[bytes | Path]
) -> tuple[list[bytes | Path], bool]:
    """``parts`` with DKIM-Signature fields in front when the message is ours to sign;
    and whether it was signed."""
    if not settings.mailauth.sign_outbound:
        return parts, False
    ours = set(settings.domains)
    sender_domain = sender.rpartition("@")[2].lower()
    if sender and sender_domain not in ours:
        return parts, False
    data = await asyncio.to_thread(join_parts, parts)
    domain = next((d for d in from_domains(data) if d in ours), None)
    if domain is None:
        return [data], False
    try:
        keys = await asyncio.to_thread(dkim_keys.active_keys, settings.keys_dir, domain)
        if not keys:
            _log.warning("no dkim key, sending unsigned", queue_id=qid, domain=domain)
            return [data], False
        signature = await sign_async(data, domain, keys)
    except (SigningError, OSError, ValueError) as exc:
        _log.warning("dkim signing failed", queue_id=qid, domain=domain, error=str(exc))
        return [data], False
    return [signature, data], True


async def downgraded(settings: Settings, qid: str, sender: str, path: Path, tmp_dir: Path) -> Path:
    """A 7-bit copy of the queued message at ``path``, DKIM-signed again, written into
    ``tmp_dir`` (the caller removes it after the attempt). Raises DowngradeError."""
    original = await asyncio.to_thread(read_limited, path, settings.delivery.max_message_size * 2)
    unsigned = strip_leading_signatures(original, settings.domains)
    converted = await asyncio.to_thread(to_7bit, unsigned)
    parts, _ = await signed(settings, qid, sender, [converted])
    target = tmp_dir / f"{qid}.7bit.{secrets.token_hex(4)}"
    await asyncio.to_thread(write_parts, target, parts)
    return target

"""DKIM (RFC 6376) and ARC (RFC 8617) verification of received mail with dkimpy.

The keys a message needs are known from its headers (``s=`` and ``d=`` of each
DKIM-Signature, ARC-Message-Signature and ARC-Seal), so they are fetched first, concurrently,
through our async resolver; dkimpy then runs in a worker thread (hashing a large body and
RSA verification are CPU work) with a DNS function that only reads the prefetched answers.
Prefetching also keeps what dkimpy would lose: whether a missing key was NXDOMAIN
(permerror) or a DNS failure (temperror), RFC 6376 §6.1.2.

Results use the RFC 8601 §2.7.1 vocabulary: pass, fail, neutral, temperror, permerror
(and "none" for ARC when there is no chain).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver

# Hostile mail can carry any number of signatures; each costs a DNS query and a body hash.
MAX_SIGNATURES = 8
MAX_ARC_SETS = 50  # RFC 8617 §4.2.1: i= is 1..50
MIN_RSA_BITS = 1024  # RFC 8301 §3.2

_log = logging.getLogger("pillarbox.mailauth.dkim")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_SELECTOR_RE = re.compile(rb"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass | fail | neutral | temperror | permerror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    header_b: str  # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""
    identity: str = ""  # i=


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: str  # pass | fail | none | temperror
    instances: int = 0  # how many ARC sets the message carries
    reason: str = ""
    # d= of each ARC-Seal, newest first, for the "show original" view.
    sealers: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _Key:
    value: bytes | None
    temp_error: str = ""


# -- header parsing (no DNS, no crypto) ----------------------------------------------------


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(name, raw value) of every header field, unfolded only as far as needed to parse."""
    fields: list[tuple[bytes, bytes]] = []
    for line in re.split(rb"\r?\n", header_block(message)):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value.strip()))
    return fields


def header_block(message: bytes) -> bytes:
    """The header section, found without copying the (possibly huge) body."""
    if message.startswith((b"\r\n", b"\n")):
        return b""
    end = _HEADER_END_RE.search(message)
    return message[: end.start()] if end else message


def signature_tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        tags = parse_tag_value(value)
    except (InvalidTagValueList, ValueError):
        return None
    return {k: v for k, v in tags.items() if isinstance(v, bytes)}


def key_name(tags: dict[bytes, bytes]) -> str | None:
    """``s._domainkey.d`` or None when s= or d= is missing or not a DNS name."""
    selector = re.sub(rb"\s+", b"", tags.get(b"s", b""))
    domain = re.sub(rb"\s+", b"", tags.get(b"d", b"")).rstrip(b".")
    if not _SELECTOR_RE.match(selector) or not _SELECTOR_RE.match(domain):
        return None
    try:
        return f"{selector.decode('ascii')}._domainkey.{domain.decode('ascii')}".lower()
    except UnicodeDecodeError:
        return None


def _text(tags: dict[bytes, bytes], tag: bytes) -> str:
    return re.sub(rb"\s+", b"", tags.get(tag, b"")).decode("ascii", errors="replace")


# -- DNS ---------------------------------------------------------------------------------


async def _fetch_key(resolver: Resolver, name: str) -> _Key:
    try:
        records = await resolver.txt_bytes(name)
    except DnsTempError as exc:
        return _Key(None, str(exc))
    except DnsNotFound:
        return _Key(None)
    # RFC 6376 §3.6.2.2: several records make the result undefined; we take the first.
    return _Key(records[0])


async def prefetch_keys(resolver: Resolver, names: Iterable[str]) -> dict[str, _Key]:
    unique = sorted(set(names))
    keys = await asyncio.gather(*(_fetch_key(resolver, name) for name in unique))
    return dict(zip(unique, keys, strict=True))


def _dnsfunc(keys: dict[str, _Key]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        key = keys.get(name.decode("ascii", errors="replace").rstrip(".").lower())
        if key is None or key.temp_error:
            raise dkim.DnsTimeoutError(key.temp_error if key else "key was not prefetched")
        return key.value

    return lookup


# -- DKIM --------------------------------------------------------------------------------


async def verify_dkim(message: bytes, resolver: Resolver) -> list[DkimResult]:
    """One result per DKIM-Signature (the first MAX_SIGNATURES), in header order."""
    signatures = [v for n, v in header_fields(message) if n.lower() == b"dkim-signature"]
    parsed = [signature_tags(v) for v in signatures[:MAX_SIGNATURES]]
    if not parsed:
        return []  # most mail on a small MX: no worker thread for nothing to verify
    names = [key_name(tags) for tags in parsed if tags]
    keys = await prefetch_keys(resolver, [n for n in names if n])
    return await asyncio.to_thread(_verify_all, message, parsed, keys)


def _verify_all(
    message: bytes, parsed: list[dict[bytes, bytes] | None], keys: dict[str, _Key]
) -> list[DkimResult]:
    if not parsed:
        return []
    try:
        verifier = dkim.DKIM(message, logger=_log, minkey=MIN_RSA_BITS)
    except dkim.DKIMException as exc:
        return [DkimResult("permerror", "", "", "", "", f"malformed message: {exc}")] * len(parsed)
    return [_verify_one(verifier, index, tags, keys) for index, tags in enumerate(parsed)]


def _verify_one(
    verifier: dkim.DKIM, index: int, tags: dict[bytes, bytes] | None, keys: dict[str, _Key]
) -> DkimResult:
    if tags is None:
        return DkimResult("permerror", "", "", "", "", "unparseable DKIM-Signature")

    def result(outcome: str, reason: str = "") -> DkimResult:
        return DkimResult(
            outcome,
            _text(tags, b"d").lower(),
            _text(tags, b"s"),
            _text(tags, b"a").lower(),
            _text(tags, b"b")[:12],
            reason,
            _text(tags, b"i"),
        )

    name = key_name(tags)
    if name is None:
        return result("permerror", "missing or invalid s= or d=")
    key = keys[name]
    if key.temp_error:
        return result("temperror", f"key lookup failed: {key.temp_error}")
    if key.value is None:
        return result("permerror", f"no key published at {name}")
    try:
        dkim.evaluate_pk(name.encode("ascii"), key.value)
    except (dkim.DKIMException, ValueError) as exc:
        return result("permerror", f"unusable key at {name}: {exc}")
    try:
        ok = verifier.verify(index, dnsfunc=_dnsfunc(keys))
    except dkim.ValidationError as exc:
        # Field syntax problems are permerror; a wrong body hash is a plain failure.
        outcome = "fail" if "body hash" in str(exc) else "permerror"
        return result(outcome, str(exc))
    except (dkim.DKIMException, ValueError, IndexError) as exc:
        return result("permerror", str(exc))
    except Exception as exc:  # dkimpy on hostile input: a broken signature, never a crash
        _log.warning("DKIM verification raised %r", exc)
        return result("permerror", f"verification failed: {exc}")
    return result("pass") if ok else result("fail", "signature did not verify")


# -- ARC ---------------------------------------------------------------------------------


async def verify_arc(message: bytes, resolver: Resolver) -> ArcResult:
    """Chain validation status (RFC 8617 §5.2) of the message's ARC sets."""
    arc = [
        (n.lower(), signature_tags(v))
        for n, v in header_fields(message)
        if n.lower() in (b"arc-seal", b"arc-message-signature")
    ]
    if not arc:
        return ArcResult("none", 0, "no ARC sets")
    if len(arc) > 2 * MAX_ARC_SETS:
        return ArcResult("fail", 0, "too many ARC header fields")
    names = [key_name(tags) for _, tags in arc if tags]
    keys = await prefetch_keys(resolver, [n for n in names if n])
    sealers = tuple(_text(tags, b"d").lower() for n, tags in arc if n == b"arc-seal" and tags)
    status, instances, reason = await asyncio.to_thread(_verify_chain, message, keys)
    if status != "pass" and any(k.temp_error for k in keys.values()):
        return ArcResult("temperror", instances, reason, sealers)
    return ArcResult(status, instances, reason, sealers)


def _verify_chain(message: bytes, keys: dict[str, _Key]) -> tuple[str, int, str]:
    try:
        verifier = dkim.ARC(message, logger=_log, minkey=MIN_RSA_BITS)
        cv, results, reason = verifier.verify(dnsfunc=_dnsfunc(keys))
    except (dkim.DKIMException, ValueError, IndexError) as exc:
        return "fail", 0, str(exc)
    except Exception as exc:  # dkimpy on hostile input: a broken chain, never a crash
        _log.warning("ARC verification raised %r", exc)
        return "fail", 0, f"verification failed: {exc}"
    instances = max((int(r["instance"]) for r in results), default=0)
    # dkimpy returns None when an earlier sealer already recorded cv=fail: still a failure.
    status = cv.decode("ascii") if isinstance(cv, bytes) else "fail"
    return status, instances, str(reason)

"""Authentication of mail arriving on port 25: SPF, DKIM, DMARC, ARC in one call.

API (what the SMTP inbound path and ``pillarbox verify`` use)::

    from pillarbox.mailauth.inbound import authenticate, strip_authentication_results

    verdict = await authenticate(
        message,                    # raw bytes as received (or a Path to read them from)
        ip="192.0.2.1",             # the connecting client's address
        helo="mail.example.org",    # its EHLO/HELO argument
        mail_from="a@example.org",  # the MAIL FROM address ("" for the null sender <>)
        resolver=resolver,          # pillarbox.dns.resolver.Resolver
        authserv_id="mx.example.com",  # our hostname (settings.hostname)
    )
    verdict.spf / verdict.spf_helo   SpfResult (pillarbox.mailauth.spf)
    verdict.dkim                     tuple of DkimResult, one per signature
    verdict.dmarc                    DmarcResult: .result pass|fail|none|temperror|permerror,
                                     .policy (published p=/sp=), .disposition after pct=
    verdict.arc                      ArcResult: .result pass|fail|none|temperror
    verdict.disposition              "none" | "quarantine" | "reject" (DMARC's, to enforce)
    verdict.temperror                True when any check hit a DNS failure
    verdict.header                   b"Authentication-Results: ...\\r\\n" to prepend
    verdict.to_dict()                JSON-ready form (``pillarbox verify --format json``)

    stored = verdict.header + strip_authentication_results(message, authserv_id)

Checks run concurrently; every DNS query goes through ``resolver`` with its timeout, and
the CPU work (body hashes, RSA, pyspf) runs in worker threads, so the event loop is never
blocked. ``authenticate`` does not raise for anything a message or DNS can do: problems
become permerror/temperror results.

Policy is the caller's (issue 6): ``disposition == "reject"`` -> 550 5.7.1 after DATA when
``settings.mailauth.dmarc_reject``; ``"quarantine"`` -> deliver to Junk; a DNS temperror is
never a reason to refuse mail (the verdict says so in the header). DKIM is verified on the
message as received, so strip forged Authentication-Results only after ``authenticate``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pillarbox.dns.resolver import Resolver
from pillarbox.mailauth import dmarc
from pillarbox.mailauth.authres import ResInfo, build_header, strip_authentication_results
from pillarbox.mailauth.dkimverify import (
    ArcResult,
    DkimResult,
    header_fields,
    verify_arc,
    verify_dkim,
)
from pillarbox.mailauth.spf import SpfResult, check_spf, known_spf

__all__ = ["AuthVerdict", "authenticate", "strip_authentication_results"]


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    spf: SpfResult
    spf_helo: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: dmarc.DmarcResult
    arc: ArcResult
    authserv_id: str
    header: bytes

    @property
    def disposition(self) -> str:
        return self.dmarc.disposition

    @property
    def temperror(self) -> bool:
        results = [self.spf.result, self.spf_helo.result, self.dmarc.result, self.arc.result]
        return "temperror" in results + [d.result for d in self.dkim]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spf": asdict(self.spf),
            "spf_helo": asdict(self.spf_helo),
            "dkim": [asdict(d) for d in self.dkim],
            "dmarc": asdict(self.dmarc),
            "arc": {**asdict(self.arc), "sealers": list(self.arc.sealers)},
            "disposition": self.disposition,
            "temperror": self.temperror,
            "authentication_results": self.header.decode("utf-8", errors="replace").rstrip(),
        }


async def authenticate(
    message: bytes | Path,
    *,
    ip: str,
    helo: str,
    mail_from: str,
    resolver: Resolver,
    authserv_id: str,
    sample: Callable[[], float] = random.random,
) -> AuthVerdict:
    """Every verdict for ``message``; see the module docstring."""
    if isinstance(message, Path):
        message = await asyncio.to_thread(message.read_bytes)
    fields = header_fields(message)
    from_domain, from_error = header_from_domain(message, fields)
    names = {name.lower() for name, _ in fields}
    # What is known already (a repeat sender's SPF verdicts, a cached DMARC policy) is
    # taken as it is, and most mail to a small MX is unsigned and unsealed: only the
    # checks left to do run, concurrently when there are several (a task each).
    spf_pair = known_spf(resolver, ip=ip, helo=helo, mail_from=mail_from)
    discovery = dmarc.discover_cached(resolver, from_domain) if from_domain else _NO_POLICY
    dkim_results: list[DkimResult] = []
    arc_result = _NO_ARC
    checks: dict[str, Coroutine[Any, Any, Any]] = {}
    if spf_pair is None:
        checks["spf"] = check_spf(resolver, ip=ip, helo=helo, mail_from=mail_from)
    if b"dkim-signature" in names:
        checks["dkim"] = verify_dkim(message, resolver)
    if names & _ARC_FIELDS:
        checks["arc"] = verify_arc(message, resolver)
    if discovery is None:
        checks["dmarc"] = dmarc.discover(resolver, from_domain)
    done = await _run_all(checks)
    spf_mailfrom, spf_helo = done["spf"] if spf_pair is None else spf_pair
    dkim_results = done.get("dkim", dkim_results)
    arc_result = done.get("arc", arc_result)
    if discovery is None:
        discovery = done["dmarc"]
    if from_error:
        dmarc_result = dmarc.DmarcResult("permerror", from_domain, reason=from_error)
    else:
        dmarc_result = dmarc.evaluate(
            from_domain,
            discovery,
            spf_result=spf_mailfrom.result,
            spf_domain=spf_mailfrom.domain,
            dkim_passes=[d.domain for d in dkim_results if d.result == "pass"],
            dkim_temperror=any(d.result == "temperror" for d in dkim_results),
            sample=sample,
        )
    linesep = b"\r\n" if b"\r\n" in message[:2000] or not message else b"\n"
    header = build_header(
        authserv_id,
        _resinfos(spf_mailfrom, spf_helo, dkim_results, dmarc_result, arc_result, ip),
        linesep,
    )
    return AuthVerdict(
        spf_mailfrom,
        spf_helo,
        tuple(dkim_results),
        dmarc_result,
        arc_result,
        authserv_id,
        header,
    )


_ARC_FIELDS = frozenset((b"arc-seal", b"arc-message-signature", b"arc-authentication-results"))


_NO_ARC = ArcResult("none", 0, "no ARC sets")
_NO_POLICY = dmarc.Discovery(None)


async def _run_all(checks: dict[str, Coroutine[Any, Any, Any]]) -> dict[str, Any]:
    """Each check's result by name: one is awaited as it is, several as tasks at once."""
    if len(checks) <= 1:
        return {name: await check for name, check in checks.items()}
    results = await asyncio.gather(*checks.values())
    return dict(zip(checks, results, strict=True))


def header_from_domain(
    message: bytes, fields: list[tuple[bytes, bytes]] | None = None
) -> tuple[str, str]:
    """(RFC5322.From domain, error); DMARC needs exactly one From with one address (§6.6.1).
    ``fields``: the message's header fields when the caller has them already."""
    values = [
        v.decode("utf-8", errors="replace")
        for n, v in (header_fields(message) if fields is None else fields)
        if n.lower() == b"from"
    ]
    if len(values) != 1:
        return "", f"{len(values)} From header fields (exactly one is required)"
    domains = dmarc.from_domains(values)
    if len(domains) != 1 or not domains[0]:
        return "", "the From header field does not hold exactly one address with a domain"
    return domains[0], ""


def _resinfos(
    spf_mailfrom: SpfResult,
    spf_helo: SpfResult,
    dkim_results: list[DkimResult],
    dmarc_result: dmarc.DmarcResult,
    arc_result: ArcResult,
    ip: str,
) -> list[ResInfo]:
    infos = [
        ResInfo(
            "spf",
            spf_mailfrom.result,
            comment=f"{ip} {spf_mailfrom.explanation}".strip(),
            properties=(("smtp.mailfrom", spf_mailfrom.sender),),
        ),
        ResInfo("spf", spf_helo.result, properties=(("smtp.helo", spf_helo.domain),)),
    ]
    if not dkim_results:
        infos.append(ResInfo("dkim", "none", comment="message not signed"))
    for result in dkim_results:
        infos.append(
            ResInfo(
                "dkim",
                result.result,
                comment=result.reason,
                properties=(
                    ("header.d", result.domain),
                    ("header.s", result.selector),
                    ("header.a", result.algorithm),
                    ("header.b", result.header_b[:8]),
                ),
            )
        )
    infos.append(
        ResInfo(
            "dmarc",
            dmarc_result.result,
            comment=f"p={dmarc_result.policy.upper()} dis={dmarc_result.disposition.upper()}",
            properties=(("header.from", dmarc_result.from_domain),),
        )
    )
    arc_comment = f"i={arc_result.instances}" if arc_result.instances else ""
    infos.append(ResInfo("arc", arc_result.result, comment=arc_comment))
    return infos

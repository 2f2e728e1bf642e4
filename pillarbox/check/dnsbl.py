"""Public DNS blocklists (``[check] dnsbls``) for each of our addresses.

A DNSBL is asked with an A query for the reversed address under the list's zone
(RFC 5782 §2.1): NXDOMAIN means not listed, an address in 127.0.0.0/8 means listed, and the
TXT record beside it says why. Two answers must not be taken for a listing:

- 127.255.255.0/24 is what Spamhaus (and lists built like it) return when they *refuse*
  the query: 127.255.255.252 a malformed query, .254 a query through a public/open resolver
  (8.8.8.8, 1.1.1.1 ...), .255 too many queries. Other checkers have reported "listed on
  Spamhaus" for exactly these; we say the query was refused and how to get an answer.
- anything outside 127.0.0.0/8 (or 127.0.0.1) is not a DNSBL answer: a resolver that
  rewrites NXDOMAIN, or a list that has shut down and now lists everything.
"""

from __future__ import annotations

import asyncio
import ipaddress

from pillarbox.check.context import CheckContext, dns_failure
from pillarbox.check.findings import Finding, Status, finding
from pillarbox.dns.resolver import DnsNotFound, DnsTempError

REFUSED_NET = ipaddress.ip_network("127.255.255.0/24")
LISTED_NET = ipaddress.ip_network("127.0.0.0/8")

SPAMHAUS_CODES = {
    "127.0.0.2": "SBL (spam source)",
    "127.0.0.3": "SBL CSS (snowshoe spam)",
    "127.0.0.4": "XBL (compromised host)",
    "127.0.0.5": "XBL (compromised host)",
    "127.0.0.6": "XBL (compromised host)",
    "127.0.0.7": "XBL (compromised host)",
    "127.0.0.9": "SBL DROP (hijacked network)",
    "127.0.0.10": "PBL (ISP: this range should not send mail directly)",
    "127.0.0.11": "PBL (Spamhaus: this range should not send mail directly)",
}
REFUSED_CODES = {
    "127.255.255.252": "malformed query",
    "127.255.255.254": "query through a public or open resolver",
    "127.255.255.255": "too many queries from this resolver",
}


def query_name(ip: str, zone: str) -> str:
    """1.2.3.4 -> 4.3.2.1.ZONE; IPv6 as reversed nibbles (RFC 5782 §2.4)."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.rstrip(".")


def classify(answers: list[str]) -> tuple[str, list[str]]:
    """("listed" | "refused" | "bogus", codes) for a non-empty A answer."""
    addresses = [ipaddress.ip_address(a) for a in answers]
    refused = [str(a) for a in addresses if a in REFUSED_NET]
    if refused:
        return "refused", refused
    listed = [str(a) for a in addresses if a in LISTED_NET and str(a) != "127.0.0.1"]
    if listed:
        return "listed", listed
    return "bogus", [str(a) for a in addresses]


def _meaning(zone: str, code: str) -> str:
    if code in REFUSED_CODES:
        return REFUSED_CODES[code]
    if zone.endswith("spamhaus.org") and code in SPAMHAUS_CODES:
        return SPAMHAUS_CODES[code]
    return code


async def check_dnsbl(ctx: CheckContext, ip: str, zone: str) -> Finding | None:
    """One list for one address; None when not listed (summarised by the caller)."""
    share = max(len(ctx.addresses.all), 1)
    name = query_name(ip, zone)
    try:
        answers = await ctx.resolver.a(name)
    except DnsNotFound:
        return None
    except DnsTempError as exc:
        return dns_failure(
            "dnsbl",
            exc,
            f"{zone} for {ip}",
            share,
            "retry; if it persists, check that the resolver in [dns] nameservers (or the "
            f"system's) reaches the internet, or remove {zone} from [check] dnsbls",
        )
    verdict, codes = classify(answers)
    meaning = ", ".join(f"{c} = {_meaning(zone, c)}" for c in codes)
    if verdict == "refused":
        return finding(
            "dnsbl",
            Status.WARN,
            f"{zone} refused to answer for {ip} ({meaning}): not a listing, just no answer",
            "query the list from a resolver of your own (unbound on this host, "
            "[dns] nameservers), not a public one; Spamhaus offers a free DQS key otherwise",
            subject=ip,
            share=share,
        )
    if verdict == "bogus":
        return finding(
            "dnsbl",
            Status.WARN,
            f"{zone} answered {meaning} for {ip}, which is not a blocklist answer",
            f"your resolver may rewrite NXDOMAIN, or {zone} is defunct: "
            "remove it from [check] dnsbls",
            subject=ip,
            share=share,
        )
    reason = await _reason(ctx, name)
    return finding(
        "dnsbl",
        Status.FAIL,
        f"{ip} is LISTED on {zone}: {meaning}" + (f" — {reason}" if reason else ""),
        f"follow the list's removal procedure{' (' + reason + ')' if reason else ''}; "
        "first find and stop what sent spam (open relay, a leaked password)",
        subject=ip,
        share=share,
    )


async def _reason(ctx: CheckContext, name: str) -> str:
    try:
        return " ".join(await ctx.resolver.txt(name))[:300]
    except (DnsNotFound, DnsTempError):
        return ""


async def check_blocklists(ctx: CheckContext) -> list[Finding]:
    zones = ctx.settings.check.dnsbls
    if not zones:
        return []
    findings: list[Finding] = []
    for ip in ctx.addresses.all:
        if not ipaddress.ip_address(ip).is_global and not ipaddress.ip_address(ip).is_loopback:
            findings.append(
                finding(
                    "dnsbl",
                    Status.WARN,
                    f"{ip} is a private address: blocklists cannot be checked for it",
                    "set public_ip to the address other servers see",
                    subject=ip,
                    share=len(ctx.addresses.all),
                )
            )
            continue
        results = await asyncio.gather(*(check_dnsbl(ctx, ip, zone) for zone in zones))
        problems = [r for r in results if r is not None]
        findings += problems
        clean = [z for z, r in zip(zones, results, strict=True) if r is None]
        if clean:
            findings.append(
                finding(
                    "dnsbl",
                    Status.PASS,
                    f"{ip} is not listed on {', '.join(clean)}",
                    subject=ip,
                    share=len(ctx.addresses.all),
                )
            )
    return findings

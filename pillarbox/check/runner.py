"""``pillarbox check``: run every check concurrently and gather one report.

Order of work: our public addresses first (config, else the hostname's A/AAAA), since the
reverse DNS, SPF, DNSBL and reachability checks are all about them; then everything else at
once. Each network step has its own timeout, so the whole run takes a few seconds even when
a nameserver or a port is dead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable

from pillarbox import log
from pillarbox.check import dnschecks, mtasts, server
from pillarbox.check.context import CheckContext, public_addresses
from pillarbox.check.dnsbl import check_blocklists
from pillarbox.check.findings import Finding, Report, Status
from pillarbox.check.records import PublicAddresses, RecordSet, build_records
from pillarbox.config import Settings
from pillarbox.dns.resolver import Resolver

_log = log.get("check")


async def run_check(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    mta_sts_policy_text: str | None = None,
    include_server: bool = True,
) -> Report:
    resolver = resolver or Resolver.from_settings(settings.dns, cache=False)
    timeout = settings.check.timeout
    ctx = CheckContext(
        settings,
        resolver,
        PublicAddresses.from_settings(settings),
        RecordSet(settings.hostname, []),
        timeout,
    )
    addresses, address_findings = await public_addresses(ctx)
    ctx.addresses = addresses
    ctx.expected = await asyncio.to_thread(
        build_records, settings, addresses, mta_sts_policy_text=mta_sts_policy_text
    )
    report = Report(settings.hostname, list(address_findings))
    jobs: list[Awaitable[Finding | list[Finding] | None]] = []
    jobs += [dnschecks.check_ptr(ctx, ip) for ip in addresses.all]
    jobs.append(dnschecks.check_helo_spf(ctx))
    for domain in settings.domains:
        jobs += [
            dnschecks.check_mx(ctx, domain),
            dnschecks.check_spf(ctx, domain),
            dnschecks.check_dkim(ctx, domain),
            dnschecks.check_dmarc(ctx, domain),
            mtasts.check_mta_sts(ctx, domain),
            dnschecks.check_tlsrpt(ctx, domain),
            dnschecks.check_client_srv(ctx, domain),
            dnschecks.check_caa(ctx, domain),
        ]
    if include_server:
        jobs.append(server.check_server(ctx))
    jobs.append(check_blocklists(ctx))
    for result in await asyncio.gather(*(_guarded(job) for job in jobs)):
        report.extend(_flatten(result))
    return report


async def _guarded(
    job: Awaitable[Finding | list[Finding] | None],
) -> Finding | list[Finding] | None:
    """A bug or an unforeseen answer in one check becomes a finding, not a lost report."""
    try:
        return await job
    except Exception as exc:
        _log.error("check failed", error=repr(exc), exc_info=True)
        return Finding(
            "internal",
            Status.WARN,
            f"a check could not run: {type(exc).__name__}: {exc}",
            "please report this as a bug, with the output of `pillarbox check --format json`",
            weight=0.0,
        )


def _flatten(result: Finding | list[Finding] | None) -> Iterable[Finding]:
    if result is None:
        return []
    return result if isinstance(result, list) else [result]

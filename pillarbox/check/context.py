"""What every check needs: settings, the resolver, our public addresses, the expected records."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pillarbox.check.findings import Finding, Status, finding
from pillarbox.config import Settings
from pillarbox.dns.records import PublicAddresses, Record, RecordSet, record_line
from pillarbox.dns.resolver import DnsError, DnsNotFound, DnsTempError, Resolver


@dataclass
class CheckContext:
    settings: Settings
    resolver: Resolver
    addresses: PublicAddresses
    expected: RecordSet  # what `pillarbox dns records` says to publish
    timeout: float

    def publish(self, name: str, rdtype: str) -> str:
        """The zone-file line(s) to publish for ``name``/``rdtype``, as a fix."""
        records = self.expected.find(name, rdtype)
        return "\n".join(f"publish: {record_line(r)}" for r in records) or (
            f"publish a {rdtype} record for {name}"
        )


OUR_DNS_FAILING = (
    "retry; if it persists, check that your DNS provider answers for this name "
    "(SERVFAIL or timeouts make other servers defer or reject your mail)"
)


def dns_failure(
    check: str, error: DnsError, subject: str, share: int = 1, fix: str = OUR_DNS_FAILING
) -> Finding:
    """A lookup that did not answer is not a missing record: say which one it is."""
    if isinstance(error, DnsTempError):
        return finding(
            check,
            Status.WARN,
            f"could not check {subject}: DNS lookup failed ({error})",
            fix,
            subject=subject,
            share=share,
        )
    return finding(check, Status.FAIL, f"{subject}: {error}", subject=subject, share=share)


async def public_addresses(ctx: CheckContext) -> tuple[PublicAddresses, list[Finding]]:
    """Our addresses (config first, else the hostname's A/AAAA) and the host.address
    findings: the hostname must resolve to them, per IP family."""
    settings, host = ctx.settings, ctx.settings.hostname
    findings: list[Finding] = []
    found: dict[str, tuple[str, ...]] = {}
    for rdtype, configured in (("A", settings.public_ip), ("AAAA", settings.public_ip6)):
        lookup = ctx.resolver.a if rdtype == "A" else ctx.resolver.aaaa
        try:
            published = tuple(await lookup(host))
        except DnsNotFound:
            published = ()
        except DnsTempError as exc:
            findings.append(dns_failure("host.address", exc, f"{host} {rdtype}", 2))
            found[rdtype] = (configured,) if configured else ()
            continue
        found[rdtype] = (configured,) if configured else published
        findings.extend(_address_findings(ctx, rdtype, configured, published))
    source = "config" if settings.public_ip or settings.public_ip6 else "dns"
    addresses = PublicAddresses(found["A"], found["AAAA"], source)
    if not addresses.all:
        findings.append(
            finding(
                "host.address",
                Status.FAIL,
                f"{host} has no A or AAAA record and no public_ip is configured",
                f"set public_ip in {settings.source or 'pillarbox.toml'} and publish: "
                f"{host}. A <that address>",
                subject=host,
            )
        )
    return addresses, findings


def _address_findings(
    ctx: CheckContext, rdtype: str, configured: str, published: tuple[str, ...]
) -> list[Finding]:
    host = ctx.settings.hostname
    family = "IPv4" if rdtype == "A" else "IPv6"
    key = "public_ip" if rdtype == "A" else "public_ip6"
    if configured and configured in published:
        return [
            finding(
                "host.address", Status.PASS, f"{host} {rdtype} {configured}", subject=host, share=2
            )
        ]
    if configured:
        seen = ", ".join(published) or "nothing"
        return [
            finding(
                "host.address",
                Status.FAIL,
                f"{host} {rdtype} is {seen}, but {key} is {configured}",
                f"publish: {record_line(Record(host + '.', rdtype, configured))}"
                + (" (and remove the others)" if published else ""),
                subject=host,
                share=2,
            )
        ]
    if published:
        return [
            finding(
                "host.address",
                Status.PASS,
                f"{host} {rdtype} {', '.join(published)} ({key} not set: taken from DNS)",
                subject=host,
                share=2,
            )
        ]
    if rdtype == "AAAA":
        return []  # IPv6 is optional; no address of that family means nothing to check
    return [
        finding(
            "host.address",
            Status.WARN,
            f"{host} has no {family} address",
            f"if this server has a public {family} address, set {key} and publish an "
            f"{rdtype} record for {host}",
            subject=host,
            share=2,
        )
    ]


@dataclass(frozen=True)
class Target:
    """Where to reach one listener from outside, and why there."""

    listener: str
    address: str
    port: int
    note: str = ""

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def listener_targets(ctx: CheckContext, name: str) -> list[Target]:
    """Where an outsider would connect to listener ``name``: every public address (both IP
    families: senders use AAAA records too) at the configured port. A listener bound to
    loopback (the dev profile) is tried where it listens, since nothing else can reach it.
    A target the bound address cannot serve says why in its note; connecting tells the
    truth (a NAT may forward it)."""
    enabled = ctx.settings.listen.enabled()
    if name not in enabled:
        return []
    host, port = enabled[name]
    try:
        bound = ipaddress.ip_address(host)
    except ValueError:
        return [Target(name, host, port)]
    public = ctx.addresses
    if bound.is_loopback:
        note = "" if str(bound) in public.all else "loopback only (dev profile)"
        return [Target(name, str(bound), port, note)]
    if not public.all:
        fallback = ("127.0.0.1" if bound.version == 4 else "::1") if bound.is_unspecified else host
        return [Target(name, fallback, port, "no public address known; tried locally")]
    return [Target(name, address, port, _bind_note(bound, address)) for address in public.all]


def _bind_note(bound: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str) -> str:
    family = ipaddress.ip_address(address).version
    if str(bound) == address:
        return ""
    if bound.is_unspecified:
        # "::" accepts IPv4 too on a dual-stack host; "0.0.0.0" never accepts IPv6.
        return "" if bound.version == 6 or family == 4 else IPV4_ONLY
    return f"listens on {bound} only"


IPV4_ONLY = "listens on 0.0.0.0: IPv4 only"

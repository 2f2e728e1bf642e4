"""What every check needs: settings, the resolver, our public addresses, the expected records."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pillarbox.check.findings import Finding, Status, finding
from pillarbox.check.records import PublicAddresses, Record, RecordSet, record_line
from pillarbox.config import Settings
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
    families: senders use AAAA records too), at the port of the bound address that serves
    it. A listener bound to loopback only (the dev profile) is tried where it listens, since
    nothing else can reach it. A public address that no bound address serves says why in
    its note; connecting tells the truth (a NAT may forward it)."""
    bound = [(host, port, _ip_or_none(host)) for host, port in ctx.settings.listen.addresses(name)]
    if not bound:
        return []
    named = [Target(name, host, port) for host, port, ip in bound if ip is None]
    if all(ip is None or ip.is_loopback for _, _, ip in bound):
        public = ctx.addresses.all
        return named + [
            Target(name, str(ip), port, "" if str(ip) in public else "loopback only (dev profile)")
            for _, port, ip in bound
            if ip is not None
        ]
    reachable = [(port, ip) for _, port, ip in bound if ip is not None and not ip.is_loopback]
    if not ctx.addresses.all:
        return named + [_local_fallback(name, port, ip) for port, ip in reachable]
    return named + [_public_target(name, address, reachable) for address in ctx.addresses.all]


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: tried as written


def _serves(bound: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str) -> bool:
    """Whether a socket bound to ``bound`` receives connections to ``address``. An IPv6
    socket is IPv6-only (net/listener.py sets IPV6_V6ONLY): "::" never takes IPv4."""
    wanted = ipaddress.ip_address(address)
    if bound.is_unspecified:
        return bound.version == wanted.version
    return bound == wanted


def _public_target(
    name: str,
    address: str,
    bound: list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]],
) -> Target:
    for port, ip in bound:
        if _serves(ip, address):
            return Target(name, address, port)
    port, ip = bound[0]
    return Target(name, address, port, _bind_note([ip for _, ip in bound], address))


def _local_fallback(
    name: str, port: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Target:
    if ip.is_unspecified:
        ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    return Target(name, str(ip), port, "no public address known; tried locally")


def _bind_note(bound: list[ipaddress.IPv4Address | ipaddress.IPv6Address], address: str) -> str:
    """Why no bound address serves ``address``."""
    family = ipaddress.ip_address(address).version
    if any(ip.is_unspecified for ip in bound):
        return IPV4_ONLY if family == 6 else IPV6_ONLY
    return "listens on " + ", ".join(str(ip) for ip in bound) + " only"


IPV4_ONLY = "listens on 0.0.0.0: IPv4 only"
IPV6_ONLY = "listens on [::]: IPv6 only"

"""The DNS records a Pillarbox deployment publishes: a function of config, keys and addresses.

``pillarbox dns records`` prints them (zone-file syntax or JSON), ``pillarbox init`` prints
them once, and ``pillarbox check`` compares what is published against them. Nothing here
touches the network: the public addresses come from ``public_ip``/``public_ip6`` or are
resolved by the caller and passed in (:class:`PublicAddresses`).

What is published, per RFC:

- the hostname: A/AAAA, an SPF record for the HELO identity (RFC 7208 §2.3), and the PTR
  to ask the hosting provider for (forward-confirmed reverse DNS, RFC 8601 §3 "iprev");
- per domain: MX (RFC 5321 §5.1), SPF (RFC 7208), every published DKIM selector (RFC 6376
  §3.6.2, RFC 8463), DMARC (RFC 7489 §6.3), MTA-STS (RFC 8461 §3.1) with its ``mta-sts``
  host, TLS-RPT (RFC 8460 §3), SRV records for mail clients (RFC 6186 §3, RFC 8314 §5.1),
  autoconfig/autodiscover names, and CAA (RFC 8659) when ACME issues the certificate.

The MTA-STS policy id is derived from the policy text (a SHA-256 prefix), so it changes
exactly when the served policy changes (RFC 8461 §3.1: "id" must change with the policy)
and ``check`` can tell a stale record from a current one. The policy text is defined once,
in ``pillarbox.mailauth.mtasts`` (the HTTPS listener serves it); we hash that same text.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from pillarbox.config import Settings
from pillarbox.mailauth.mtasts import mta_sts_policy, txt_value

TTL = 3600
MX_PREFERENCE = 10

# RFC 6186 / RFC 8314 client services: (SRV label, listener name, priority). RFC 8314 §5.1
# asks that implicit TLS be preferred, so it gets the lower (better) priority.
CLIENT_SERVICES = (
    ("_submissions._tcp", "submissions", 0),
    ("_submission._tcp", "submission", 10),
    ("_imaps._tcp", "imaps", 0),
    ("_imap._tcp", "imap", 10),
    ("_pop3s._tcp", "pop3s", 0),
    ("_pop3._tcp", "pop3", 10),
)

# ACME directory host -> the CAA issuer domain of that CA (RFC 8659 §4.2).
KNOWN_CAA_ISSUERS = {
    "acme-v02.api.letsencrypt.org": "letsencrypt.org",
    "acme-staging-v02.api.letsencrypt.org": "letsencrypt.org",
    "acme.zerossl.com": "sectigo.com",
    "dv.acme-v02.api.pki.goog": "pki.goog",
    "api.buypass.com": "buypass.com",
}


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str  # presentation form of the RDATA (TXT unquoted; split when rendered)
    comment: str = ""
    # "zone": goes into the domain's zone; "provider": a PTR the hosting provider sets.
    where: str = "zone"
    ttl: int = TTL


@dataclass(frozen=True)
class PublicAddresses:
    """The addresses other servers see us at, and where that knowledge came from."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    source: str = "config"  # "config" | "dns" (the hostname's A/AAAA) | "none"

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6

    @classmethod
    def from_settings(cls, settings: Settings) -> PublicAddresses:
        v4 = (settings.public_ip,) if settings.public_ip else ()
        v6 = (settings.public_ip6,) if settings.public_ip6 else ()
        return cls(v4, v6, "config" if v4 or v6 else "none")


@dataclass(frozen=True)
class RecordSet:
    hostname: str
    records: list[Record]
    notes: list[str] = field(default_factory=list)

    def by_type(self, rdtype: str) -> list[Record]:
        return [r for r in self.records if r.type == rdtype]

    def find(self, name: str, rdtype: str) -> list[Record]:
        fq = fqdn(name)
        return [r for r in self.records if r.name == fq and r.type == rdtype]


def fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


# -- record values (also used by `check` to say what to publish) --------------------------------


def spf_value(settings: Settings, addresses: PublicAddresses) -> str:
    """Our SPF policy: the explicit addresses (no DNS lookups) plus ``mx``, which keeps mail
    flowing if the address changes before the record does; "-all" for everything else."""
    terms = [f"ip4:{ip}" for ip in addresses.ipv4] + [f"ip6:{ip}" for ip in addresses.ipv6]
    return " ".join(["v=spf1", *terms, "mx", "-all"])


def host_spf_value() -> str:
    # RFC 7208 §2.3: receivers may check the HELO name; "a" authorises the host itself.
    return "v=spf1 a -all"


def dmarc_value() -> str:
    # Strict alignment: we sign with the domain's own key and send from our own host, so
    # relaxed alignment would only help a forger using a sub-domain.
    return "v=DMARC1; p=reject; adkim=s; aspf=s"


def tlsrpt_value(domain: str) -> str:
    return f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"


def caa_issuer(settings: Settings) -> str | None:
    host = urlsplit(settings.tls.acme_directory).hostname or ""
    return KNOWN_CAA_ISSUERS.get(host)


def ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def _listener_port(settings: Settings, name: str) -> int | None:
    addresses = settings.listen.addresses(name)
    return addresses[0][1] if addresses else None


# -- building -------------------------------------------------------------------------------


def build_records(
    settings: Settings,
    addresses: PublicAddresses | None = None,
    *,
    mta_sts_policy_text: str | None = None,
) -> RecordSet:
    """Every record to publish. ``addresses`` defaults to ``public_ip``/``public_ip6``;
    ``mta_sts_policy_text`` to :func:`mta_sts_policy` (pass what the HTTPS side serves)."""
    addresses = addresses or PublicAddresses.from_settings(settings)
    policy = mta_sts_policy_text if mta_sts_policy_text is not None else mta_sts_policy(settings)
    host = fqdn(settings.hostname)
    result = RecordSet(settings.hostname, [])
    result.records.extend(_host_records(settings, addresses, result.notes))
    for domain in settings.domains:
        result.records.extend(_domain_records(settings, domain, addresses, policy, result.notes))
        result.records.extend(_dkim_records(settings, domain, result.notes))
    for ip in addresses.all:
        result.records.append(
            Record(
                ptr_name(ip),
                "PTR",
                host,
                "reverse DNS: ask your hosting provider to set this",
                where="provider",
            )
        )
    if not any(
        settings.hostname.endswith("." + d) or settings.hostname == d for d in settings.domains
    ):
        result.notes.append(
            f"{settings.hostname} is outside {', '.join(settings.domains)}: publish its "
            "A/AAAA/TXT records in the zone that holds it."
        )
    return result


def _host_records(settings: Settings, addresses: PublicAddresses, notes: list[str]) -> list[Record]:
    host = fqdn(settings.hostname)
    records = [Record(host, "A", ip, "this server, IPv4") for ip in addresses.ipv4]
    records += [Record(host, "AAAA", ip, "this server, IPv6") for ip in addresses.ipv6]
    if not addresses.all:
        notes.append(
            f"no public address known: set public_ip (and public_ip6) in the config, or "
            f"publish A/AAAA records for {settings.hostname} first, then run this again."
        )
    elif addresses.source == "dns":
        notes.append(f"addresses taken from the current DNS of {settings.hostname}.")
    if settings.hostname not in settings.domains:
        records.append(Record(host, "TXT", host_spf_value(), "SPF for the HELO name"))
    if settings.tls.acme and not any(
        settings.hostname == d or settings.hostname.endswith("." + d) for d in settings.domains
    ):
        records.extend(_caa(settings, settings.hostname, notes))
    return records


def _domain_records(
    settings: Settings, domain: str, addresses: PublicAddresses, policy: str, notes: list[str]
) -> list[Record]:
    zone = fqdn(domain)
    host = fqdn(settings.hostname)
    records = [
        Record(zone, "MX", f"{MX_PREFERENCE} {host}", "mail for the domain comes to us"),
        Record(zone, "TXT", spf_value(settings, addresses), "SPF: only this server sends"),
        Record(
            f"_dmarc.{zone}",
            "TXT",
            dmarc_value(),
            "DMARC p=reject: all our mail is DKIM-signed and sent from here, so mail failing "
            "both is forged (add rua=mailto:you@... for daily reports)",
        ),
        Record(f"_mta-sts.{zone}", "TXT", txt_value(policy), "MTA-STS: id = policy hash"),
        Record(
            f"_smtp._tls.{zone}",
            "TXT",
            tlsrpt_value(domain),
            "TLS-RPT: senders report TLS failures here; make sure postmaster reaches you",
        ),
    ]
    if host != f"mta-sts.{zone}":
        records.append(Record(f"mta-sts.{zone}", "CNAME", host, "serves the MTA-STS policy"))
    for label, listener, priority in CLIENT_SERVICES:
        port = _listener_port(settings, listener)
        if port is None:
            # RFC 6186 §4: target "." says the service is decidedly not offered.
            records.append(Record(f"{label}.{zone}", "SRV", "0 0 0 .", f"{listener}: not offered"))
        else:
            records.append(
                Record(f"{label}.{zone}", "SRV", f"{priority} 1 {port} {host}", "mail clients")
            )
    https_port = _listener_port(settings, "https")
    if https_port is not None:
        for name in ("autoconfig", "autodiscover"):
            if host != f"{name}.{zone}":
                records.append(Record(f"{name}.{zone}", "CNAME", host, "client autoconfiguration"))
        records.append(
            Record(
                f"_autodiscover._tcp.{zone}",
                "SRV",
                f"0 1 {https_port} {host}",
                "Outlook autodiscover",
            )
        )
    if settings.tls.acme:
        records.extend(_caa(settings, domain, notes))
    return records


DKIM_STATE_NOTES = {
    "active": "signs new mail",
    "pending": "publish now: signs after the next `dkim rotate`",
    "retiring": "retiring: keep until rotated",
}


def _dkim_records(settings: Settings, domain: str, notes: list[str]) -> list[Record]:
    from pillarbox.mailauth.keys import DkimKeyError, published_keys

    records = []
    try:
        for key in published_keys(settings.keys_dir, domain):
            note = DKIM_STATE_NOTES.get(key.state, key.state)
            records.append(
                Record(fqdn(key.dns_name), "TXT", key.txt_value(), f"DKIM {key.algorithm}, {note}")
            )
    except (DkimKeyError, OSError, ValueError) as exc:
        notes.append(f"DKIM keys of {domain} unreadable ({exc}): check {settings.keys_dir}")
        return []
    if not records:
        notes.append(f"{domain} has no DKIM key yet: run `pillarbox dkim rotate {domain}`")
    return records


def _caa(settings: Settings, name: str, notes: list[str]) -> list[Record]:
    issuer = caa_issuer(settings)
    if issuer is None:
        notes.append(
            f'CAA: publish `{name}. CAA 0 issue "<your ACME CA\'s domain>"` '
            f"({settings.tls.acme_directory} is not a CA we know)."
        )
        return []
    return [Record(fqdn(name), "CAA", f'0 issue "{issuer}"', "only our ACME CA may issue")]


# -- rendering ----------------------------------------------------------------------------------


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into <=255-byte character-strings (RFC 1035 §3.3.14)."""
    chunks: list[str] = []
    current, size = "", 0
    for char in value:  # never split inside a multi-byte UTF-8 character
        width = len(char.encode())
        if size + width > 255:
            chunks.append(current)
            current, size = "", 0
        current += char
        size += width
    return [*chunks, current] if current or not chunks else chunks


def _quoted(chunk: str) -> str:
    return '"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rdata_text(record: Record) -> str:
    if record.type == "TXT":
        return " ".join(_quoted(s) for s in txt_strings(record.value))
    return record.value


def record_line(record: Record) -> str:
    return f"{record.name}\t{record.ttl}\tIN\t{record.type}\t{rdata_text(record)}"


def zone_text(records: RecordSet) -> str:
    """Zone-file text, ready to paste; PTRs and notes are comments (not in your zone)."""
    lines = [f"; DNS records for {records.hostname} (pillarbox dns records)"]
    lines += [f"; NOTE: {note}" for note in records.notes]
    current = ""
    for record in records.records:
        if record.where != "zone":
            continue
        section = _section(record, records)
        if section != current:
            lines += ["", f"; --- {section}"]
            current = section
        comment = f"\t; {record.comment}" if record.comment else ""
        lines.append(record_line(record) + comment)
    provider = [r for r in records.records if r.where == "provider"]
    if provider:
        lines += ["", "; --- reverse DNS: not part of your zone; ask your hosting provider for:"]
        lines += [f"; {record_line(r)}" for r in provider]
    return "\n".join(lines) + "\n"


def _section(record: Record, records: RecordSet) -> str:
    name = record.name.rstrip(".")
    if name == records.hostname:
        return f"host {records.hostname}"
    for domain in sorted({r.name for r in records.by_type("MX")}, key=len, reverse=True):
        d = domain.rstrip(".")
        if name == d or name.endswith("." + d):
            return f"domain {d}"
    return "other"


def render_zone(settings: Settings, addresses: PublicAddresses | None = None) -> str:
    return zone_text(build_records(settings, addresses))


def to_json(records: RecordSet) -> str:
    items = []
    for record in records.records:
        item = asdict(record)
        item["rdata"] = rdata_text(record)
        if record.type == "TXT":
            item["strings"] = txt_strings(record.value)
        items.append(item)
    return json.dumps(
        {"hostname": records.hostname, "records": items, "notes": records.notes}, indent=2
    )

"""The DNS records a Pillarbox deployment publishes: a pure function of config and keys.

First version (MX, SPF, DKIM, DMARC, A/AAAA); the DNS issue completes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pillarbox.config import Settings


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str  # presentation form of the RDATA (TXT unquoted; split when rendered)
    comment: str = ""


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def build_records(settings: Settings) -> list[Record]:
    from pillarbox.mailauth.keys import published_keys

    host = _fqdn(settings.hostname)
    records: list[Record] = []
    if settings.public_ip:
        records.append(Record(host, "A", settings.public_ip))
    if settings.public_ip6:
        records.append(Record(host, "AAAA", settings.public_ip6))
    for domain in settings.domains:
        zone = _fqdn(domain)
        records.append(Record(zone, "MX", f"10 {host}", "mail for the domain goes to us"))
        records.append(Record(zone, "TXT", "v=spf1 mx -all", "SPF: only our MX may send"))
        for key in published_keys(settings.keys_dir, domain):
            records.append(Record(_fqdn(key.dns_name), "TXT", key.txt_value(),
                                  f"DKIM {key.algorithm} key ({key.state})"))
        records.append(Record(f"_dmarc.{zone}", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s",
                              "DMARC: reject unauthenticated mail claiming this domain"))
    return records


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into <=255-byte character-strings (RFC 1035 §3.3.14)."""
    data = value.encode()
    return [data[i:i + 255].decode() for i in range(0, len(data), 255)] or [""]


def render_zone(settings: Settings) -> str:
    lines = []
    for record in build_records(settings):
        if record.type == "TXT":
            value = " ".join('"' + s.replace('"', '\\"') + '"' for s in txt_strings(record.value))
        else:
            value = record.value
        comment = f"  ; {record.comment}" if record.comment else ""
        lines.append(f"{record.name}\t3600\tIN\t{record.type}\t{value}{comment}")
    return "\n".join(lines)

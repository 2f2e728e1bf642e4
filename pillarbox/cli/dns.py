"""``pillarbox dns records``: everything to publish in DNS, as a zone file or JSON.

Addresses come from ``public_ip``/``public_ip6``; when neither is set, the hostname's
current A/AAAA records are used (looked up with the configured resolver, bounded by its
timeout), and a DNS failure there is reported, not silently turned into "no address".
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pillarbox.check.records import PublicAddresses, build_records, to_json, zone_text
from pillarbox.cli.common import Command, load_settings
from pillarbox.config import Settings
from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver


async def resolve_addresses(settings: Settings) -> PublicAddresses:
    """Configured addresses, else the hostname's A/AAAA (source "dns")."""
    configured = PublicAddresses.from_settings(settings)
    if configured.all:
        return configured
    resolver = Resolver.from_settings(settings.dns, cache=False)
    found: dict[str, tuple[str, ...]] = {"A": (), "AAAA": ()}
    for rdtype, lookup in (("A", resolver.a), ("AAAA", resolver.aaaa)):
        try:
            found[rdtype] = tuple(await lookup(settings.hostname))
        except DnsNotFound:
            pass
        except DnsTempError as exc:
            print(f"pillarbox: warning: {exc}", file=sys.stderr)
    if not found["A"] and not found["AAAA"]:
        return PublicAddresses((), (), "none")
    return PublicAddresses(found["A"], found["AAAA"], "dns")


def run_records(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    addresses = asyncio.run(resolve_addresses(settings))
    records = build_records(settings, addresses)
    if args.format == "json":
        print(to_json(records))
    else:
        print(zone_text(records), end="")
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("zone", "json"),
        default="zone",
        help="zone-file lines to paste (default), or JSON",
    )


COMMANDS = [
    Command(
        ("dns", "records"),
        "the DNS records to publish",
        run_records,
        _arguments,
        description="Print every DNS record this server needs: A/AAAA, MX, SPF, DKIM, DMARC, "
        "MTA-STS, TLS-RPT, SRV for mail clients, autoconfig, CAA (with ACME), and the PTR to "
        "ask your hosting provider for. TXT values are split into 255-byte strings.",
    ),
]

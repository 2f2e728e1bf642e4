"""``pillarbox verify FILE``: the SPF, DKIM, DMARC and ARC verdicts of a raw message.

Like a webmail's "show original": every check is run live against DNS (the configured
nameservers when a config is found, else the system's) and explained in plain words, or
printed as JSON with ``--format json``. SPF needs the connecting IP, HELO name and MAIL FROM
of the original delivery; when they are not given they are taken from the message itself
(the newest Received header and Return-Path), which is how a saved message is re-checked.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox import config
from pillarbox.cli.common import CliError, Command
from pillarbox.config import ConfigError, DnsSettings

if TYPE_CHECKING:
    from pillarbox.mailauth.inbound import AuthVerdict

MAX_FILE = 64 * 1024 * 1024

_RECEIVED_RE = re.compile(
    rb"^\s*from\s+(?P<helo>[^\s(;]+).*?\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]+)\]", re.S
)
_RETURN_PATH_RE = re.compile(rb"<([^<>\s]*)>")


def envelope_from_message(data: bytes) -> tuple[str, str, str | None]:
    """(ip, helo, mail_from) from the newest Received header and Return-Path, "" / None if
    the message does not say. mail_from None means unknown; "" is the null sender."""
    from pillarbox.mailauth.dkimverify import header_fields

    ip = helo = ""
    mail_from: str | None = None
    for name, value in header_fields(data):
        lname = name.lower()
        if lname == b"received" and not ip and (match := _RECEIVED_RE.match(value)):
            try:
                ip = str(ipaddress.ip_address(match.group("ip").decode("ascii")))
                helo = match.group("helo").decode("ascii", errors="replace")
            except ValueError:
                pass
        elif lname == b"return-path" and mail_from is None:
            found = _RETURN_PATH_RE.search(value)
            mail_from = found.group(1).decode("utf-8", errors="replace") if found else None
    return ip, helo, mail_from


def _settings(args: argparse.Namespace) -> tuple[DnsSettings, str]:
    """DNS settings and authserv-id: from the config when there is one, else defaults."""
    try:
        path = config.find_config(getattr(args, "config", None))
    except ConfigError:
        return DnsSettings(), socket.getfqdn() or "localhost"
    settings = config.load(path)
    return settings.dns, settings.hostname


def _read(path: str) -> bytes:
    source = sys.stdin.buffer if path == "-" else None
    try:
        if source is not None:
            data = source.read(MAX_FILE + 1)
        else:
            with Path(path).open("rb") as handle:
                data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise CliError(f"{path}: larger than {MAX_FILE // (1024 * 1024)} MiB")
    return data


def run(args: argparse.Namespace) -> int:
    from pillarbox.dns.resolver import Resolver
    from pillarbox.mailauth.inbound import authenticate

    data = _read(args.file)
    dns_settings, authserv_id = _settings(args)
    ip, helo, mail_from = envelope_from_message(data)
    ip = args.ip if args.ip is not None else ip
    helo = args.helo if args.helo is not None else helo
    mail_from = args.mail_from if args.mail_from is not None else (mail_from or "")
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise CliError(f"--ip: not an IP address: {ip!r}") from None
    try:
        resolver = Resolver.from_settings(dns_settings)
    except ValueError as exc:
        raise CliError(f"dns.nameservers: {exc}") from None
    verdict = asyncio.run(
        authenticate(
            data,
            ip=ip,
            helo=helo,
            mail_from=mail_from,
            resolver=resolver,
            authserv_id=authserv_id,
        )
    )
    if args.format == "json":
        report = verdict.to_dict()
        report["envelope"] = {"ip": ip, "helo": helo, "mail_from": mail_from}
        print(json.dumps(report, indent=2))
    else:
        print(render_text(verdict, ip=ip, helo=helo, mail_from=mail_from))
    return 0


def render_text(verdict: AuthVerdict, *, ip: str, helo: str, mail_from: str) -> str:
    lines = []
    envelope = f"client {ip or '(unknown)'}, HELO {helo or '(unknown)'}"
    lines.append(f"Envelope:  {envelope}, MAIL FROM <{mail_from}>")
    lines.append(
        _line(
            "SPF",
            verdict.spf.result,
            f"MAIL FROM domain {verdict.spf.domain or '-'}",
            verdict.spf.explanation,
        )
    )
    lines.append(
        _line(
            "SPF",
            verdict.spf_helo.result,
            f"HELO {verdict.spf_helo.domain or '-'}",
            verdict.spf_helo.explanation,
        )
    )
    if not verdict.dkim:
        lines.append(_line("DKIM", "none", "message is not signed", ""))
    for sig in verdict.dkim:
        what = f"d={sig.domain} s={sig.selector} a={sig.algorithm}"
        lines.append(_line("DKIM", sig.result, what, sig.reason))
    d = verdict.dmarc
    aligned = [name for name, ok in (("SPF", d.spf_aligned), ("DKIM", d.dkim_aligned)) if ok]
    what = f"From domain {d.from_domain or '-'}, policy {d.policy}"
    detail = d.reason or (f"aligned: {', '.join(aligned)}" if aligned else "")
    lines.append(_line("DMARC", d.result, what, detail))
    arc = verdict.arc
    arc_what = f"{arc.instances} hop(s): {', '.join(arc.sealers)}" if arc.instances else ""
    lines.append(_line("ARC", arc.result, arc_what, arc.reason if arc.result != "pass" else ""))
    action = {"reject": "reject (550 5.7.1)", "quarantine": "deliver to Junk"}.get(
        verdict.disposition, "deliver"
    )
    lines.append(
        f"Verdict:   {action}" + (" (DNS temporary errors noted)" if verdict.temperror else "")
    )
    lines.append("")
    lines.append(verdict.header.decode("utf-8", errors="replace").rstrip())
    return "\n".join(lines)


def _line(method: str, result: str, what: str, detail: str) -> str:
    text = f"{method + ':':<10} {result.upper():<9} {what}".rstrip()
    return text + (f" ({detail})" if detail else "")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="raw message (RFC 5322), or - for stdin")
    parser.add_argument("--ip", help="connecting client IP (default: from the Received header)")
    parser.add_argument("--helo", metavar="NAME", help="HELO/EHLO name of the client")
    parser.add_argument(
        "--mail-from", metavar="ADDR", help="envelope sender (default: from Return-Path)"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")


COMMANDS = [
    Command(
        ("verify",),
        "show the SPF, DKIM, DMARC and ARC verdicts of a raw message",
        run,
        _arguments,
        description="Check a raw message like a receiving server would, live against DNS, "
        "and explain every verdict (SPF for MAIL FROM and HELO, each DKIM signature, DMARC "
        "with the policy that applies, the ARC chain).",
    ),
]

"""``pillarbox check``: the live deliverability check, as text or JSON.

Exit status 0 when nothing failed (warnings allowed), 1 when any check failed, so scripts
and monitoring can run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time

from pillarbox.check.findings import Report, last_check_path, render_json, render_text
from pillarbox.check.runner import run_check
from pillarbox.cli.common import Command, load_settings
from pillarbox.config import Settings


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    # Python 3.11's asyncio warns "returning true from eof_received() has no effect when
    # using ssl" when a server closes a connection we upgraded with STARTTLS: noise here.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    report = asyncio.run(run_check(settings, include_server=not args.dns_only))
    print(render_json(report) if args.format == "json" else render_text(report), end="")
    _remember(settings, report)
    return 1 if report.failed else 0


def _remember(settings: Settings, report: Report) -> None:
    """Keep the outcome for ``pillarbox status`` (best effort: check may run as a user who
    cannot write the data dir)."""
    saved = {"score": report.score, "failed": bool(report.failed), "when": time.time()}
    target = last_check_path(settings.data_dir)
    try:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(saved))
        os.replace(tmp, target)
    except OSError:
        pass


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--dns-only",
        action="store_true",
        help="skip the checks that connect to the running server",
    )


COMMANDS = [
    Command(
        ("check",),
        "live deliverability check with a score out of 10",
        run,
        _arguments,
        description="Check DNS (A/AAAA, reverse DNS, MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT), "
        "the running server (certificate, reachability, EHLO name, STARTTLS, open relay) and "
        "public blocklists; print each finding with what to do, and a score out of 10. "
        "Exits 1 when any check failed.",
    ),
]

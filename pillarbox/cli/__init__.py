"""The ``pillarbox`` command line: one table of commands, exit codes 0 / 1 / 2.

Each command module lists its ``COMMANDS``; this module joins them into one argparse tree.
0 is success, 1 a failure (bad config, unknown user, server not reachable), 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pillarbox import __version__
from pillarbox.cli import (
    accounts,
    backup,
    bans,
    cert,
    check,
    dkim,
    dns,
    init,
    queue,
    sendmail,
    serve,
    service,
    sieve,
    status,
    storeblobs,
    storemigrate,
    transfer,
    verify,
)
from pillarbox.cli import spam as spam_cli
from pillarbox.cli.common import CliError, Command
from pillarbox.config import ConfigError
from pillarbox.store.layout import LayoutError

COMMANDS: list[Command] = [
    *init.COMMANDS,
    *serve.COMMANDS,
    *accounts.COMMANDS,
    *verify.COMMANDS,
    *dkim.COMMANDS,
    *dns.COMMANDS,
    *check.COMMANDS,
    *cert.COMMANDS,
    *queue.COMMANDS,
    *bans.COMMANDS,
    *sendmail.COMMANDS,
    *service.COMMANDS,
    *status.COMMANDS,
    *transfer.COMMANDS,
    *backup.COMMANDS,
    *spam_cli.COMMANDS,
    *sieve.COMMANDS,
    *storemigrate.COMMANDS,
    *storeblobs.COMMANDS,
]


GROUP_HELP = {
    "user": "mailbox users: add, list, passwd, del, sendas, spam",
    "alias": "aliases and catch-alls: add, list, del",
    "dkim": "DKIM keys: list, rotate",
    "dns": "the DNS records to publish",
    "cert": "TLS certificate: status, renew (ACME)",
    "queue": "outbound queue: list, show, flush, delete",
    "bans": "clients banned for failed logins: list, del",
    "service": "run under systemd: install a sandboxed unit",
    "import": "move mail in: imap, maildir, mbox",
    "sieve": "users' Sieve filters: put, get, list, activate, delete",
    "store": "the state's backend: migrate (SQLite to PostgreSQL), blobs (bodies in S3)",
    "blobs": "message bodies in S3: status, sweep, copy --to s3",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pillarbox",
        description="A complete personal mail server: SMTP, IMAP, DKIM/SPF/DMARC and "
        "certificates in one process.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $PILLARBOX_CONFIG, ./pillarbox.toml, "
        "/etc/pillarbox/pillarbox.toml)",
    )
    parser.add_argument("--version", action="version", version=f"pillarbox {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    }
    parents: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for command in COMMANDS:
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=GROUP_HELP.get(prefix[-1], f"{prefix[-1]} commands")
                )
                parents[prefix] = group_parser
                groups[prefix] = group_parser.add_subparsers(
                    dest="_".join(prefix) + "_command", metavar="COMMAND", required=True
                )
        sub = groups[command.path[:-1]].add_parser(
            command.path[-1], help=command.help, description=command.description or command.help
        )
        command.arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except (CliError, ConfigError, LayoutError) as exc:
        print(f"pillarbox: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pillarbox dns records | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry_point() -> None:
    sys.exit(main())

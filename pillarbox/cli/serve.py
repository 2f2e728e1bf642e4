"""``pillarbox serve``: run every listener until SIGTERM/SIGINT; SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio

from pillarbox import log
from pillarbox.cli.common import Command, load_settings


def run(args: argparse.Namespace) -> int:
    from pillarbox.app import serve  # heavy imports only for this command

    settings = load_settings(args)
    log.setup(settings.log_level)
    asyncio.run(serve(settings))
    return 0


COMMANDS = [
    Command(
        ("serve",),
        "run the mail server (all listeners) in the foreground",
        run,
        description="Run every configured listener in one process until SIGTERM or "
        "SIGINT (graceful: stop accepting, finish sessions in flight). "
        "SIGHUP reloads the config, certificates and users.",
    ),
]

"""``pillarbox serve``: run every listener until SIGTERM/SIGINT; SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio
import resource

from pillarbox import log
from pillarbox.cli.common import Command, load_settings

_log = log.get("serve")
# Beyond one socket per connection: the index databases and their readers, Maildir files
# being written, the queue, log and listener sockets.
SPARE_FILES = 512


def raise_open_file_limit(connections: int) -> None:
    """Lift the soft RLIMIT_NOFILE (often 1024) towards the hard one, so that
    ``limits.max_connections`` sessions can be open at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft >= wanted:
        return
    limit = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if limit < wanted:
        _log.warning("open file limit too low", limit=limit, wanted=wanted)


def run(args: argparse.Namespace) -> int:
    from pillarbox.app import serve  # heavy imports only for this command

    settings = load_settings(args)
    log.setup(settings.log_level)
    raise_open_file_limit(settings.limits.max_connections)
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

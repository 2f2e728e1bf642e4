"""``pillarbox bans list / del IP``: client addresses banned for password guessing.

Bans live in the running server (which also keeps them in ``DATA_DIR/bans.json`` so that
they outlast a restart), so both commands go through the control socket; with no server
running there is nothing banned from anything, and the commands say so (exit 1).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings


def _call(args: argparse.Namespace, method: str, params: dict[str, Any]) -> Any:
    settings = load_settings(args)
    try:
        return control.call(settings.control_socket, method, params)
    except control.ServerNotRunning as exc:
        raise CliError(f"{exc}; bans apply only while the server runs") from None
    except control.ControlError as exc:
        raise CliError(str(exc)) from None


def _remaining(seconds: float) -> str:
    """``1h 02m``, ``14m 58s``, ``9s``: enough precision to read at a glance."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _print_bans(bans: list[dict[str, Any]]) -> None:
    width = max(24, *(len(b["client"]) for b in bans))
    print(f"{'Client':<{width}}  {'Failures':>8}  {'Banned until':<19}  {'Remaining':>9}  Ban")
    for ban in bans:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ban["until"]))
        print(
            f"{ban['client']:<{width}}  {ban['failures']:>8}  {until:<19}  "
            f"{_remaining(ban['remaining']):>9}  #{ban['bans']}"
        )
    print(f"-- {len(bans)} banned client(s)")


def cmd_list(args: argparse.Namespace) -> int:
    bans = _call(args, "bans.list", {}) or []
    if args.format == "json":
        print(json.dumps(bans, indent=2))
    elif not bans:
        print("no bans")
    else:
        _print_bans(bans)
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    lifted = _call(args, "bans.del", {"address": args.address})
    print(f"unbanned {lifted['client']}")
    return 0


def _list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _del_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address", metavar="IP", help="an address (IPv6: any in the /64) or the IPv6 /64"
    )


COMMANDS = [
    Command(
        ("bans", "list"),
        "list clients banned for failed logins",
        cmd_list,
        _list_args,
        description="List the client addresses (IPv4) and networks (IPv6 /64) banned for "
        "too many failed logins, with their failure count, the end of the ban, the time "
        "left and which ban in a row it is.",
    ),
    Command(
        ("bans", "del"),
        "lift a ban (and forget the client's failures)",
        cmd_del,
        _del_args,
    ),
]

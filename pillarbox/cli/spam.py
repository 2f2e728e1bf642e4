"""``pillarbox user spam ADDRESS [--junk N] [--reject N] [--default]``: a user's thresholds.

Without options it shows the user's thresholds and what the user has taught the filter;
with them it sets the user's own thresholds (over ``[spam] junk_threshold`` and
``reject_threshold``), ``--default`` goes back to the configured ones. The values live in
``DATA_DIR/spam.db`` (or PostgreSQL, ``[store] backend``) beside the user's lessons; a
running server is told at once.
"""

from __future__ import annotations

import argparse
import contextlib

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.spam.reputation import open_reputation
from pillarbox.store.accounts import AccountError, open_accounts


def user_spam(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    accounts = open_accounts(settings)
    try:
        address = str(accounts.parse_local(args.address))
        if not accounts.user_exists(address):
            raise CliError(f"no user {address}")
    except AccountError as exc:
        raise CliError(str(exc)) from None
    finally:
        accounts.close()
    store = open_reputation(settings)
    try:
        own_junk, own_reject = store.thresholds().get(address, (None, None))
        if args.default:
            own_junk = own_reject = None
        if args.junk is not None:
            own_junk = args.junk
        if args.reject is not None:
            own_reject = args.reject
        junk = settings.spam.junk_threshold if own_junk is None else own_junk
        reject = settings.spam.reject_threshold if own_reject is None else own_reject
        changing = args.default or args.junk is not None or args.reject is not None
        if changing and reject <= junk:
            raise CliError(f"the reject threshold ({reject:g}) must be above junk ({junk:g})")
        if changing:
            store.set_thresholds(address, own_junk, own_reject)
        spam, ham = store.trained_users().get(address, (0, 0))
    finally:
        store.close()
    if changing:
        with contextlib.suppress(control.ServerNotRunning, control.ControlError):
            control.call(settings.control_socket, "spam.changed", timeout=5)
    origin = "own" if (own_junk, own_reject) != (None, None) else "configured"
    print(f"{address}: junk {junk:g}, reject {reject:g} ({origin}); "
          f"learnt {spam} spam, {ham} ham")  # fmt: skip
    return 0


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")
    parser.add_argument("--junk", type=float, help="score from which mail goes to Junk")
    parser.add_argument("--reject", type=float, help="score from which mail is refused (550)")
    parser.add_argument("--default", action="store_true", help="use the configured thresholds")


COMMANDS = [
    Command(
        ("user", "spam"),
        "show or set a user's spam thresholds (--junk N, --reject N, --default)",
        user_spam,
        _args,
    ),
]

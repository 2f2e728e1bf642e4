"""``pillarbox sieve ...``: users' Sieve filters (put, get, list, activate, delete).

They work on the database directly, like ``pillarbox user`` (WAL lets them run beside a
live server; delivery reads the active script per message and caches its parse by
version, so a change applies to the next message). A script is checked before it is
stored; an error is printed as ``FILE:LINE:COLUMN: message``, the form editors jump to.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings
from pillarbox.sieve import SieveSyntaxError, check
from pillarbox.store.accounts import AccountError, open_accounts
from pillarbox.store.sieve_scripts import SieveScriptError, SieveStore, open_sieve_scripts


def _tell_server(settings: Settings) -> None:
    """A running server holds the set of users with an active script in memory: have it
    read the set again. No server, nothing to tell (it reads the set when it starts)."""
    with contextlib.suppress(control.ServerNotRunning, control.ControlError):
        control.call(settings.control_socket, "sieve.changed", timeout=5)


@contextlib.contextmanager
def _scripts(
    args: argparse.Namespace, *, changes_active: bool = False
) -> Iterator[tuple[SieveStore, str]]:
    """The script store and the user's canonical address (it must exist);
    ``changes_active``: the block may change who has an active script (see the module
    docstring), the server is told after it."""
    settings = load_settings(args)
    accounts = open_accounts(settings)
    try:
        user = str(accounts.parse_local(args.address))
        if not accounts.user_exists(user):
            raise CliError(f"no user {user}")
    except AccountError as exc:
        raise CliError(str(exc)) from None
    finally:
        accounts.close()
    scripts = open_sieve_scripts(settings)
    try:
        yield scripts, user
    except SieveScriptError as exc:
        raise CliError(exc.text) from None
    finally:
        scripts.close()
    if changes_active:
        _tell_server(settings)


def sieve_put(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 (RFC 5228 §2.2)") from None
    try:
        check(text)
    except SieveSyntaxError as exc:
        raise CliError(f"{args.file}:{exc.line}:{exc.column}: {exc.message}") from None
    name = args.name or (path.stem if args.file != "-" else "main")
    with _scripts(args, changes_active=args.activate) as (scripts, user):
        scripts.put(user, name, text)
        if args.activate:
            scripts.set_active(user, name)
    print(f"stored {name!r} for {user}" + (", active" if args.activate else ""))
    return 0


def sieve_get(args: argparse.Namespace) -> int:
    with _scripts(args) as (scripts, user):
        if args.name is None:
            active = scripts.active(user)
            if active is None:
                raise CliError(f"{user} has no active script")
            text = active[1]
        else:
            found = scripts.get(user, args.name)
            if found is None:
                raise CliError(f"{user} has no script {args.name!r}")
            text = found
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def sieve_list(args: argparse.Namespace) -> int:
    with _scripts(args) as (scripts, user):
        listing = scripts.list(user)
        used = scripts.space_used(user)
    for name, active in listing:
        print(f"{name}{'  (active)' if active else ''}")
    if not listing:
        print(f"{user} has no scripts")
    else:
        print(f"{len(listing)} script(s), {used} bytes")
    return 0


def sieve_activate(args: argparse.Namespace) -> int:
    if (args.name is None) == (not args.none):
        raise CliError("give a script name or --none")
    with _scripts(args, changes_active=True) as (scripts, user):
        scripts.set_active(user, None if args.none else args.name)
    print(f"{user}: no active script" if args.none else f"{user}: {args.name!r} is active")
    return 0


def sieve_delete(args: argparse.Namespace) -> int:
    with _scripts(args) as (scripts, user):
        scripts.delete(user, args.name)
    print(f"deleted {args.name!r} of {user}")
    return 0


def _put_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")
    parser.add_argument("file", help="the script (- for stdin)")
    parser.add_argument("--name", help="script name (default: the file name without .sieve)")
    parser.add_argument("--activate", action="store_true", help="make it the active script")


def _get_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")
    parser.add_argument("name", nargs="?", help="script name (default: the active one)")


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")


def _activate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")
    parser.add_argument("name", nargs="?")
    parser.add_argument("--none", action="store_true", help="deactivate (no filtering)")


def _delete_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address")
    parser.add_argument("name")


COMMANDS = [
    Command(
        ("sieve", "put"),
        "check and store a user's Sieve script (errors as FILE:LINE:COLUMN)",
        sieve_put,
        _put_args,
    ),
    Command(
        ("sieve", "get"), "print a user's script (default: the active one)", sieve_get, _get_args
    ),
    Command(
        ("sieve", "list"), "list a user's scripts, the active one marked", sieve_list, _address_arg
    ),
    Command(
        ("sieve", "activate"),
        "make a script the active one (--none: no filtering)",
        sieve_activate,
        _activate_args,
    ),
    Command(
        ("sieve", "delete"), "delete a script (not the active one)", sieve_delete, _delete_args
    ),
]

"""``pillarbox user ...`` and ``pillarbox alias ...``: manage who receives mail.

These work on the database directly (SQLite in WAL mode lets them run beside a live
server, which reads accounts on every login and delivery; after a change the server is
told to forget the recipients it remembers, so changes apply at once).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from pillarbox import control
from pillarbox.auth.passwords import PasswordPolicyError, hash_password
from pillarbox.cli.common import CliError, Command, load_settings, read_password
from pillarbox.config import Settings
from pillarbox.core.sizes import SizeError, format_size, parse_size
from pillarbox.store.accounts import AccountError, Accounts, open_accounts
from pillarbox.store.index import INDEX_FILE
from pillarbox.store.maildir import user_maildir
from pillarbox.store.quota import read_usage


@contextlib.contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[tuple[Accounts, Settings]]:
    """The accounts store of the configured data dir; its errors become CLI errors."""
    settings = load_settings(args)
    accounts = open_accounts(settings)
    try:
        yield accounts, settings
    except AccountError as exc:
        raise CliError(str(exc)) from None
    finally:
        accounts.close()
    if accounts.changed:
        _tell_server(settings)


def _tell_server(settings: Settings) -> None:
    """A running server remembers recipients for a few seconds: have it forget them, so
    a deleted user or a changed alias counts at once. No server, nothing to tell."""
    with contextlib.suppress(control.ServerNotRunning, control.ControlError):
        control.call(settings.control_socket, "accounts.changed", timeout=5)


def _hash(password: str) -> str:
    try:
        return hash_password(password)
    except PasswordPolicyError as exc:
        raise CliError(str(exc)) from None


def user_add(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, settings):
        address = str(accounts.parse_local(args.address))
        if accounts.user_exists(address):
            raise CliError(f"user {address} already exists")
        admin = bool(args.admin)
        accounts.add_user(address, _hash(read_password(args.password_stdin)), admin=admin)
    role = ", admin" if admin else ""
    print(f"added {address}{role} (mail in {user_maildir(settings.mail_dir, address)})")
    return 0


def user_list(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        for user in accounts.user_details():
            # One address per line; a second column only for admins, so scripts that read
            # the first word keep working.
            print(f"{user.address}\tadmin" if user.admin else user.address)
    return 0


def user_admin(args: argparse.Namespace) -> int:
    on = args.state == "on"
    with _accounts(args) as (accounts, _):
        address = str(accounts.parse_local(args.address))
        accounts.set_admin(address, on)
    print(f"{address} is {'now' if on else 'no longer'} an admin of the web admin (/admin/)")
    return 0


def _existing_user(accounts: Accounts, address: str) -> str:
    """``address`` normalised, or a clear error when it is not a user here."""
    user = str(accounts.parse_local(address))
    if not accounts.user_exists(user):
        raise CliError(f"no such user: {user}")
    return user


def _quota_text(limit: int) -> str:
    return format_size(limit) if limit else "no limit"


def user_quota(args: argparse.Namespace) -> int:
    """Show (no SIZE) or set a user's storage quota; ``default`` follows [store] quota."""
    with _accounts(args) as (accounts, settings):
        address = _existing_user(accounts, args.address)
        default = settings.store.quota
        if args.size is not None:
            own: int | None = None
            if args.size.strip().lower() != "default":
                try:
                    own = parse_size(args.size)
                except SizeError as exc:
                    raise CliError(f"SIZE: {exc} (or 0/none for no limit, default)") from None
            accounts.set_quota(address, own)
        own = accounts.own_quota(address)
    limit = default if own is None else own
    source = f"the default, [store] quota = {_quota_text(default)}" if own is None else "own"
    used = read_usage(user_maildir(settings.mail_dir, address), INDEX_FILE)
    usage = "unknown (not counted yet)" if used is None else f"{format_size(used)} ({used} bytes)"
    print(f"{address}\tquota {_quota_text(limit)} ({source})\tused {usage}")
    return 0


def user_passwd(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        address = _existing_user(accounts, args.address)
        accounts.set_password(address, _hash(read_password(args.password_stdin)))
    print(f"password changed for {address}")
    return 0


def user_del(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, settings):
        address = str(accounts.parse_local(args.address))
        accounts.delete_user(address)
    maildir = user_maildir(settings.mail_dir, address)
    print(f"deleted {address}; its mail is kept in {maildir} (remove it by hand if unwanted)")
    return 0


def alias_add(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    with _accounts(args) as (accounts, _):
        key, normalised = accounts.add_alias(args.alias, targets)
    print(f"{key} -> {', '.join(normalised)}")
    return 0


def alias_list(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        for alias, targets in accounts.list_aliases().items():
            print(f"{alias} -> {', '.join(targets)}")
    return 0


def alias_del(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        accounts.delete_alias(args.alias)
    print(f"deleted alias {args.alias}")
    return 0


def sendas_add(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        user = str(accounts.parse_local(args.address))
        key = accounts.add_send_as(user, args.pattern)
    print(f"{user} may now send as {key}")
    return 0


def sendas_list(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, settings):
        user = _existing_user(accounts, args.address)
        owned = sorted(accounts.owned_addresses(user))
        grants = accounts.list_send_as(user)
    delimiter = settings.delivery.recipient_delimiter
    for address in owned:
        print(f"{address}\t(owned; also {address.replace('@', delimiter + '*@', 1)})")
    for pattern in grants:
        print(f"{pattern}\t(granted)")
    return 0


def sendas_del(args: argparse.Namespace) -> int:
    with _accounts(args) as (accounts, _):
        user = str(accounts.parse_local(args.address))
        key = accounts.delete_send_as(user, args.pattern)
    print(f"{user} may no longer send as {key}")
    return 0


def _sendas_args(parser: argparse.ArgumentParser) -> None:
    _address_arg(parser)
    parser.add_argument(
        "pattern",
        metavar="PATTERN",
        help="an address the user may put in From, or @domain for any address there",
    )


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="ADDRESS", help="the user's address, user@domain")


def _password_args(parser: argparse.ArgumentParser) -> None:
    _address_arg(parser)
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of stdin instead of prompting",
    )


def _user_add_args(parser: argparse.ArgumentParser) -> None:
    _password_args(parser)
    parser.add_argument(
        "--admin",
        action="store_true",
        help="may use the web admin pages (/admin/); see also `user admin`",
    )


def _user_admin_args(parser: argparse.ArgumentParser) -> None:
    _address_arg(parser)
    parser.add_argument("state", choices=("on", "off"), help="grant or withdraw the admin flag")


def _user_quota_args(parser: argparse.ArgumentParser) -> None:
    _address_arg(parser)
    parser.add_argument(
        "size",
        metavar="SIZE",
        nargs="?",
        help='bytes of mail allowed: "2G", "500M", "0" or "none" for no limit, '
        '"default" for [store] quota; without SIZE: show the quota',
    )


def _alias_add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alias", metavar="ALIAS", help="alias address, or @domain for a catch-all")
    parser.add_argument(
        "targets",
        metavar="TARGET[,TARGET...]",
        help="comma-separated addresses to deliver to (local or remote)",
    )


def _alias_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alias", metavar="ALIAS", help="alias address, or @domain")


COMMANDS = [
    Command(
        ("user", "add"),
        "create a mailbox user (password prompted or --password-stdin)",
        user_add,
        _user_add_args,
    ),
    Command(("user", "list"), "list users (admins marked)", user_list),
    Command(
        ("user", "admin"),
        "grant (on) or withdraw (off) the web admin flag",
        user_admin,
        _user_admin_args,
    ),
    Command(
        ("user", "quota"),
        "show or set a user's storage quota (RFC 9208 STORAGE)",
        user_quota,
        _user_quota_args,
    ),
    Command(("user", "passwd"), "change a user's password", user_passwd, _password_args),
    Command(("user", "del"), "delete a user (its mail stays on disk)", user_del, _address_arg),
    Command(
        ("user", "sendas", "list"),
        "list the From addresses a user may send as",
        sendas_list,
        _address_arg,
    ),
    Command(
        ("user", "sendas", "add"),
        "let a user send as another address or a whole @domain",
        sendas_add,
        _sendas_args,
    ),
    Command(
        ("user", "sendas", "del"),
        "withdraw a send-as grant",
        sendas_del,
        _sendas_args,
    ),
    Command(
        ("alias", "add"),
        "add an alias (several targets, @domain catch-all)",
        alias_add,
        _alias_add_args,
    ),
    Command(("alias", "list"), "list aliases", alias_list),
    Command(("alias", "del"), "delete an alias", alias_del, _alias_arg),
]

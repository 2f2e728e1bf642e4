"""``pillarbox import imap|maildir|mbox`` and ``pillarbox export``: moving mail in and out.

Imports need the server stopped (they write the user's index as the server would) and can
be run again at will: an IMAP import copies only what is new, file imports recognise what
the mailbox already holds. Every problem names its item (folder, file, message number);
the exit status is 1 when any item was left out, so a script knows to run it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pillarbox.cli.common import CliError, Command, load_settings, read_password
from pillarbox.config import Settings
from pillarbox.store.dump import MailDump
from pillarbox.store.index import UserIndex
from pillarbox.transfer import imapsource, maildirio, mboxio
from pillarbox.transfer.progress import TransferProgress
from pillarbox.transfer.state import ImportState
from pillarbox.transfer.target import (
    Destination,
    Report,
    TransferError,
    ensure_server_stopped,
    user_root,
)


def _finish(report: Report) -> int:
    print(report.summary())
    return 1 if report.problems else 0


def _destination(settings: Settings, address: str) -> tuple[str, Destination]:
    ensure_server_stopped(settings)
    user, root = user_root(settings, address)
    return user, Destination(root)


def cmd_import_imap(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    password = read_password(args.password_stdin, confirm=False)
    account = imapsource.ImapAccount(
        host=args.host,
        port=args.port or imapsource.default_port(args.tls),
        tls=args.tls,
        user=args.user,
        password=password,
    )
    try:
        _, dest = _destination(settings, args.to)
        state = ImportState(settings.data_dir)
        report = Report()
        try:
            with dest, TransferProgress() as progress:
                imapsource.ImapImport(account, dest, state, progress, report).run(args.mailbox)
        finally:
            state.close()
    except TransferError as exc:
        raise CliError(str(exc)) from None
    return _finish(report)


def cmd_import_maildir(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        _, dest = _destination(settings, args.to)
        report = Report()
        with dest, TransferProgress() as progress:
            maildirio.import_maildir(Path(args.path), dest, progress, report)
    except TransferError as exc:
        raise CliError(str(exc)) from None
    return _finish(report)


def cmd_import_mbox(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        _, dest = _destination(settings, args.to)
        report = Report()
        with dest, TransferProgress() as progress:
            mboxio.import_mbox(Path(args.file), args.mailbox, dest, progress, report)
    except TransferError as exc:
        raise CliError(str(exc)) from None
    return _finish(report)


def _bring_index_up_to_date(settings: Settings, root: Path) -> None:
    """With no server running, index what other tools put in the Maildir since."""
    try:
        ensure_server_stopped(settings)
    except TransferError:
        return  # the running server keeps its own index current
    index = UserIndex(root)
    with index.lock:
        try:
            for name in index.discover():
                index.sync(index.mailbox(name))
        finally:
            index.close()


def cmd_export(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        user, root = user_root(settings, args.address)
        _bring_index_up_to_date(settings, root)
        dump = MailDump(root)
        report = Report()
        try:
            if args.format == "maildir":
                maildirio.export_maildir(dump, Path(args.dir), report)
            else:
                mboxio.export_mbox(dump, Path(args.dir), report)
        finally:
            dump.close()
    except TransferError as exc:
        raise CliError(str(exc)) from None
    print(f"exported {report.copied} message(s) of {user} to {args.dir} ({args.format})")
    return 0


def _imap_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, help="the other server, e.g. imap.gmail.com")
    parser.add_argument("--port", type=int, help="default 993 (implicit TLS) or 143 (STARTTLS)")
    parser.add_argument("--tls", choices=("implicit", "starttls"), default="implicit")
    parser.add_argument("--user", required=True, help="the login name at the other server")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from one stdin line"
    )
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="the local user")
    parser.add_argument(
        "--mailbox",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="copy only these remote folders (default: all but virtual ones like All Mail)",
    )


def _maildir_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a Maildir++ root (INBOX, .Folder, ...)")
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="the local user")


def _mbox_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an mbox file (mboxrd or mboxo)")
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="the local user")
    parser.add_argument("--mailbox", default="INBOX", metavar="NAME", help="default INBOX")


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="ADDRESS", help="the user whose mail to export")
    parser.add_argument("--format", choices=("maildir", "mbox"), required=True)
    parser.add_argument("dir", metavar="DIR", help="a new or empty directory")


COMMANDS = [
    Command(
        ("import", "imap"),
        "copy a mailbox from another IMAP server (resumable)",
        cmd_import_imap,
        _imap_args,
        description="Copy every folder of an account on another IMAP server (Gmail, "
        "Fastmail, Dovecot, ...) with flags, keywords and dates into a local user. Run it "
        "again to copy what is new; nothing is copied twice. Stop the server first.",
    ),
    Command(
        ("import", "maildir"),
        "import a Maildir++ (folders, flags, Dovecot keywords)",
        cmd_import_maildir,
        _maildir_args,
    ),
    Command(
        ("import", "mbox"),
        "import an mbox file into one mailbox",
        cmd_import_mbox,
        _mbox_args,
    ),
    Command(
        ("export",),
        "export a user's mail as Maildir++ or mbox files",
        cmd_export,
        _export_args,
        description="Write every mailbox of a user as Maildir++ (Dovecot's layout, with "
        "UIDs) or as one mbox per mailbox (Thunderbird's layout), flags included.",
    ),
]

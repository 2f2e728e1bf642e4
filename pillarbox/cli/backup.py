"""``pillarbox backup DIR [--incremental-from PREV]``, ``backup verify DIR`` and
``restore DIR --data-dir NEW``: online backups, their check, and the restore drill.

``backup`` runs beside a running server (see ``pillarbox.transfer.backup`` for why the copy
is consistent); ``restore`` refuses a backup that does not verify and a non-empty target.
The drill is written down in docs/BACKUP.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.transfer import backup as bk
from pillarbox.transfer.target import TransferError

USAGE = "pillarbox backup [--incremental-from PREV] DIR\n       pillarbox backup verify DIR"


def _usage_error(text: str) -> int:
    print(f"usage: {USAGE}\npillarbox backup: error: {text}", file=sys.stderr)
    return 2


def cmd_backup(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if words[0] == "verify":
        if len(words) != 2:
            return _usage_error("backup verify takes exactly one DIR")
        if args.incremental_from:
            return _usage_error("--incremental-from is for making a backup, not verifying one")
        return _verify(Path(words[1]))
    if len(words) != 1:
        return _usage_error("give one backup directory")
    settings = load_settings(args)
    previous = Path(args.incremental_from) if args.incremental_from else None
    out = Path(words[0])
    try:
        result = bk.backup(
            settings.data_dir, out, previous=previous, config_path=settings.source, note=print
        )
    except TransferError as exc:
        raise CliError(str(exc)) from None
    kind = f"incremental from {previous}" if previous else "full"
    print(
        f"backup of {settings.data_dir} in {out} ({kind}): {result.files} files, "
        f"{result.databases} database(s), {result.linked} linked from the previous backup, "
        f"{result.copied_bytes} bytes copied"
    )
    if result.vanished or result.dropped_queue_entries:
        print(
            f"{result.vanished} file(s) expunged or delivered while copying, "
            f"{len(result.dropped_queue_entries)} finished queue entr(ies) left out"
        )
    print(f"check it with: pillarbox backup verify {out}")
    return 0


def _verify(directory: Path) -> int:
    try:
        count, problems = bk.verify(directory)
    except TransferError as exc:
        raise CliError(str(exc)) from None
    for problem in problems:
        print(f"pillarbox: problem: {problem}", file=sys.stderr)
    if problems:
        print(f"{directory}: {len(problems)} problem(s) in {count} files: do not rely on it")
        return 1
    print(f"{directory}: {count} files verified, every checksum and database is intact")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    new = Path(args.data_dir)
    try:
        count, config = bk.restore(Path(args.dir), new)
    except TransferError as exc:
        raise CliError(str(exc)) from None
    print(f"restored {count} files into {new}")
    if config is not None:
        print(f"start it with: pillarbox --config {config} serve")
        if config.parent != new:
            print(f"(set data_dir in {config} to {new.resolve()})")
    return 0


def _backup_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    parser.add_argument("words", nargs="+", metavar="DIR", help="the new backup directory")
    parser.add_argument(
        "--incremental-from",
        metavar="PREV",
        help="a previous backup: unchanged message files are hard-linked from it",
    )


def _restore_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a backup made by `pillarbox backup`")
    parser.add_argument(
        "--data-dir", required=True, metavar="NEW", help="a new or empty data directory"
    )


COMMANDS = [
    Command(
        ("backup",),
        "consistent online backup (or `backup verify DIR`)",
        cmd_backup,
        _backup_args,
        description="Back up the data dir while the server runs: SQLite snapshots of every "
        "database, then the Maildirs, queue, keys, certificates and config, with a "
        "manifest of checksums. `pillarbox backup verify DIR` checks a backup.",
    ),
    Command(
        ("restore",),
        "restore a backup into a new data dir",
        cmd_restore,
        _restore_args,
        description="Check the backup, then recreate the data dir in NEW: every message, "
        "flag, UID and UIDVALIDITY as backed up, queued mail still queued.",
    ),
]

"""Maildir in and out: Maildir++ folders (``.Name``), flags in file names, Dovecot's
``dovecot-keywords`` letters and ``dovecot-uidlist`` UIDs.

Import reads a Maildir++ root (Dovecot's, Courier's, mutt's, an export of ours): INBOX is
the root, every ``.A.B`` directory is the folder ``A/B``. Each file in ``cur/`` and ``new/``
is one message; its ``:2,`` letters are its flags, its mtime its INTERNALDATE (as Dovecot
keeps it). Files go in dovecot-uidlist order when there is one, so the UIDs we give keep the
order the old server had.

Export writes the same layout and also the folder's ``dovecot-uidlist`` with our UIDs and
UIDVALIDITY, so Dovecot (and a later import into Pillarbox) keeps them: clients of the
exported copy need not re-download anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from pillarbox.store import flags as fl
from pillarbox.store import uidlist
from pillarbox.store.dump import MailDump, StoredMailbox
from pillarbox.store.imports import ImportedMessage
from pillarbox.store.maildir import ensure_maildir
from pillarbox.store.names import INBOX, folder_dir, name_of_dir
from pillarbox.transfer import folders as fo
from pillarbox.transfer.imapwire import RemoteFolder
from pillarbox.transfer.messages import not_a_message
from pillarbox.transfer.progress import TransferProgress
from pillarbox.transfer.target import Destination, Report, TransferError, store_batch

BATCH: Final = 200


def source_folders(root: Path) -> list[tuple[str, Path]]:
    """(folder name, directory) of a Maildir++ root, INBOX first."""
    if not (root / "cur").is_dir() and not (root / "new").is_dir():
        raise TransferError(f"{root} is not a Maildir (no cur/ or new/ directory)")
    found = [(INBOX, root)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and (Path(entry.path) / "cur").is_dir():
            name = name_of_dir(entry.name)
            if name is not None and name != INBOX:
                found.append((name, Path(entry.path)))
    return found


def _message_files(folder: Path) -> list[Path]:
    """The folder's message files, in dovecot-uidlist order first, then by mtime."""
    files = []
    for sub in ("cur", "new"):
        try:
            files += [folder / sub / n for n in os.listdir(folder / sub) if not n.startswith(".")]
        except FileNotFoundError:
            continue
    known = uidlist.read(folder)
    order = known.uids if known else {}

    def key(path: Path) -> tuple[int, float, str]:
        base = fl.split_filename(path.name)[0]
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
        return (order.get(base, 1 << 33), mtime, path.name)

    return sorted(files, key=key)


def _read(path: Path, keywords: list[str], report: Report) -> ImportedMessage | None:
    try:
        data = path.read_bytes()
        mtime = path.stat().st_mtime
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        report.problem(str(path), f"cannot read it: {exc.strerror or exc}")
        return None
    why = not_a_message(data)
    if why is not None:
        report.problem(str(path), f"not a message ({why}); skipped")
        return None
    mask, names = fl.parse_info(fl.split_filename(path.name)[1], keywords)
    flags = tuple(fl.FLAG_TEXT[mask].split()) + tuple(names)
    return ImportedMessage(data, flags, mtime)


def _chunks(files: list[Path]) -> Iterator[list[Path]]:
    for start in range(0, len(files), BATCH):
        yield files[start : start + BATCH]


def import_maildir(
    root: Path, dest: Destination, progress: TransferProgress, report: Report
) -> Report:
    for name, directory in source_folders(root):
        local = fo.local_name(RemoteFolder(name, name.encode(), "/", frozenset()))
        keywords = fl.read_keywords(directory)
        files = _message_files(directory)
        label = name if name == local else f"{name} -> {local}"
        bar = progress.folder(label, len(files), sum(_size(p) for p in files))
        copied, present = report.copied, report.present
        for chunk in _chunks(files):
            batch = [m for m in (_read(p, keywords, report) for p in chunk) if m is not None]
            store_batch(dest, local, batch, report)
            bar.advance(len(chunk), sum(len(m.data) for m in batch))
        bar.finish(f"{report.copied - copied} copied, {report.present - present} already there")
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def ensure_empty_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TransferError(f"{path} exists and is not an empty directory")
    path.mkdir(parents=True, exist_ok=True)


def export_maildir(dump: MailDump, out: Path, report: Report) -> Report:
    """Write every mailbox of ``dump`` as a Maildir++ under ``out`` (empty or new)."""
    ensure_empty_dir(out)
    for box in dump.mailboxes():
        _export_folder(dump, box, out, report)
    return report


def _export_folder(dump: MailDump, box: StoredMailbox, out: Path, report: Report) -> None:
    directory = folder_dir(box.name)
    target = out / directory if directory else out
    ensure_maildir(target)
    if directory:
        (target / "maildirfolder").touch()
    messages = list(dump.messages(box))
    keywords: list[str] = []
    for message in messages:
        for flag in message.flags:
            if not flag.startswith("\\") and flag not in keywords:
                keywords.append(flag)
    letters = keywords[: fl.MAX_FILE_KEYWORDS]  # Maildir has 26 letters (a-z) for keywords
    if letters:
        fl.write_keywords(target, letters)
    entries: list[tuple[int, str]] = []
    for message in messages:
        data = dump.read_message(box, message)
        if data is None:
            continue  # expunged since the index snapshot
        mask, kw = fl.split_flags(message.flags)
        info = fl.make_info("", mask, kw, letters)
        path = target / "cur" / f"{message.base}:2,{info}"
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (message.internal_date, message.internal_date))
        entries.append((message.uid, message.base))
        report.copied += 1
        report.bytes += len(data)
    uidlist.write(target, box.uidvalidity, box.uidnext, entries)
    os.chmod(target, 0o700)

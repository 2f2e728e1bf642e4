"""mbox in and out (RFC 4155; flags in mutt's, Dovecot's and Thunderbird's header fields).

Import streams one mbox file into one mailbox. A message that cannot be stored (the file is
cut off inside it, it is empty, it is not a message) is reported with its number and line
and skipped; the rest goes on, and a re-run after fixing the file adds only what is missing
(the store recognises what it has by content).

Export writes one mbox per mailbox in Thunderbird's layout, which mutt reads as well:
``INBOX``, ``Lists.sbd/Python`` for ``Lists/Python``.
"""

from __future__ import annotations

import email.utils
import os
from pathlib import Path
from typing import Final

from pillarbox.store.dump import MailDump
from pillarbox.store.imports import ImportedMessage
from pillarbox.store.names import SEPARATOR
from pillarbox.transfer import mboxfmt
from pillarbox.transfer.maildirio import ensure_empty_dir
from pillarbox.transfer.messages import (
    flag_fields,
    flags_from_fields,
    header_end,
    insert_fields,
    not_a_message,
)
from pillarbox.transfer.progress import FolderProgress, TransferProgress
from pillarbox.transfer.target import Destination, Report, TransferError, store_batch

BATCH: Final = 200


def _date_header(data: bytes) -> float | None:
    end = header_end(data)
    head = data[: end if end > 0 else len(data)]
    for line in head.splitlines():
        if line[:5].lower() == b"date:":
            try:
                parsed = email.utils.parsedate_to_datetime(line[5:].decode("latin-1").strip())
            except (TypeError, ValueError, IndexError):
                return None
            return parsed.timestamp()
    return None


def import_mbox(
    path: Path, mailbox: str, dest: Destination, progress: TransferProgress, report: Report
) -> Report:
    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed below, read as it streams)
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        total = os.fstat(stream.fileno()).st_size
        bar = progress.folder(f"{path.name} -> {mailbox}", 0, total)
        batch: list[ImportedMessage] = []
        try:
            for entry in mboxfmt.read_mbox(stream):
                item = f"{path} message {entry.number} (line {entry.line})"
                if entry.problem is not None:
                    report.problem(item, f"{entry.problem}; skipped")
                    continue
                flags, data = flags_from_fields(entry.data)
                why = not_a_message(data)
                if why is not None:
                    report.problem(item, f"not a message ({why}); skipped")
                    continue
                when = entry.envelope_date or _date_header(data)
                batch.append(ImportedMessage(data, flags, when))
                if len(batch) >= BATCH:
                    _flush(dest, mailbox, batch, report, bar)
        except ValueError as exc:
            raise TransferError(f"{path}: {exc}") from None
        _flush(dest, mailbox, batch, report, bar)
        bar.finish(f"{report.copied} copied, {report.present} already there")
    return report


def _flush(
    dest: Destination,
    mailbox: str,
    batch: list[ImportedMessage],
    report: Report,
    bar: FolderProgress,
) -> None:
    if batch:
        store_batch(dest, mailbox, batch, report)
        bar.advance(len(batch), sum(len(m.data) for m in batch))
        batch.clear()


def mbox_path(out: Path, mailbox: str) -> Path:
    """Thunderbird's layout: a folder's children live in ``NAME.sbd/``."""
    parts = mailbox.split(SEPARATOR)
    return out.joinpath(*(p + ".sbd" for p in parts[:-1]), parts[-1])


def _sender(data: bytes) -> str:
    end = header_end(data)
    for line in data[: end if end > 0 else len(data)].splitlines():
        if line[:12].lower() == b"return-path:":
            address = line[12:].decode("latin-1").strip().strip("<>").strip()
            if address and " " not in address:
                return address
    return "MAILER-DAEMON"


def export_mbox(dump: MailDump, out: Path, report: Report) -> Report:
    ensure_empty_dir(out)
    for box in dump.mailboxes():
        target = mbox_path(out, box.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            for message in dump.messages(box):
                data = dump.read_message(box, message)
                if data is None:
                    continue
                body = flags_from_fields(data)[1].replace(b"\r\n", b"\n")
                marked = insert_fields(body, flag_fields(message.flags))
                f.write(mboxfmt.format_entry(marked, _sender(data), message.internal_date))
                report.copied += 1
                report.bytes += len(data)
    return report

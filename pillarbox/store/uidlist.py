"""Dovecot's ``dovecot-uidlist`` (version 3): the file that keeps UIDs across index loss.

Format (one per folder)::

    3 V<uidvalidity> N<next uid> [other fields]
    <uid> [extension fields] :<maildir base name>

Dovecot itself appends lines and rewrites the file now and then; so do we: new messages are
appended, and the file is rewritten after expunges. A reader takes ``N`` as a lower bound and
the highest listed UID + 1, whichever is larger. With this file a deleted index (ours or
Dovecot's) is rebuilt with the same UIDs and UIDVALIDITY, and a Maildir migrated from Dovecot
keeps its UIDs, so clients do not re-download everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

FILENAME: Final = "dovecot-uidlist"


@dataclass
class UidList:
    uidvalidity: int = 0
    next_uid: int = 1
    uids: dict[str, int] = field(default_factory=dict)  # base name -> uid


def read(folder: Path) -> UidList | None:
    """Parse the folder's uidlist; None if missing or not a version 3 file."""
    try:
        with open(folder / FILENAME, encoding="utf-8", errors="replace") as f:
            header = f.readline().split()
            if not header or header[0] != "3":
                return None
            result = UidList()
            for item in header[1:]:
                if item[:1] == "V" and item[1:].isdigit():
                    result.uidvalidity = int(item[1:])
                elif item[:1] == "N" and item[1:].isdigit():
                    result.next_uid = int(item[1:])
            for line in f:
                left, sep, base = line.rstrip("\n").partition(" :")
                if not sep:
                    left, sep, base = line.rstrip("\n").partition(":")
                uid_text = left.split(" ", 1)[0]
                if sep and uid_text.isdigit() and base and 0 < int(uid_text) < 2**32:
                    uid = int(uid_text)
                    result.uids[base] = uid
                    result.next_uid = max(result.next_uid, uid + 1)
            return result if result.uidvalidity else None
    except (FileNotFoundError, NotADirectoryError):
        return None


def write(
    folder: Path, uidvalidity: int, next_uid: int, entries: Iterable[tuple[int, str]]
) -> None:
    """Rewrite the file atomically from ``(uid, base)`` pairs in UID order."""
    tmp = folder / f"{FILENAME}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"3 V{uidvalidity} N{next_uid}\n")
        for uid, base in entries:
            f.write(f"{uid} :{base}\n")
    os.replace(tmp, folder / FILENAME)


def append(
    folder: Path, uidvalidity: int, next_uid: int, entries: Iterable[tuple[int, str]]
) -> None:
    """Append new ``(uid, base)`` lines (creating the file with its header if needed)."""
    path = folder / FILENAME
    if not path.exists():
        write(folder, uidvalidity, next_uid, entries)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"{uid} :{base}\n" for uid, base in entries))

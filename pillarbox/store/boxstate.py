"""One mailbox's state as the index keeps it (its row in ``mailboxes``, and its folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Mailbox:
    id: int
    name: str
    path: Path
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int
    special_use: str | None
    cur_mtime: int

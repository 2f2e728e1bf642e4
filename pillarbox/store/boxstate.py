"""One mailbox's state as the index keeps it (its row in ``mailboxes``, and its folder),
and the state the parts of a user's index share."""

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


@dataclass(slots=True)
class IndexState:
    """What the parts of one user's index (``store.index``) share besides the database:
    whether it is closed, whether full-text search is on, and the work left for later.
    ``unparsed`` is never False while a message waits for its parse (``store.lazyparse``);
    ``parse_wanted`` and ``backfill_wanted`` tell the background jobs (``store.mailbox``)
    that they have work."""

    full_text: bool
    unparsed: bool
    parse_wanted: bool
    backfill_wanted: bool
    closed: bool = False

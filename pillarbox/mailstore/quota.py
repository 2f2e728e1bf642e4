"""The quota rule every store applies (RFC 9208 STORAGE): one definition, pure.

Each store counts a user's usage its own way (SQLite triggers, a PostgreSQL sum, a dict);
what it does with the count is the same everywhere: APPEND, COPY and local delivery are
refused when they would take the usage past the limit; a MOVE adds nothing (every folder
of a user is under one quota root), so it is never refused and a user over quota can still
move mail to Trash to delete it.
"""

from __future__ import annotations

from pillarbox.mailstore.errors import OVERQUOTA, MailboxError


def over_quota(usage: int, adding: int, limit: int) -> bool:
    """Whether storing ``adding`` more bytes breaks ``limit`` (0: no limit).

    RFC 9208 §4.3 (OVERQUOTA): refuse what would take the usage over the limit, so a
    message that fits exactly is taken and the limit is never passed."""
    return limit > 0 and usage + adding > limit


def refuse_over_quota(usage: int, adding: int, limit: int) -> None:
    """MailboxError OVERQUOTA (IMAP's ``NO [OVERQUOTA]``) when ``adding`` bytes do not fit."""
    if over_quota(usage, adding, limit):
        raise MailboxError(
            OVERQUOTA, f"over quota: {usage} of {limit} bytes used, {adding} more do not fit"
        )

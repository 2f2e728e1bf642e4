"""Mailbox names as the protocols send them: Unicode, ``/`` separated, INBOX normalised.

The rules every store applies to a wire name, whatever it keeps on disk (RFC 3501 §5.1):
:func:`validate` refuses what can never be a mailbox, :func:`normalise` makes INBOX
case-insensitive. ``pillarbox.store.names`` adds the Maildir++ directory of a name.
"""

from __future__ import annotations

import re
from typing import Final

from pillarbox.mailstore.errors import CANNOT, MailboxError

SEPARATOR: Final = "/"
INBOX: Final = "INBOX"
MAX_DEPTH: Final = 16
MAX_NAME_BYTES: Final = 240  # as the Maildir store: a name must fit a directory name
# The mailboxes every user has from the start, with their special use (RFC 6154).
SPECIAL_USE: Final = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


class BadMailboxName(ValueError):
    """The name cannot be a mailbox (the IMAP layer answers NO / BAD with the reason)."""


def validate(name: str) -> list[str]:
    """The components of a valid mailbox name, or BadMailboxName."""
    if not name:
        raise BadMailboxName("empty mailbox name")
    if _CONTROL_RE.search(name):
        raise BadMailboxName("mailbox name contains control characters")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise BadMailboxName("empty hierarchy level in mailbox name")
    if any(p in (".", "..") for p in parts):
        raise BadMailboxName("'.' and '..' are not mailbox names")
    if len(parts) > MAX_DEPTH:
        raise BadMailboxName("mailbox hierarchy too deep")
    return parts


def normalise(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), also as the first level of a hierarchy."""
    head, sep, rest = name.partition(SEPARATOR)
    return INBOX + sep + rest if head.upper() == INBOX else name


def parent_names(name: str) -> list[str]:
    """``A/B/C`` -> ``["A", "A/B"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def check_name(name: str) -> None:
    """MailboxError CANNOT for a name no mailbox can have (a store without directories
    keeps the Maildir store's length limit, so a mailbox moves between stores)."""
    try:
        validate(name)
    except BadMailboxName as exc:
        raise MailboxError(CANNOT, str(exc)) from None
    if len(name.encode()) > MAX_NAME_BYTES:
        raise MailboxError(CANNOT, "mailbox name too long")

"""Plain result types of the mail store: the neutral API's (``pillarbox.mailstore.results``),
re-exported with ``MailboxError`` for the store's modules."""

from __future__ import annotations

from pillarbox.mailstore.errors import MailboxError
from pillarbox.mailstore.results import (
    ChangeSet,
    MailboxInfo,
    SelectInfo,
    StatusInfo,
    StoreResult,
)

__all__ = ["ChangeSet", "MailboxError", "MailboxInfo", "SelectInfo", "StatusInfo", "StoreResult"]

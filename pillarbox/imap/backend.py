"""What an IMAP session needs from the mail store: the neutral API of ``pillarbox.mailstore``.

The imap package never imports ``pillarbox.store``; ``app.py`` hands the session an object
that implements :class:`~pillarbox.mailstore.api.MailStore` (``pillarbox.store.mailbox``'s
today, a PostgreSQL-backed one later). A store's :class:`MailboxError` becomes
``NO [code] text`` (:func:`response_code`); any other exception is an internal error.
"""

from __future__ import annotations

from pillarbox.mailstore import errors
from pillarbox.mailstore.api import (
    ChangeSet,
    MailboxInfo,
    SelectInfo,
    SortingMail,
    StatusInfo,
    StoreResult,
    UserMail,
)
from pillarbox.mailstore.api import MailStore as MailBackend
from pillarbox.mailstore.errors import MailboxError
from pillarbox.mailstore.filters import SearchFilter
from pillarbox.mailstore.flags import FLAG_TEXT, SYSTEM_FLAGS
from pillarbox.mailstore.rows import FetchRow, FlagBatch, Parts, SearchRow

__all__ = [
    "FLAG_TEXT",
    "SYSTEM_FLAGS",
    "ChangeSet",
    "FetchRow",
    "FlagBatch",
    "MailBackend",
    "MailboxError",
    "MailboxInfo",
    "Parts",
    "SearchFilter",
    "SearchRow",
    "SelectInfo",
    "SortingMail",
    "StatusInfo",
    "StoreResult",
    "UserMail",
    "response_code",
]

# The IMAP response code of each store error code (RFC 5530, RFC 9051 §7.1, RFC 9208 §4.3,
# RFC 6154 §6). The store's codes are spelled like these, but the mapping is ours to keep.
_RESPONSE_CODES = {
    errors.NONEXISTENT: "NONEXISTENT",
    errors.TRYCREATE: "TRYCREATE",
    errors.ALREADYEXISTS: "ALREADYEXISTS",
    errors.CANNOT: "CANNOT",
    errors.OVERQUOTA: "OVERQUOTA",
    errors.USEATTR: "USEATTR",
    errors.NONE: "",
}


def response_code(error: MailboxError) -> str:
    """The IMAP response code for a store error ("" for none)."""
    return _RESPONSE_CODES.get(error.code, "")

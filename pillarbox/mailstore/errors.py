"""The one exception of the mail-store API.

A store raises :class:`MailboxError` when the user asked for something impossible; any
other exception is an internal error. ``code`` is one of the constants below; they are
spelled as the IMAP response codes they become (RFC 5530, RFC 9051 §7.1), which keeps the
IMAP mapping a lookup, but the store does not speak IMAP: POP3 answers ``-ERR text``.
"""

from __future__ import annotations

from typing import Final

NONEXISTENT: Final = "NONEXISTENT"  # no such mailbox (RFC 5530 §3)
TRYCREATE: Final = "TRYCREATE"  # the target mailbox of APPEND/COPY is missing (RFC 9051)
ALREADYEXISTS: Final = "ALREADYEXISTS"  # CREATE/RENAME onto an existing name (RFC 5530)
CANNOT: Final = "CANNOT"  # a name or operation the store can never allow (RFC 5530)
OVERQUOTA: Final = "OVERQUOTA"  # the user's quota would be passed (RFC 9208 §4.3)
USEATTR: Final = "USEATTR"  # an unsupported special-use attribute (RFC 6154 §6)
NONE: Final = ""  # an error with no more specific code

CODES: Final = (NONEXISTENT, TRYCREATE, ALREADYEXISTS, CANNOT, OVERQUOTA, USEATTR, NONE)


class MailboxError(Exception):
    """An error the user caused: ``code`` (one of :data:`CODES`) and a human ``text``."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code
        self.text = text

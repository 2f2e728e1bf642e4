"""What an IMAP session needs from the mail store: a small ``typing.Protocol``.

The imap package never imports ``pillarbox.store``; ``app.py`` hands the session an object
with these methods (``pillarbox.store.mailbox.MailStore`` / ``UserMailboxes`` today, a
PostgreSQL-backed one later). Mailbox names are wire names (Unicode, ``/`` separated, INBOX
normalised). Flags travel as IMAP text (``\\Seen $Forwarded``) so FETCH FLAGS is a copy.

Errors: methods raise an exception with ``user_error = True`` and ``code`` (an IMAP response
code such as ``NONEXISTENT``, ``TRYCREATE``, ``ALREADYEXISTS``, or "") and ``text`` when the
user asked for something impossible; the session answers ``NO [code] text``. Any other
exception is an internal error (``NO`` plus a logged traceback).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any, Protocol

# Row layouts returned by fetch(): (uid, flags text, internal date (epoch seconds), size,
# modseq) and, with data=True, also (envelope, structure, header bytes) as produced by
# pillarbox.mime.
ROW_UID, ROW_FLAGS, ROW_DATE, ROW_SIZE, ROW_MODSEQ, ROW_ENVELOPE, ROW_STRUCTURE, ROW_HEADER = range(
    8
)
# Rows of search_rows(): (uid, flags mask, keywords, internal date, size, modseq, sent date
# (proleptic ordinal or None)[, case-folded header text "name:value" lines]).
# ``where`` is a neutral filter the store pushes down to its database; every match of the
# SEARCH program must pass it (it may let more through; the session re-checks those):
#   ("all",)  ("mask", bit, present)  ("keyword", name, present)  ("larger", n)
#   ("smaller", n)  ("date", "before"|"on"|"since", ordinal)  (internal date, UTC day)
#   ("sent", op, ordinal)  ("idate", ">"|"<=", epoch)  ("modseq", n)  ("uids", [(lo, hi)])
#   ("header", field, value)  (case-folded substring of the header text)
#   ("text", "body"|"text", needle)  (case-folded needle of >= 3 characters, in the full-text
#       index's body text, or body or header text for "text"; messages not indexed yet pass
#       too, so this is exact only when full_text_pending() said 0)
#   ("and", [nodes])  ("or", a, b)  ("not", a)
MASK_SEEN, MASK_ANSWERED, MASK_FLAGGED, MASK_DELETED, MASK_DRAFT = 1, 2, 4, 8, 16
_MASK_NAMES = (
    ("\\Seen", MASK_SEEN),
    ("\\Answered", MASK_ANSWERED),
    ("\\Flagged", MASK_FLAGGED),
    ("\\Deleted", MASK_DELETED),
    ("\\Draft", MASK_DRAFT),
)
# FLAG_TEXT[mask]: the FLAGS text of a system flag mask (fetch_flags lines carry masks).
FLAG_TEXT = tuple(" ".join(n for n, bit in _MASK_NAMES if mask & bit) for mask in range(32))


class MailboxInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def special_use(self) -> str | None: ...
    @property
    def subscribed(self) -> bool: ...


class StatusInfo(Protocol):
    @property
    def messages(self) -> int: ...
    @property
    def recent(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def uidvalidity(self) -> int: ...
    @property
    def unseen(self) -> int: ...
    @property
    def deleted(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def deleted_storage(self) -> int: ...  # bytes of the \\Deleted messages (RFC 9208)


class SelectInfo(Protocol):
    @property
    def uidvalidity(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def uids(self) -> array[int]: ...
    @property
    def recent_from_uid(self) -> int: ...
    @property
    def first_unseen_uid(self) -> int | None: ...
    @property
    def keywords(self) -> tuple[str, ...]: ...


class ChangeSet(Protocol):
    @property
    def present(self) -> array[int] | None: ...  # set when some known UIDs vanished
    @property
    def new_uids(self) -> array[int]: ...
    @property
    def flag_updates(self) -> list[tuple[int, str, int]]: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def recent_from_uid(self) -> int: ...


class StoreResult(Protocol):
    @property
    def updated(self) -> list[tuple[int, str, int]]: ...
    @property
    def failed(self) -> list[int]: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def previous_modseq(self) -> int: ...


class UserMail(Protocol):
    """One authenticated user's mailboxes."""

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]: ...
    async def release(self) -> None: ...
    async def list_mailboxes(self) -> list[Any]: ...
    async def subscriptions(self) -> set[str]: ...
    async def create(self, name: str, special_use: str | None = None) -> None: ...
    async def delete(self, name: str) -> None: ...
    async def rename(self, old: str, new: str) -> None: ...
    async def subscribe(self, name: str, on: bool) -> None: ...
    async def status(self, name: str) -> Any: ...
    async def select(self, name: str, readonly: bool) -> Any: ...
    async def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> Any: ...
    async def vanished(
        self, name: str, since_modseq: int, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]: ...
    # vanished: UID ranges within ``ranges`` expunged after ``since_modseq`` (RFC 7162
    # QRESYNC), sorted; may include UIDs expunged earlier (§3.2.5.1), never a present one.
    async def fetch(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        data: bool,
        limit: int,
        changed_since: int = 0,
    ) -> list[tuple[Any, ...]]: ...  # only rows with modseq > changed_since
    async def search_uids(self, name: str, where: Any) -> tuple[array[int], int]: ...
    async def fetch_flags(
        self, name: str, ranges: list[tuple[int, int]], limit: int
    ) -> tuple[str, str, str, str, int]: ...
    # fetch_flags: ("1,2,3" UIDs, "1,0,5" masks, "7,7,9" modseqs, "2 $Work\n3 a b" keyword
    # lines of the messages that have keywords, last UID or 0 when there is nothing)
    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: Any, limit: int
    ) -> list[tuple[Any, ...]]: ...
    async def read_message(self, name: str, uid: int) -> bytes | None: ...
    async def full_text_pending(self, name: str, max_uid: int) -> int | None: ...
    async def full_text_catch_up(self, name: str) -> None: ...
    async def store(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> Any: ...
    async def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]: ...
    async def append(
        self, name: str, data: bytes, flags: tuple[str, ...], internal_date: float | None
    ) -> tuple[int, int]: ...
    async def copy(
        self, src: str, ranges: list[tuple[int, int]], dst: str, move: bool
    ) -> tuple[int, list[int], list[int]]: ...
    # append and copy raise a user error with code OVERQUOTA when the user's quota would
    # be passed (RFC 9208 §4.3); nothing is then written.
    async def quota(self) -> tuple[int, int]: ...  # (bytes used, bytes allowed; 0 = none)


class MailBackend(Protocol):
    async def open(self, user: str) -> UserMail: ...


def is_user_error(exc: BaseException) -> bool:
    return bool(getattr(exc, "user_error", False))

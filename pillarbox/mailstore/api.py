"""The ``MailStore`` / ``UserMail`` Protocols: the whole storage interface of IMAP and POP3.

``pillarbox.store.mailbox.MailStore`` implements them on Maildir + SQLite (tests check the
conformance with mypy); a PostgreSQL-backed store would implement the same. Mailbox names
are wire names (Unicode, ``/`` separated, INBOX normalised). Flags travel as IMAP text
(``\\Seen $Forwarded``) in FETCH rows and as masks plus keywords in SEARCH rows and flag
batches. A method raises :class:`~pillarbox.mailstore.errors.MailboxError` for what the
user asked wrongly; any other exception is an internal error.
"""

from __future__ import annotations

from array import array
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from pillarbox.mailstore.filters import SearchFilter
from pillarbox.mailstore.rows import (
    ALL_PARTS,
    Appended,
    Copied,
    Delivered,
    FetchRow,
    FlagBatch,
    FlagUpdate,
    MailboxEvent,
    Parts,
    Quota,
    SearchRow,
)


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
    def flag_updates(self) -> list[FlagUpdate]: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def recent_from_uid(self) -> int: ...


class StoreResult(Protocol):
    @property
    def updated(self) -> list[FlagUpdate]: ...  # every matched message
    @property
    def failed(self) -> list[int]: ...
    @property
    def highestmodseq(self) -> int: ...
    @property
    def previous_modseq(self) -> int: ...


class UserMail(Protocol):
    """One authenticated user's mailboxes."""

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]: ...
    # watch: ``callback(mailbox)`` after every committed change to a mailbox's messages
    # (IDLE's news; the callee then asks ``changes``/``status``); returns the unwatcher.
    def watch_names(self, callback: Callable[[MailboxEvent], None]) -> Callable[[], None]: ...
    # watch_names: ``callback(event)`` after each CREATE, DELETE, RENAME, SUBSCRIBE and
    # UNSUBSCRIBE of the user's, on the loop as ``watch`` (NOTIFY, RFC 5465 §5.4, §5.5).
    async def release(self) -> None: ...
    async def list_mailboxes(self) -> Sequence[MailboxInfo]: ...
    async def subscriptions(self) -> set[str]: ...
    async def create(self, name: str, special_use: str | None = None) -> None: ...
    async def delete(self, name: str) -> None: ...
    async def rename(self, old: str, new: str) -> None: ...
    async def subscribe(self, name: str, on: bool) -> None: ...
    async def status(self, name: str) -> StatusInfo: ...
    async def select(self, name: str, readonly: bool) -> SelectInfo: ...
    async def changes(
        self,
        name: str,
        known_max: int,
        known_count: int,
        since_modseq: int,
        with_expunges: bool,
        claim_recent: bool,
    ) -> ChangeSet: ...
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
        parts: Parts = ALL_PARTS,
    ) -> list[FetchRow]: ...  # only rows with modseq > changed_since
    # fetch: data=False leaves envelope, structure and header None; with data, those not in
    # ``parts`` may be None too.
    async def search_uids(self, name: str, where: SearchFilter) -> tuple[array[int], int]: ...
    async def fetch_flags(
        self, name: str, ranges: list[tuple[int, int]], limit: int, modseqs: bool = True
    ) -> FlagBatch: ...
    # fetch_flags: up to ``limit`` messages of the first non-empty range; ``modseqs`` False
    # leaves FlagBatch.modseqs empty (a FETCH without MODSEQ need not read them).
    async def search_rows(
        self, name: str, lo: int, hi: int, header: bool, where: SearchFilter, limit: int
    ) -> list[SearchRow]: ...
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
    ) -> StoreResult: ...
    async def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]: ...
    async def append(
        self, name: str, data: bytes, flags: tuple[str, ...], internal_date: float | None
    ) -> Appended: ...
    async def copy(
        self, src: str, ranges: list[tuple[int, int]], dst: str, move: bool
    ) -> Copied: ...
    # append and copy raise MailboxError(OVERQUOTA) when the user's quota would
    # be passed (RFC 9208 §4.3, mailstore.quota's rule; a move never is); nothing is
    # then written. copy gives the copies consecutive UIDs from the destination's UIDNEXT
    # in source-UID order under one MODSEQ (COPYUID, RFC 4315 §3); a message gone meanwhile
    # gets none. Each store allocates them in its own storage's transaction (a counter, a
    # SQLite row beside the file links, a locked PostgreSQL row), so that is not shared code.
    async def quota(self) -> Quota: ...


# One SORT criterion: an RFC 5256 §3 / RFC 5957 §3 sort key (ARRIVAL, CC, DATE, FROM, SIZE,
# SUBJECT, TO, DISPLAYFROM, DISPLAYTO) and whether it is REVERSE.
SortCriterion = tuple[str, bool]


@runtime_checkable
class SortingMail(Protocol):
    """A :class:`UserMail` whose index keeps the sort keys: SORT asks it for the order
    instead of reading every message's header. A store without it is sorted by the IMAP
    layer from the header blocks ``fetch`` gives (the same keys: pillarbox.mime.sortkeys)."""

    async def sort(
        self, name: str, ranges: list[tuple[int, int]], criteria: Sequence[SortCriterion]
    ) -> array[int]: ...

    # sort: the UIDs of the messages in ``ranges`` (sorted, disjoint) in the order of
    # ``criteria`` (most significant first), ties by UID (RFC 5256 §3); a message without
    # parsed data is left out when a criterion needs its header, as the IMAP layer does.


class MailStore(Protocol):
    """The mail store service: a handle per user, shared by that user's sessions."""

    async def open(self, user: str) -> UserMail: ...


# learner(user, messages, spam): what the spam filter learns from a user's COPY to Junk.
Learner = Callable[[str, list[bytes], bool], Awaitable[None]]


class QuotaCheck(Protocol):
    """The quota check at SMTP RCPT and DATA (RFC 9208 §4.3, 452 4.2.2): the user's limit
    (0: none) and what its mail takes now, in bytes."""

    def quota_limit(self, user: str) -> int: ...
    async def usage(self, user: str) -> int: ...


class MailDelivery(Protocol):
    """The mail store as local delivery and Sieve see it: one call writes, indexes and
    announces a message; where and how it is kept is the store's alone."""

    async def mailbox_exists(self, user: str, folder: str) -> bool: ...

    # mailbox_exists: whether ``user`` has ``folder`` now (RFC 5490 §3.1 mailboxexists);
    # False for a name no folder can have, never an error.
    async def deliver(
        self,
        user: str,
        folder: str,
        message: Sequence[bytes | Path],
        *,
        sender: str | None = None,
        prefix: bytes = b"",
        flags: Sequence[str] = (),
    ) -> Delivered: ...

    # deliver: ``message`` (bytes, or spooled files the store reads) into ``user``'s
    # ``folder`` (made if missing) with ``flags`` (a Sieve script's), durably, indexed and
    # announced to the user's sessions before it returns; with ``sender`` (the envelope
    # sender, "" for the null sender) the message starts with Return-Path and Delivered-To
    # (RFC 5321 §4.4), then ``prefix``. OSError: nothing was stored (the caller retries);
    # BadMailboxName: no folder can have that name.


class MailService(MailStore, MailDelivery, QuotaCheck, Protocol):
    """The mail store as the whole server uses it (``app.Services.mail_store``): IMAP's and
    POP3's :meth:`open`, local delivery, the quota check at RCPT and DATA, the spam
    component's learning hook, and the nudge for mail changed outside the store."""

    def set_learner(self, learner: Learner | None) -> None: ...
    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None: ...

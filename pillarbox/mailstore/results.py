"""Plain result types a store returns, one frozen dataclass each: what the Protocols of
:mod:`pillarbox.mailstore.api` describe, for every backend to build (SQLite's, memory's)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from pillarbox.mailstore.rows import FlagUpdate

__all__ = ["ChangeSet", "MailboxInfo", "SelectInfo", "StatusInfo", "StoreResult"]


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True, slots=True)
class StatusInfo:
    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int
    deleted: int
    size: int
    highestmodseq: int
    deleted_storage: int = 0  # bytes of the \\Deleted messages (RFC 9208 DELETED-STORAGE)


@dataclass(frozen=True, slots=True)
class SelectInfo:
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    uids: array[int]
    recent_from_uid: int  # UIDs >= this are \Recent in this session
    first_unseen_uid: int | None
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChangeSet:
    present: array[int] | None  # UIDs <= known max still there, if any vanished
    new_uids: array[int]
    flag_updates: list[FlagUpdate]
    highestmodseq: int
    uidnext: int
    recent_from_uid: int


@dataclass(frozen=True, slots=True)
class StoreResult:
    updated: list[FlagUpdate]  # every matched message
    failed: list[int]  # UNCHANGEDSINCE conflicts (RFC 7162 §3.1.3 MODIFIED)
    highestmodseq: int
    previous_modseq: int  # the mailbox's HIGHESTMODSEQ before this change

"""The rows the store returns: one typed shape per query, so no layer counts columns.

``NamedTuple`` keeps rows as cheap as the plain tuples they replace (FETCH of 50,000
messages builds that many), and lets a row be unpacked where speed matters.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

# pillarbox.mime's parsed envelope and body structure, decoded from the index's JSON.
Envelope = list[Any]
Structure = dict[str, Any]


class Parts(enum.Flag):
    """The parsed data a ``fetch(data=True)`` needs of each row: a store may leave the
    others None (reading and decoding them cost most of ``FETCH 1:* (ENVELOPE)``)."""

    ENVELOPE = enum.auto()
    STRUCTURE = enum.auto()
    HEADER = enum.auto()


ALL_PARTS: Final = Parts.ENVELOPE | Parts.STRUCTURE | Parts.HEADER


class FetchRow(NamedTuple):
    """A message for FETCH: flags as IMAP text (``\\Seen $Work``), so FETCH FLAGS is a copy;
    with ``data`` the parsed envelope, body structure and header bytes of pillarbox.mime."""

    uid: int
    flags: str
    internal_date: int  # epoch seconds
    size: int  # CRLF size (RFC822.SIZE, POP3 LIST)
    modseq: int
    # The parsed list, or its IMAP wire form when the store keeps that (bytes the same for
    # every session: see pillarbox.mime.imapwire).
    envelope: Envelope | bytes | None = None
    structure: Structure | None = None
    header: bytes | None = None


class FlagBatch(NamedTuple):
    """The narrow FETCH FLAGS path: up to a limit of messages of one UID range, as columns.

    ``uids``, ``masks`` (system flags, one byte per message) and ``modseqs`` (empty unless
    asked for) are parallel, in UID order; ``keywords`` holds only the messages that have
    any. ``last`` is the highest UID in the batch, 0 when it is empty.
    """

    uids: Sequence[int]  # a range when there is no gap
    masks: bytes
    modseqs: list[int]
    keywords: dict[int, tuple[str, ...]]
    last: int


EMPTY_FLAGS = FlagBatch([], b"", [], {}, 0)


class SearchRow(NamedTuple):
    """A message as SEARCH tests it; ``header`` is the case-folded ``name:value`` lines of
    its header (empty unless asked for or the filter needed it)."""

    uid: int
    mask: int
    keywords: str  # space-separated
    internal_date: int
    size: int
    modseq: int
    sent_date: int | None  # proleptic ordinal of the Date: field
    header: str


class FlagUpdate(NamedTuple):
    """A message whose flags a STORE or a change set reports: its FETCH FLAGS text and its
    MODSEQ (RFC 7162 §3.1.4: what ``FETCH (FLAGS MODSEQ)`` answers)."""

    uid: int
    flags: str
    modseq: int


class Appended(NamedTuple):
    """Where APPEND put a message: the APPENDUID response code (RFC 4315 §3)."""

    uidvalidity: int
    uid: int


class Copied(NamedTuple):
    """What COPY/MOVE did: the COPYUID response code (RFC 4315 §3), source and destination
    UIDs pairwise in the same order (messages gone meanwhile are in neither)."""

    uidvalidity: int  # the destination's
    src_uids: list[int]
    dst_uids: list[int]


class Delivered(NamedTuple):
    """What local delivery stored: the folder (its normalised wire name) and the store's
    own name for the message (a Maildir base name, a row's key), for logs and traces.
    Opaque: no caller reads a file or a row through it."""

    folder: str
    id: str


class Quota(NamedTuple):
    """The user's storage (RFC 9208 STORAGE resource), in bytes; ``limit`` 0 is none."""

    used: int
    limit: int


class ListChange(enum.Enum):
    """What happened to a name in the user's mailbox list."""

    CREATED = "created"
    DELETED = "deleted"
    RENAMED = "renamed"  # also moves the mailboxes below the old name
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class MailboxEvent(NamedTuple):
    """A change to a user's list of mailboxes or subscriptions, as the store announces it
    to the watchers of :meth:`~pillarbox.mailstore.api.UserMail.watch_names` (what IMAP
    NOTIFY's MailboxName and SubscriptionChange tell, RFC 5465 §5.4, §5.5)."""

    kind: ListChange
    name: str
    old_name: str | None = None  # for RENAMED

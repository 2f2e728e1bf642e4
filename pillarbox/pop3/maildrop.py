"""The maildrop of one POP3 session: a numbered snapshot of INBOX and the UPDATE state.

RFC 1939 §5/§6: after authentication the messages get the numbers 1..n, which stay fixed for
the session; mail arriving meanwhile waits for the next session. ``DELE`` only marks;
``RSET`` unmarks; only ``QUIT`` (the UPDATE state) removes the marked messages, and a session
that ends any other way changes nothing.

The snapshot is two compact arrays (UID, size) and two bitmaps (deleted, retrieved): about
14 bytes per message, never the messages themselves. UIDL values are
``UIDVALIDITY.UID`` (RFC 1939 §7 allows 0x21..0x7E, up to 70 characters), which the store
keeps across sessions and restarts; a new UIDVALIDITY (a rebuilt index) changes every UIDL,
so clients fetch mail again rather than lose it.

Removal is a real expunge in the store (IMAP sessions see it): the marked UIDs get
``\\Deleted`` and exactly those UID ranges are expunged, so a message an IMAP user had
flagged ``\\Deleted`` but POP3 did not DELE stays. Retrieved messages that were kept get
``\\Seen`` (as Dovecot does), so an IMAP client shows them read.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from pillarbox.pop3.backend import INBOX, MailDrop

FETCH_BATCH: Final = 5000  # rows per store call while taking the snapshot
MAX_UID: Final = 0xFFFFFFFF


class MaildropError(Exception):
    """A message number the session cannot use: answer ``-ERR text``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class MessageVanished(MaildropError):
    """The message was removed by another session (IMAP) since the snapshot."""


@dataclass(frozen=True, slots=True)
class UpdateResult:
    deleted: int  # messages the store removed
    missing: int  # marked messages already gone (removed by another session)


class Maildrop:
    """See the module docstring."""

    def __init__(self, mail: MailDrop, uidvalidity: int, uids: array[int], sizes: array[int]):
        self.mail = mail
        self.uidvalidity = uidvalidity
        self._uids = uids
        self._sizes = sizes
        self._deleted = bytearray(len(uids))
        self._retrieved = bytearray(len(uids))
        self._deleted_count = 0
        self._deleted_size = 0
        self._total_size = sum(sizes)

    @classmethod
    async def load(cls, mail: MailDrop) -> Maildrop:
        """Take the snapshot: the messages in INBOX now, in UID order."""
        status = await mail.status(INBOX)
        last = status.uidnext - 1  # later arrivals belong to the next session
        uids, sizes = array("I"), array("Q")
        low = 1
        while low <= last:
            rows = await mail.fetch(INBOX, [(low, last)], False, FETCH_BATCH)
            for row in rows:
                uids.append(row.uid)
                sizes.append(row.size)
            if len(rows) < FETCH_BATCH:
                break
            low = rows[-1].uid + 1
        return cls(mail, status.uidvalidity, uids, sizes)

    # --- numbers ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._uids)

    def _index(self, number: int) -> int:
        """The array index of message ``number``; an error for unknown or deleted ones."""
        if not 1 <= number <= len(self._uids):
            raise MaildropError("no such message")
        index = number - 1
        if self._deleted[index]:
            raise MaildropError(f"message {number} already deleted")
        return index

    @property
    def count(self) -> int:
        """STAT: messages not marked deleted."""
        return len(self._uids) - self._deleted_count

    @property
    def size(self) -> int:
        """STAT: their size in octets."""
        return self._total_size - self._deleted_size

    def size_of(self, number: int) -> int:
        return self._sizes[self._index(number)]

    def uid_of(self, number: int) -> int:
        return self._uids[self._index(number)]

    def unique_id(self, number: int) -> str:
        return f"{self.uidvalidity}.{self.uid_of(number)}"

    def listing(self) -> Iterator[tuple[int, int, int]]:
        """``(number, size, uid)`` of every message not marked deleted, in order."""
        deleted = self._deleted
        for index, uid in enumerate(self._uids):
            if not deleted[index]:
                yield index + 1, self._sizes[index], uid

    # --- reading ---------------------------------------------------------------------------
    async def read(self, number: int, *, retrieve: bool) -> bytes:
        """The message (CRLF); ``retrieve`` (RETR, not TOP) marks it for ``\\Seen``."""
        index = self._index(number)
        data = await self.mail.read_message(INBOX, self._uids[index])
        if data is None:
            raise MessageVanished(f"message {number} was removed by another session")
        if retrieve:
            self._retrieved[index] = 1
        return data

    # --- marks -------------------------------------------------------------------------------
    def delete(self, number: int) -> None:
        index = self._index(number)
        self._deleted[index] = 1
        self._deleted_count += 1
        self._deleted_size += self._sizes[index]

    def reset(self) -> None:
        """RSET: unmark every message."""
        self._deleted = bytearray(len(self._uids))
        self._deleted_count = 0
        self._deleted_size = 0

    @property
    def marked(self) -> int:
        return self._deleted_count

    # --- the UPDATE state (RFC 1939 §6) -------------------------------------------------------
    async def update(self) -> UpdateResult:
        """Apply the session: ``\\Seen`` for kept retrieved messages, then the expunge."""
        seen = self._ranges(
            i for i in range(len(self._uids)) if self._retrieved[i] and not self._deleted[i]
        )
        if seen:
            await self.mail.store(INBOX, seen, "add", ("\\Seen",), None)
        doomed = self._ranges(i for i in range(len(self._uids)) if self._deleted[i])
        if not doomed:
            return UpdateResult(0, 0)
        await self.mail.store(INBOX, doomed, "add", ("\\Deleted",), None)
        removed = await self.mail.expunge(INBOX, doomed)
        return UpdateResult(len(removed), self._deleted_count - len(removed))

    def _ranges(self, indexes: Iterator[int]) -> list[tuple[int, int]]:
        """UID ranges covering exactly the given messages: consecutive UIDs merge."""
        ranges: list[tuple[int, int]] = []
        for index in indexes:
            uid = self._uids[index]
            if ranges and ranges[-1][1] == uid - 1:
                ranges[-1] = (ranges[-1][0], uid)
            else:
                ranges.append((uid, uid))
        return ranges


class MaildropLocks:
    """RFC 1939 §4: one POP3 session per maildrop at a time; others get ``[IN-USE]``.

    In-process (the server is one process). IMAP sessions are not locked out: the store
    serialises their changes, and a message IMAP removes meanwhile answers ``-ERR``.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, user: str) -> bool:
        if user in self._held:
            return False
        self._held.add(user)
        return True

    def release(self, user: str) -> None:
        self._held.discard(user)

    def __contains__(self, user: str) -> bool:
        return user in self._held

"""One user's mailboxes in memory: the state and rules the SQLite index keeps, in dicts.

Semantics copied from ``pillarbox.store`` (not its SQL): UIDs ascend in arrival order and are
never reused (RFC 9051 §2.3.1.1); each change takes the mailbox's next MODSEQ (RFC 7162
§3.1.1) and an expunge leaves a tombstone under its MODSEQ for QRESYNC's VANISHED
(§3.2.5); ``\\Recent`` goes to the first session told of a message (RFC 3501 §2.3.2); a
keyword once stored stays in the mailbox's FLAGS list, as the folder's keyword file keeps
it. Everything here is synchronous and quick: it runs on the event loop, between awaits,
so each operation is atomic without a lock.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from pillarbox import mime
from pillarbox.mailstore.errors import (
    ALREADYEXISTS,
    CANNOT,
    NONEXISTENT,
    TRYCREATE,
    USEATTR,
    MailboxError,
)
from pillarbox.mailstore.flags import DELETED, FLAG_TEXT, split_flags
from pillarbox.mailstore.names import INBOX, SPECIAL_USE, check_name, parent_names
from pillarbox.mailstore.quota import refuse_over_quota
from pillarbox.mailstore.rows import Copied, Envelope, Structure

Ranges = list[tuple[int, int]]


@dataclass(slots=True)
class Message:
    """One message: its bytes (CRLF), flags and what mime parsed of it."""

    uid: int
    mask: int
    keywords: list[str]
    modseq: int
    internal_date: int
    size: int
    sent_date: int | None
    data: bytes
    envelope: Envelope
    structure: Structure
    header: bytes
    search_text: str

    @property
    def flags(self) -> str:
        """FETCH FLAGS text: system flags first, then keywords, as the SQLite store gives."""
        base = FLAG_TEXT[self.mask & 31]
        if not self.keywords:
            return base
        words = " ".join(self.keywords)
        return f"{base} {words}" if base else words


def parse_message(data: bytes, flags: tuple[str, ...] | list[str], when: float | None) -> Message:
    """A message with UID and MODSEQ 0 (set when it is placed), parsed as the index does."""
    data = mime.to_crlf(data)
    parsed = mime.parse(data)
    mask, keywords = split_flags(flags)
    return Message(
        uid=0,
        mask=mask,
        keywords=keywords,
        modseq=0,
        internal_date=int(time.time() if when is None else when),
        size=len(data),
        sent_date=parsed.sent_date,
        data=data,
        envelope=parsed.envelope,
        structure=parsed.structure,
        header=data[: parsed.header_end],
        search_text=mime.header_search_text(parsed.fields),
    )


@dataclass(slots=True)
class Mailbox:
    name: str
    uidvalidity: int
    special_use: str | None
    uidnext: int = 1
    highestmodseq: int = 1
    recent_uid: int = 1  # UIDs >= this are \Recent for the next session that claims them
    messages: dict[int, Message] = field(default_factory=dict)  # in UID order
    keywords: dict[str, None] = field(default_factory=dict)  # every keyword ever stored
    tombstones: list[tuple[int, int]] = field(default_factory=list)  # (modseq, uid)

    def next_modseq(self) -> int:
        self.highestmodseq += 1
        return self.highestmodseq

    def uids(self) -> list[int]:
        return list(self.messages)

    def in_ranges(self, ranges: Ranges) -> Iterator[Message]:
        """The messages with UIDs in ``ranges`` (sorted, disjoint), in UID order."""
        uids = self.uids()
        for lo, hi in ranges:
            for i in range(bisect_left(uids, lo), bisect_right(uids, hi)):
                yield self.messages[uids[i]]

    def place(self, message: Message, modseq: int) -> int:
        message.uid, message.modseq = self.uidnext, modseq
        self.uidnext += 1
        self.messages[message.uid] = message
        self.keywords.update(dict.fromkeys(message.keywords))
        return message.uid

    def remove(self, uids: list[int]) -> None:
        """Expunge ``uids`` under one new MODSEQ, leaving their tombstones (RFC 7162 §3.2.7)."""
        if not uids:
            return
        modseq = self.next_modseq()
        for uid in uids:
            del self.messages[uid]
            self.tombstones.append((modseq, uid))


class UserBoxes:
    """One user's mailboxes (see the module docstring)."""

    def __init__(self) -> None:
        self.boxes: dict[str, Mailbox] = {}
        self.subscribed: set[str] = {INBOX, *SPECIAL_USE}
        self._add(INBOX, None)
        for name, use in SPECIAL_USE.items():
            self._add(name, use)

    def _add(self, name: str, special_use: str | None) -> Mailbox:
        # A new UIDVALIDITY above every earlier one: a name deleted and created again is a
        # new mailbox to a client's cache (RFC 9051 §2.3.1.1).
        last = max((box.uidvalidity for box in self.boxes.values()), default=0)
        box = Mailbox(name, max(int(time.time()), last + 1) & 0xFFFFFFFF, special_use)
        self.boxes[name] = box
        return box

    def usage(self) -> int:
        return sum(m.size for box in self.boxes.values() for m in box.messages.values())

    def check_quota(self, adding: int, limit: int) -> None:
        """RFC 9208 §4.3: refuse what would take the usage over the limit (0: none)."""
        if limit > 0:
            refuse_over_quota(self.usage(), adding, limit)

    def mailbox(self, name: str) -> Mailbox:
        box = self.boxes.get(name)
        if box is None:
            raise MailboxError(NONEXISTENT, f"no mailbox {name}")
        return box

    def target(self, name: str) -> Mailbox:
        """The mailbox APPEND or COPY writes into: TRYCREATE when missing (RFC 9051 §6.3.12)."""
        box = self.boxes.get(name)
        if box is None:
            raise MailboxError(TRYCREATE, f"no mailbox {name}")
        return box

    # --- mailboxes ------------------------------------------------------------------------
    def create(self, name: str, special_use: str | None = None) -> None:
        if name == INBOX:
            raise MailboxError(ALREADYEXISTS, "INBOX always exists")
        check_name(name)
        if special_use is not None and special_use not in SPECIAL_USE.values():
            raise MailboxError(USEATTR, f"unsupported special use {special_use}")
        if name in self.boxes:
            raise MailboxError(ALREADYEXISTS, f"mailbox {name} already exists")
        for parent in parent_names(name):
            if parent not in self.boxes and parent != INBOX:
                self._add(parent, None)
        self._add(name, special_use)

    def delete(self, name: str) -> None:
        if name == INBOX:
            raise MailboxError(CANNOT, "INBOX cannot be deleted")
        del self.boxes[self.mailbox(name).name]

    def rename(self, old: str, new: str) -> None:
        check_name(new)
        box = self.mailbox(old)
        if new in self.boxes or new == INBOX:
            raise MailboxError(ALREADYEXISTS, f"mailbox {new} already exists")
        if new.startswith(old + "/"):
            raise MailboxError(CANNOT, "cannot move a mailbox into itself")
        if old == INBOX:
            # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves INBOX empty.
            self.create(new)
            if box.messages:
                self.copy(INBOX, [(1, 0xFFFFFFFF)], new, move=True, limit=0)
            return
        for parent in parent_names(new):
            if parent not in self.boxes and parent != INBOX:
                self._add(parent, None)
        moves = [n for n in sorted(self.boxes) if n == old or n.startswith(old + "/")]
        for src in moves:
            dst = new + src[len(old) :]
            moved = self.boxes.pop(src)
            moved.name = dst
            self.boxes[dst] = moved
            if src in self.subscribed:
                self.subscribed.discard(src)
                self.subscribed.add(dst)

    def subscribe(self, name: str, on: bool) -> None:
        if name != INBOX:
            try:
                check_name(name)
            except MailboxError as exc:
                raise MailboxError(CANNOT, exc.text) from None
        if on:
            self.subscribed.add(name)
        else:
            self.subscribed.discard(name)

    # --- changes --------------------------------------------------------------------------
    def expunge(self, name: str, ranges: Ranges | None) -> list[int]:
        box = self.mailbox(name)
        doomed = [
            m.uid
            for m in box.in_ranges(ranges if ranges is not None else [(1, 0xFFFFFFFF)])
            if m.mask & DELETED
        ]
        box.remove(doomed)
        return doomed

    def copy(
        self, src_name: str, ranges: Ranges, dst_name: str, *, move: bool, limit: int
    ) -> Copied:
        """COPY/MOVE (COPYUID's UIDVALIDITY and UIDs, RFC 4315). A COPY is
        refused whole over quota; a MOVE adds nothing to the usage, so it never is."""
        src = self.mailbox(src_name)
        dst = self.target(dst_name)
        picked = list(src.in_ranges(ranges))
        if not move:
            self.check_quota(sum(m.size for m in picked), limit)
        modseq = dst.next_modseq()
        # Copies first, then the removal: a MOVE into the same mailbox appends, then expunges.
        dst_uids = [dst.place(replace(m, keywords=list(m.keywords)), modseq) for m in picked]
        src_uids = [m.uid for m in picked]
        if move:
            src.remove(src_uids)
        return Copied(dst.uidvalidity, src_uids, dst_uids)


def vanished_since(box: Mailbox, since_modseq: int, ranges: Ranges) -> Ranges:
    """UIDs of ``ranges`` expunged after ``since_modseq``, merged into ranges, sorted."""
    gone = sorted(
        uid
        for modseq, uid in box.tombstones
        if modseq > since_modseq
        and uid not in box.messages
        and any(lo <= uid <= hi for lo, hi in ranges)
    )
    out: Ranges = []
    for uid in gone:
        if out and uid <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], uid))
        else:
            out.append((uid, uid))
    return out

"""The session's view of the selected mailbox: sequence numbers, UIDs, pending updates.

Sequence numbers are positions in ``uids``, a sorted ``array('I')`` (4 bytes per message, no
Python object per message): seq -> UID is an index, UID -> seq a bisect. The view only
changes at the points RFC 3501 §7 allows: :meth:`apply` turns a store ``ChangeSet`` into the
untagged EXPUNGE / EXISTS / RECENT / FETCH FLAGS responses, leaving expunges for later when
the current command forbids them (FETCH, STORE, SEARCH without UID: RFC 3501 §7.4.1). Once
the client has enabled QRESYNC, expunges are told as ``VANISHED uid-set`` instead of one
EXPUNGE per message (RFC 7162 §3.2.10), under the same rules.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator
from typing import Final

from pillarbox.imap import response as r
from pillarbox.imap.backend import ChangeSet, SelectInfo
from pillarbox.imap.grammar import SequenceSet
from pillarbox.imap.outcome import Bad

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# Tokens of a FLAGS text that are never keywords (\Recent is the session's, RFC 3501 §2.3.2).
_NOT_KEYWORDS: Final = frozenset((*SYSTEM_FLAGS, "\\Recent"))


class BadSequence(Bad):
    """A message sequence number beyond EXISTS: ``tag BAD`` (RFC 9051 §6.4.4 allows NO or
    BAD; a number the client cannot have seen is a protocol error)."""


class SelectedMailbox:
    __slots__ = (
        "condstore",
        "keywords",
        "known_modseq",
        "name",
        "qresync",
        "readonly",
        "recent_from",
        "recent_to",
        "rev2",
        "uidnext",
        "uids",
        "uidvalidity",
    )

    def __init__(self, name: str, readonly: bool, info: SelectInfo, *, rev2: bool = False):
        self.name = name
        self.readonly = readonly
        self.uidvalidity = info.uidvalidity
        self.uidnext = info.uidnext
        self.uids: array[int] = info.uids
        self.known_modseq = info.highestmodseq
        # \Recent for this session: the UIDs in [recent_from, recent_to). SELECT claimed
        # the ones below UIDNEXT nobody had claimed; a message arriving later is recent only
        # for the session that claims it first (RFC 3501 §2.3.2), not for every session
        # that had the mailbox selected when it was empty.
        self.recent_from = info.recent_from_uid if not readonly else info.uidnext
        self.recent_to = info.uidnext
        self.rev2 = rev2
        self.condstore = False
        self.qresync = False
        # The keywords this session has announced in FLAGS / PERMANENTFLAGS: a FETCH may
        # only use a keyword the client has been told about (RFC 9051 §7.3.5).
        self.keywords: dict[str, None] = dict.fromkeys(info.keywords)

    # --- numbers
    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def is_recent(self, uid: int) -> bool:
        return self.recent_from <= uid < self.recent_to and not self.rev2

    @property
    def recent_count(self) -> int:
        upto = bisect.bisect_left(self.uids, self.recent_to)
        return max(0, upto - bisect.bisect_left(self.uids, self.recent_from))

    def _claimed(self, new: list[int], unclaimed_from: int) -> None:
        """Count as recent the ``new`` UIDs this session's change query claimed (those at or
        above ``unclaimed_from``, the mailbox's first unclaimed UID before the claim)."""
        mine = [u for u in new if u >= unclaimed_from]
        if self.readonly or not mine:
            return
        if self.recent_from >= self.recent_to:  # nothing recent yet: the claim is the range
            self.recent_from, self.recent_to = mine[0], mine[-1] + 1
        elif mine[0] <= self.recent_to:  # right after the range: it grows
            self.recent_to = mine[-1] + 1
        # else another session claimed the UIDs in between: one range cannot hold both, and
        # reporting fewer \Recent is the safe side (never one message recent twice).

    def uid_ranges(self, numbers: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """The UID ranges a sequence set or UID set names (``$`` resolved by the caller)."""
        if uid:
            # RFC 3501 §6.4.8: "*" is the largest UID in use; UIDs not there are ignored.
            largest = self.max_uid
            if not largest:
                return []
            return [(lo, hi) for lo, hi in numbers.resolve(largest) if hi >= 1 and lo <= largest]
        count = len(self.uids)
        ranges = numbers.resolve(count)
        if not count and ranges:
            raise BadSequence("no messages in the mailbox")
        if ranges and ranges[-1][1] > count:
            raise BadSequence("message sequence number out of range")
        return [(self.uids[lo - 1], self.uids[hi - 1]) for lo, hi in ranges]

    def seqs_in(self, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """(seq, uid) for every message of the view inside UID ``ranges``."""
        for lo, hi in ranges:
            start = bisect.bisect_left(self.uids, lo)
            end = bisect.bisect_right(self.uids, hi)
            for i in range(start, end):
                yield i + 1, self.uids[i]

    # --- flags announcements
    def flags_lines(self) -> list[bytes]:
        """Untagged FLAGS and OK [PERMANENTFLAGS] for the keywords known to this session."""
        flags = SYSTEM_FLAGS + tuple(self.keywords)
        permanent = () if self.readonly else (*flags, "\\*")
        return [
            r.untagged(r.Atom("FLAGS"), r.Flags(flags)),
            r.untagged_status(
                "OK", "flags permitted", r.Code("PERMANENTFLAGS", r.Flags(permanent))
            ),
        ]

    def announce(self, flag_texts: Iterable[str]) -> list[bytes]:
        """FLAGS lines to send before FETCH responses that use ``flag_texts``, or [].

        Called once per batch of responses with every FLAGS text in it: one split of the
        joined texts, no Python work per message unless a keyword is new to the session.
        """
        tokens = set(" ".join(flag_texts).split())
        new = tokens - _NOT_KEYWORDS
        if not new or new.issubset(self.keywords):
            return []
        self.keywords.update(dict.fromkeys(sorted(new - self.keywords.keys())))
        return self.flags_lines()

    # --- updates
    def remove_uids(self, gone: list[int]) -> list[int]:
        """Drop ``gone`` (sorted UIDs) from the view; the EXPUNGE numbers to send, in order.

        Ascending, each number adjusted for the ones already sent (RFC 3501 §7.4.1).
        """
        numbers: list[int] = []
        positions = []
        for uid in gone:
            seq = self.seq_of(uid)
            if seq is not None:
                positions.append(seq - 1)
                numbers.append(seq - len(numbers))
        if positions:
            drop = set(positions)
            self.uids = array("I", (u for i, u in enumerate(self.uids) if i not in drop))
        return numbers

    def expunge_lines(self, gone: list[int]) -> list[bytes]:
        """Drop ``gone`` (sorted UIDs) from the view; the responses that tell the client.

        EXPUNGE with each message number (RFC 3501 §7.4.1), or with QRESYNC one VANISHED
        with the UIDs (RFC 7162 §3.2.10), only of messages this session had announced.
        """
        if not self.qresync:
            return [b"* %d EXPUNGE\r\n" % n for n in self.remove_uids(gone)]
        known = [uid for uid in gone if self.seq_of(uid) is not None]
        self.remove_uids(known)
        return r.vanished_response(SequenceSet.from_numbers(known).ranges, earlier=False)

    def not_in_view(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The parts of UID ``ranges`` (sorted) that hold no message of the view.

        A VANISHED (EARLIER) must not name a message the session still shows: that one is
        told by a plain VANISHED when the view drops it, which also lowers EXISTS.
        """
        out: list[tuple[int, int]] = []
        for lo, hi in ranges:
            cursor = lo
            start = bisect.bisect_left(self.uids, lo)
            end = bisect.bisect_right(self.uids, hi)
            for i in range(start, end):
                if self.uids[i] > cursor:
                    out.append((cursor, self.uids[i] - 1))
                cursor = self.uids[i] + 1
            if cursor <= hi:
                out.append((cursor, hi))
        return out

    def apply(self, changes: ChangeSet, *, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for ``changes`` (see the module docstring)."""
        out: list[bytes] = []
        if allow_expunge and changes.present is not None:
            present = changes.present
            out += self.expunge_lines(_missing(self.uids, present))
        out += self.announce(update.flags for update in changes.flag_updates)
        for uid, flags, modseq in changes.flag_updates:
            position = self.seq_of(uid)
            if position is not None:
                out.append(self.flags_line(position, uid, flags, modseq, with_uid=False))
        if len(changes.new_uids):
            new = [u for u in changes.new_uids if u > self.max_uid]
            if new:
                # Never mutate in place: the store may share one array between sessions.
                self.uids = self.uids + array("I", new)
                out.append(b"* %d EXISTS\r\n" % len(self.uids))
                if not self.rev2:
                    # We claimed \Recent for those nobody had (RFC 3501 §2.3.2).
                    self._claimed(new, changes.recent_from_uid)
                    out.append(b"* %d RECENT\r\n" % self.recent_count)
        self.uidnext = max(self.uidnext, changes.uidnext)
        self.known_modseq = max(self.known_modseq, changes.highestmodseq)
        return out

    def flags_line(self, seq: int, uid: int, flags: str, modseq: int, *, with_uid: bool) -> bytes:
        text = flags.encode("ascii", "replace")
        if self.is_recent(uid):
            text = b"\\Recent " + text if text else b"\\Recent"
        out = b"* %d FETCH (" % seq
        if with_uid:
            out += b"UID %d " % uid
        out += b"FLAGS (" + text + b")"
        if self.condstore:
            out += b" MODSEQ (%d)" % modseq
        return out + b")\r\n"


def _missing(view: array[int], present: array[int]) -> list[int]:
    """UIDs of ``view`` (up to max(present)) that are not in ``present``; both sorted."""
    out = []
    j = 0
    limit = len(present)
    for uid in view:
        while j < limit and present[j] < uid:
            j += 1
        if j < limit and present[j] == uid:
            continue
        out.append(uid)
    return out

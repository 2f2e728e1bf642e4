"""SEARCH evaluation (RFC 3501 §6.4.4) over index rows, batch by batch.

Flags, dates, sizes, UIDs and modseqs come from the index row; header keys from the index's
case-folded header text (``name:value`` lines, RFC 2047 words decoded), so header SEARCH never
opens a file, and a header substring the program requires is pushed down to SQLite as a
prefilter. BODY and TEXT go to the store's full-text index when it covers the mailbox and the
needle has at least three characters (its answer is exact: see ``store/fulltext.py``); while
the index is still being built, the search first has the store index the rest of the
mailbox, and whatever it could not take (a file renamed behind its back) is checked here by
reading the file. Shorter needles, or no index, read every message, as the scan always did.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pillarbox import mime
from pillarbox.imap.backend import SYSTEM_FLAGS, SearchFilter, SearchRow, UserMail
from pillarbox.imap.grammar import SequenceSet
from pillarbox.imap.searchkeys import (
    AllKey,
    AndKey,
    BodyKey,
    DateField,
    DateKey,
    DateOp,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SeqKey,
    SizeKey,
    TextKey,
    UidKey,
    WithinKey,
)
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.mime.text import search_texts

BATCH: Final = 10000
_MASKS: Final = {name.upper(): bit for name, bit in SYSTEM_FLAGS.items()}


@dataclass(slots=True)
class Context:
    view: SelectedMailbox
    saved: SequenceSet | None
    now: float
    content: bytes | None = None
    seq: int = 0
    texts: tuple[str, str] | None = None


def _needs_header(key: SearchKey) -> bool:
    return _any(key, lambda k: isinstance(k, HeaderKey))


def _needs_body(key: SearchKey) -> bool:
    return _any(key, lambda k: isinstance(k, BodyKey | TextKey))


def uses_modseq(key: SearchKey) -> bool:
    return _any(key, lambda k: isinstance(k, ModSeqKey))


def _any(key: SearchKey, pred: Callable[[SearchKey], bool]) -> bool:
    if pred(key):
        return True
    if isinstance(key, NotKey):
        return _any(key.key, pred)
    if isinstance(key, OrKey):
        return _any(key.left, pred) or _any(key.right, pred)
    if isinstance(key, AndKey):
        return any(_any(k, pred) for k in key.keys)
    return False


MIN_FULL_TEXT: Final = 3  # the store's trigram index cannot look up shorter needles


def to_filter(
    key: SearchKey,
    view: SelectedMailbox,
    saved: SequenceSet | None,
    now: float,
    pending: int | None = None,
) -> tuple[SearchFilter, bool]:
    """The store filter for ``key`` (see ``backend``) and whether it is exact.

    An inexact filter lets a superset through (header substrings, \\Recent, BODY), and the
    rows are then checked here with :func:`matches`. ``pending`` is what the store's
    ``full_text_pending`` said (None: no full-text index).
    """
    if isinstance(key, AllKey):
        return ("all",), True
    if isinstance(key, FlagKey):
        bit = _MASKS.get(key.flag.upper())
        if bit is not None:
            return ("mask", bit, key.present), True
        if key.flag.upper() == "\\RECENT":
            return ("all",), False
        return ("keyword", key.flag, key.present), True
    if isinstance(key, HeaderKey):
        return ("header", key.field.casefold(), key.value.casefold()), False
    if isinstance(key, BodyKey | TextKey):
        needle = key.value.casefold()
        if pending is None or len(needle) < MIN_FULL_TEXT:
            return ("all",), False
        scope = "text" if isinstance(key, TextKey) else "body"
        return ("text", scope, needle), pending == 0
    if isinstance(key, DateKey):
        kind = "date" if key.field is DateField.INTERNAL else "sent"
        return (kind, key.op.value, key.date.toordinal()), True
    if isinstance(key, SizeKey):
        return ("larger" if key.larger else "smaller", key.size), True
    if isinstance(key, ModSeqKey):
        return ("modseq", key.modseq), True
    if isinstance(key, WithinKey):
        cutoff = int(now) - key.seconds
        return ("idate", ">" if key.younger else "<=", cutoff), False
    if isinstance(key, UidKey) or (isinstance(key, SeqKey) and key.set.saved):
        numbers = saved or SequenceSet(()) if key.set.saved else key.set
        return ("uids", numbers.resolve(view.max_uid, clip=True) if view.max_uid else []), True
    if isinstance(key, SeqKey):
        count = view.exists
        ranges = key.set.resolve(count, clip=True) if count else []
        return ("uids", [(view.uids[lo - 1], view.uids[hi - 1]) for lo, hi in ranges]), True
    if isinstance(key, NotKey):
        inner, exact = to_filter(key.key, view, saved, now, pending)
        return (("not", inner), True) if exact else (("all",), False)
    if isinstance(key, OrKey):
        left, exact_left = to_filter(key.left, view, saved, now, pending)
        right, exact_right = to_filter(key.right, view, saved, now, pending)
        return ("or", left, right), exact_left and exact_right
    if isinstance(key, AndKey):
        parts = [to_filter(k, view, saved, now, pending) for k in key.keys]
        return ("and", [p for p, _ in parts]), all(e for _, e in parts)
    raise AssertionError(key)


def _header_match(text: str, field: str, value: str) -> bool:
    prefix = field.casefold() + ":"
    needle = value.casefold()
    for line in text.split("\n"):
        if line.startswith(prefix) and needle in line[len(prefix) :]:
            return True
    return False


def _day(ts: int) -> int:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().toordinal()


def _date_match(op: DateOp, day: int | None, target: int) -> bool:
    if day is None:
        return False
    if op is DateOp.BEFORE:
        return day < target
    if op is DateOp.ON:
        return day == target
    return day >= target


def matches(key: SearchKey, row: SearchRow, ctx: Context) -> bool:
    """Does the message of ``row`` (sequence number ``ctx.seq``) match ``key``?"""
    if isinstance(key, AllKey):
        return True
    if isinstance(key, FlagKey):
        return _flag(key.flag, row, ctx) == key.present
    if isinstance(key, AndKey):
        return all(matches(k, row, ctx) for k in key.keys)
    if isinstance(key, HeaderKey):
        if not key.value:
            return any(
                line.startswith(key.field.casefold() + ":") for line in row.header.split("\n")
            )
        return _header_match(row.header, key.field, key.value)
    if isinstance(key, NotKey):
        return not matches(key.key, row, ctx)
    if isinstance(key, OrKey):
        return matches(key.left, row, ctx) or matches(key.right, row, ctx)
    if isinstance(key, UidKey):
        return row.uid in _set(key.set, ctx, uid=True)
    if isinstance(key, SeqKey):
        if key.set.saved:
            return row.uid in _set(key.set, ctx, uid=True)
        return ctx.seq in _set(key.set, ctx, uid=False)
    if isinstance(key, SizeKey):
        return row.size > key.size if key.larger else row.size < key.size
    if isinstance(key, DateKey):
        day = _day(row.internal_date) if key.field is DateField.INTERNAL else row.sent_date
        return _date_match(key.op, day, key.date.toordinal())
    if isinstance(key, ModSeqKey):
        return bool(row.modseq >= key.modseq)
    if isinstance(key, WithinKey):
        age = ctx.now - row.internal_date
        return age <= key.seconds if key.younger else age > key.seconds
    if isinstance(key, BodyKey | TextKey):
        body, header = _texts(ctx)
        needle = key.value.casefold()
        return needle in body or (isinstance(key, TextKey) and needle in header)
    raise AssertionError(key)


def _texts(ctx: Context) -> tuple[str, str]:
    """(body text, header text) of ``ctx.content``, decoded and case-folded, cached."""
    if ctx.texts is None:
        content = ctx.content or b""
        parsed = mime.parse(content)
        ctx.texts = search_texts(content, parsed.structure, parsed.header_end)
    return ctx.texts


def _flag(flag: str, row: SearchRow, ctx: Context) -> bool:
    upper = flag.upper()
    bit = _MASKS.get(upper)
    if bit is not None:
        return bool(row.mask & bit)
    if upper == "\\RECENT":
        return ctx.view.is_recent(row.uid)
    folded = flag.casefold()
    return any(k.casefold() == folded for k in row.keywords.split())


_set_cache: dict[tuple[SequenceSet, int, bool], Any] = {}


def _set(numbers: SequenceSet, ctx: Context, *, uid: bool) -> Any:
    if numbers.saved:
        numbers = ctx.saved or SequenceSet(())
        uid = True
    largest = ctx.view.max_uid if uid else ctx.view.exists
    key = (numbers, largest, uid)
    matcher = _set_cache.get(key)
    if matcher is None:
        if len(_set_cache) > 64:
            _set_cache.clear()
        matcher = _set_cache[key] = numbers.matcher(largest)
    return matcher


async def _exact(
    mail: UserMail, view: SelectedMailbox, where: SearchFilter
) -> tuple[list[int], list[int], int]:
    """The database answered exactly: map its UIDs to this view's sequence numbers."""
    found, top_modseq = await mail.search_uids(view.name, where)
    uids: list[int] = []
    seqs: list[int] = []
    view_uids = view.uids
    count = len(view_uids)
    i = 0
    for uid in found:
        while i < count and view_uids[i] < uid:
            i += 1
        if i < count and view_uids[i] == uid:
            uids.append(uid)
            seqs.append(i + 1)
    return uids, seqs, top_modseq


async def run_search(
    mail: UserMail, view: SelectedMailbox, key: SearchKey, saved: SequenceSet | None
) -> tuple[list[int], list[int], int]:
    """(matching UIDs, their sequence numbers, highest modseq among them), ascending."""
    ctx = Context(view, saved, time.time())
    if not view.exists:
        return [], [], 0
    pending = None
    if _needs_body(key):
        # Asked after the view's UIDs were known: every one of them that is indexed now
        # stays indexed until expunged, so "0 pending" makes the index's answer exact.
        pending = await mail.full_text_pending(view.name, view.max_uid)
        if pending:
            # Indexing a message costs about what reading it for this search would (and
            # only once): bring the index up to date, then scan only what it could not take.
            await mail.full_text_catch_up(view.name)
            pending = await mail.full_text_pending(view.name, view.max_uid)
    where, exact = to_filter(key, view, saved, ctx.now, pending)
    header = not exact and _needs_header(key)
    body = not exact and _needs_body(key)
    uids: list[int] = []
    seqs: list[int] = []
    top_modseq = 0
    if exact:
        return await _exact(mail, view, where)
    lo, hi = view.uids[0], view.max_uid
    _set_cache.clear()
    while lo <= hi:
        rows = await mail.search_rows(view.name, lo, hi, header, where, BATCH)
        if not rows:
            break
        lo = rows[-1].uid + 1
        for row in rows:
            seq = view.seq_of(row.uid)
            if seq is None:
                continue
            if not exact:
                ctx.seq = seq
                if body:
                    ctx.content = await mail.read_message(view.name, row.uid)
                    ctx.texts = None
                if not matches(key, row, ctx):
                    continue
            uids.append(row.uid)
            seqs.append(seq)
            top_modseq = max(top_modseq, row.modseq)
        if len(rows) < BATCH:
            break
    return uids, seqs, top_modseq

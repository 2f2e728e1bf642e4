"""SEARCH evaluation (RFC 3501 §6.4.4) over index rows, batch by batch.

Flags, dates, sizes, UIDs and modseqs come from the index row; header keys from the index's
case-folded header text (``name:value`` lines, RFC 2047 words decoded), so header SEARCH never
opens a file, and a header substring the program requires is pushed down to SQLite as a
prefilter. Only BODY and TEXT read message files.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pillarbox.imap.backend import UserMail
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

BATCH: Final = 10000
_MASKS: Final = {"\\SEEN": 1, "\\ANSWERED": 2, "\\FLAGGED": 4, "\\DELETED": 8, "\\DRAFT": 16}
# search_rows columns
UID, MASK, KEYWORDS, DATE, SIZE, MODSEQ, SENT, HEADER = range(8)


@dataclass(slots=True)
class Context:
    view: SelectedMailbox
    saved: SequenceSet | None
    now: float
    content: bytes | None = None
    seq: int = 0


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


def prefilter(key: SearchKey) -> str | None:
    """A case-folded substring every match's header text must contain, if there is one."""
    keys = key.keys if isinstance(key, AndKey) else (key,)
    for k in keys:
        if isinstance(k, HeaderKey) and k.value:
            return k.value.casefold()
    return None


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


def matches(key: SearchKey, row: tuple[Any, ...], ctx: Context) -> bool:
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
                line.startswith(key.field.casefold() + ":") for line in row[HEADER].split("\n")
            )
        return _header_match(row[HEADER], key.field, key.value)
    if isinstance(key, NotKey):
        return not matches(key.key, row, ctx)
    if isinstance(key, OrKey):
        return matches(key.left, row, ctx) or matches(key.right, row, ctx)
    if isinstance(key, UidKey):
        return row[UID] in _set(key.set, ctx, uid=True)
    if isinstance(key, SeqKey):
        if key.set.saved:
            return row[UID] in _set(key.set, ctx, uid=True)
        return ctx.seq in _set(key.set, ctx, uid=False)
    if isinstance(key, SizeKey):
        return row[SIZE] > key.size if key.larger else row[SIZE] < key.size
    if isinstance(key, DateKey):
        day = _day(row[DATE]) if key.field is DateField.INTERNAL else row[SENT]
        return _date_match(key.op, day, key.date.toordinal())
    if isinstance(key, ModSeqKey):
        return bool(row[MODSEQ] >= key.modseq)
    if isinstance(key, WithinKey):
        age = ctx.now - row[DATE]
        return age <= key.seconds if key.younger else age > key.seconds
    if isinstance(key, BodyKey | TextKey):
        content = ctx.content or b""
        needle = key.value.casefold()
        if isinstance(key, BodyKey):
            end = content.find(b"\r\n\r\n")
            content = content[end + 4 :] if end >= 0 else b""
        return needle in content.decode("utf-8", "replace").casefold()
    raise AssertionError(key)


def _flag(flag: str, row: tuple[Any, ...], ctx: Context) -> bool:
    upper = flag.upper()
    bit = _MASKS.get(upper)
    if bit is not None:
        return bool(row[MASK] & bit)
    if upper == "\\RECENT":
        return ctx.view.is_recent(row[UID])
    folded = flag.casefold()
    return any(k.casefold() == folded for k in row[KEYWORDS].split())


_set_cache: dict[tuple[int, int, bool], Any] = {}


def _set(numbers: SequenceSet, ctx: Context, *, uid: bool) -> Any:
    if numbers.saved:
        numbers = ctx.saved or SequenceSet(())
        uid = True
    largest = ctx.view.max_uid if uid else ctx.view.exists
    key = (id(numbers), largest, uid)
    matcher = _set_cache.get(key)
    if matcher is None:
        if len(_set_cache) > 64:
            _set_cache.clear()
        matcher = _set_cache[key] = numbers.matcher(largest)
    return matcher


async def run_search(
    mail: UserMail, view: SelectedMailbox, key: SearchKey, saved: SequenceSet | None
) -> tuple[list[int], list[int], int]:
    """(matching UIDs, their sequence numbers, highest modseq among them), ascending."""
    header = _needs_header(key)
    body = _needs_body(key)
    pre = prefilter(key)
    ctx = Context(view, saved, time.time())
    uids: list[int] = []
    seqs: list[int] = []
    top_modseq = 0
    if not view.exists:
        return uids, seqs, top_modseq
    lo, hi = view.uids[0], view.max_uid
    _set_cache.clear()
    while lo <= hi:
        rows = await mail.search_rows(view.name, lo, hi, header, pre, BATCH)
        if not rows:
            break
        lo = rows[-1][UID] + 1
        for row in rows:
            seq = view.seq_of(row[UID])
            if seq is None:
                continue
            ctx.seq = seq
            if body:
                ctx.content = await mail.read_message(view.name, row[UID])
            if matches(key, row, ctx):
                uids.append(row[UID])
                seqs.append(seq)
                top_modseq = max(top_modseq, row[MODSEQ])
    return uids, seqs, top_modseq

"""The rows the PostgreSQL index writes and the small pure rules it applies to them:
a new message parsed for its row, FLAGS text, STORE's flag arithmetic, UID ranges."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pillarbox import mime
from pillarbox.mailstore.flags import FLAG_TEXT, split_flags
from pillarbox.mime.text import search_texts

Ranges = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message about to be indexed: what ``mime`` parsed of its CRLF bytes."""

    mask: int
    keywords: list[str]
    internal_date: int
    size: int
    sent_date: int | None
    path: str  # under the mail directory
    envelope: str
    structure: str
    header: bytes
    search_text: str
    body_text: str
    header_text: str


def parse_new(data: bytes, flags: Sequence[str], when: float | None, path: str) -> NewMessage:
    """The index row of a message file whose bytes are ``data``, parsed as the SQLite
    index and the in-memory store parse (sizes are CRLF sizes, RFC822.SIZE)."""
    data = mime.to_crlf(data)
    parsed = mime.parse(data)
    mask, keywords = split_flags(list(flags))
    body, header = search_texts(data, parsed.structure, parsed.header_end)
    return NewMessage(
        mask=mask,
        keywords=keywords,
        internal_date=int(time.time() if when is None else when),
        size=len(data),
        sent_date=parsed.sent_date,
        path=path,
        envelope=json.dumps(parsed.envelope),
        structure=json.dumps(parsed.structure),
        header=data[: parsed.header_end],
        search_text=mime.header_search_text(parsed.fields),
        body_text=body,
        header_text=header,
    )


def flags_text(mask: int, keywords: Sequence[str]) -> str:
    """FETCH FLAGS text: system flags first, then keywords, as the other stores give it."""
    base = FLAG_TEXT[mask & 31]
    if not keywords:
        return base
    words = " ".join(keywords)
    return f"{base} {words}" if base else words


def changed_flags(
    mode: str, mask: int, keywords: list[str], have_mask: int, have: list[str]
) -> tuple[int, list[str]]:
    """A message's flags after STORE ``mode`` (add / remove / replace) of ``mask`` and
    ``keywords`` (RFC 3501 §6.4.6); keywords compare case-insensitively."""
    if mode == "add":
        known = {k.lower() for k in have}
        return have_mask | mask, have + [k for k in keywords if k.lower() not in known]
    if mode == "remove":
        drop = {k.lower() for k in keywords}
        return have_mask & ~mask, [k for k in have if k.lower() not in drop]
    return mask, list(keywords)


def merge_ranges(uids: Sequence[int]) -> Ranges:
    """Sorted UIDs as sorted, merged ranges."""
    out: Ranges = []
    for uid in uids:
        if out and uid <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], uid))
        else:
            out.append((uid, uid))
    return out


def merge_spans(spans: Sequence[tuple[int, int]]) -> Ranges:
    """Ranges sorted by their start, merged where they touch or overlap."""
    out: Ranges = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def intersect(left: Ranges, right: Ranges) -> Ranges:
    """The UIDs in both sorted, disjoint range lists, as ranges."""
    out: Ranges = []
    i = j = 0
    while i < len(left) and j < len(right):
        lo, hi = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return merge_spans(out)

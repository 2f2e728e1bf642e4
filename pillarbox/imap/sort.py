"""SORT and THREAD semantics (RFC 5256) and DISPLAY sort keys (RFC 5957).

The messages come from the SEARCH evaluator (``run_search``); their header fields are read
from the index's stored header bytes (``fetch(data=True)``), one small tuple per message, so
the work is a Python ``sorted`` over key tuples. Only what the criteria compare is computed
(SORT (ARRIVAL) or (SIZE) reads no header at all), the fields are cut out of the stored
header block without the ``email`` parser where it is plain ASCII, and the pure functions
of a field's text (base subject, first address) are memoised, since senders and thread
subjects repeat.  Parsing of the command lives in
``commands.py``; this module only computes orders and thread trees.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from pillarbox.imap.backend import FetchRow, Parts, SortingMail, UserMail
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.mime.sortkeys import base_subject, first_address, header_fields, sent_date

__all__ = ["ALL_INFO", "Info", "base_subject", "header_fields", "load_infos", "message_info"]

FETCH_BATCH: Final = 5000
_MSGID_RE: Final = re.compile(r"<([^<>]+)>")


class Info(NamedTuple):
    """What SORT/THREAD need of one message: a tuple, the cheapest immutable record to make
    50,000 of (a frozen dataclass sets each field through ``object.__setattr__``), and one
    the cyclic garbage collector stops tracking once it holds only strings and numbers."""

    seq: int
    uid: int
    arrival: int
    size: int
    date: int  # sent date, epoch seconds; INTERNALDATE when Date: is missing or bad (§2.2)
    subject: str  # base subject (§2.1)
    is_reply: bool  # the subject had Re:/Fwd: or a (fwd) trailer (§2.1 step 2, 4, 6)
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str
    references: tuple[str, ...]


def _ids(raw: str | None) -> list[str]:
    return _MSGID_RE.findall(raw or "")


# The header fields each Info field is computed from; ARRIVAL and SIZE need none.
_FIELDS_OF: Final = {
    "date": ("date",),
    "subject": ("subject",),
    "from_": ("from",),
    "display_from": ("from",),
    "to": ("to",),
    "display_to": ("to",),
    "cc": ("cc",),
    "message_id": ("message-id", "references", "in-reply-to"),
}
ALL_INFO: Final = frozenset(_FIELDS_OF)  # THREAD: everything


def message_info(seq: int, row: FetchRow, wanted: frozenset[str] = ALL_INFO) -> Info:
    """The sort/thread fields of one ``fetch(data=True)`` row: those in ``wanted`` (names
    of Info fields), the others left empty."""
    names = frozenset(n for field_name in wanted for n in _FIELDS_OF.get(field_name, ()))
    fields = header_fields(row.header or b"", names)
    get = fields.get
    subject, reply = base_subject(get("subject") or "") if "subject" in names else ("", False)
    from_local, from_display = first_address(get("from")) if "from" in names else ("", "")
    to_local, to_display = first_address(get("to")) if "to" in names else ("", "")
    cc_local = first_address(get("cc"))[0] if "cc" in names else ""
    own = _ids(get("message-id"))
    refs = _ids(get("references"))
    if not refs:
        refs = _ids(get("in-reply-to"))[:1]  # RFC 5256 §3 step 1A
    date = 0
    if "date" in names:  # RFC 5256 §2.2: INTERNALDATE when Date: is missing or bad
        sent = sent_date(get("date"))
        date = row.internal_date if sent is None else sent
    return Info(
        seq=seq,
        uid=row.uid,
        arrival=row.internal_date,
        size=row.size,
        date=date,
        subject=subject,
        is_reply=reply,
        from_=from_local,
        to=to_local,
        cc=cc_local,
        display_from=from_display,
        display_to=to_display,
        message_id=own[0] if own else "",
        references=tuple(refs),
    )


def sort_fields(criteria: Sequence[tuple[str, bool]]) -> frozenset[str]:
    """The Info fields a SORT with ``criteria`` compares."""
    return frozenset(_SORT_FIELD[key] for key, _ in criteria)


async def load_infos(
    mail: UserMail,
    view: SelectedMailbox,
    uids: Sequence[int],
    seqs: Sequence[int],
    fields: frozenset[str] = ALL_INFO,
) -> list[Info]:
    """Read the ``fields`` of the matching messages from the store, batch by batch."""
    wanted = dict(zip(uids, seqs, strict=True))
    header = any(f in _FIELDS_OF for f in fields)  # else the rows' columns are enough
    out: list[Info] = []
    for start in range(0, len(uids), FETCH_BATCH):
        chunk = uids[start : start + FETCH_BATCH]
        rows = await mail.fetch(view.name, _runs(chunk), header, len(chunk), parts=Parts.HEADER)
        # Parsing thousands of headers is pure Python: in a worker thread the event loop
        # keeps serving the other sessions meanwhile.
        out += await asyncio.to_thread(_infos_of, rows, wanted, fields)
    out.sort(key=lambda i: i.seq)
    return out


async def sort_order(
    mail: UserMail,
    view: SelectedMailbox,
    uids: Sequence[int],
    seqs: Sequence[int],
    criteria: Sequence[tuple[str, bool]],
) -> tuple[Sequence[int], Sequence[int]]:
    """(UIDs, sequence numbers) of the matching messages in SORT order (RFC 5256 §3).

    A store that keeps the sort keys in its index orders them itself (one query); for any
    other the keys are computed here from the header blocks (the same functions)."""
    if isinstance(mail, SortingMail):
        ordered = await mail.sort(view.name, _runs(uids), criteria)
        seq_of = dict(zip(uids, seqs, strict=True))
        return ordered, [seq_of[uid] for uid in ordered]
    infos = await asyncio.to_thread(
        sort_infos, await load_infos(mail, view, uids, seqs, sort_fields(criteria)), criteria
    )
    return [i.uid for i in infos], [i.seq for i in infos]


def _infos_of(rows: list[FetchRow], wanted: dict[int, int], fields: frozenset[str]) -> list[Info]:
    infos = []
    for row in rows:
        seq = wanted.get(row.uid)
        if seq is not None:
            infos.append(message_info(seq, row, fields))
    return infos


def _runs(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending UIDs as (lo, hi) runs of consecutive numbers, so fetch reads only those."""
    runs: list[tuple[int, int]] = []
    for uid in uids:
        if runs and runs[-1][1] + 1 == uid:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
    return runs


# --- SORT (RFC 5256 §3) -------------------------------------------------------------------------
# The Info field each sort key (RFC 5256 §3, RFC 5957 §3) compares; the parser admits no other.
_SORT_FIELD: Final = {
    "ARRIVAL": "arrival",
    "DATE": "date",
    "SIZE": "size",
    "SUBJECT": "subject",
    "FROM": "from_",
    "TO": "to",
    "CC": "cc",
    "DISPLAYFROM": "display_from",
    "DISPLAYTO": "display_to",
}


def _key_value(info: Info, key: str) -> Any:
    return getattr(info, _SORT_FIELD[key])


def sort_infos(infos: list[Info], criteria: Sequence[tuple[str, bool]]) -> list[Info]:
    """Order by ``criteria`` ((key, reverse) pairs); ties by sequence number (§3)."""
    ordered = sorted(infos, key=lambda i: i.seq)
    for key, reverse in reversed(criteria):  # stable sorts, least significant key first
        ordered.sort(key=functools.partial(_key_value, key=key), reverse=reverse)
    return ordered


# --- THREAD (RFC 5256 §3) -----------------------------------------------------------------------
@dataclass(eq=False)
class _Container:
    info: Info | None = None
    parent: _Container | None = None
    children: list[_Container] = field(default_factory=list)

    def ancestors_include(self, other: _Container) -> bool:
        node: _Container | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False

    def adopt(self, child: _Container) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)


def references(infos: list[Info]) -> list[_Container]:
    """The REFERENCES algorithm (RFC 5256 §3, steps 1-5)."""
    table: dict[str, _Container] = {}
    for info in infos:
        _link(table, info)
    roots = [c for c in table.values() if c.parent is None]
    roots = _prune(roots)  # step 3
    roots = _group_by_subject(roots)  # step 5 (step 4 is the sort below)
    return _sorted(roots)


def ordered_subject(infos: list[Info]) -> list[_Container]:
    """ORDEREDSUBJECT (RFC 5256 §3): group by base subject, each group's first message by
    sent date is the parent of the others; threads ordered by their first message."""
    groups: dict[str, list[Info]] = {}
    for info in sorted(infos, key=lambda i: (i.date, i.seq)):
        groups.setdefault(info.subject, []).append(info)
    roots: list[_Container] = []
    for group in groups.values():
        root = _Container(group[0])
        for info in group[1:]:
            root.adopt(_Container(info))
        roots.append(root)
    return _sorted(roots)


def _link(table: dict[str, _Container], info: Info) -> None:
    # Step 1: a unique id per message; duplicates and missing ids get a private one.
    own = info.message_id
    if not own or (own in table and table[own].info is not None):
        own = f"\0{info.seq}"
    container = table.setdefault(own, _Container())
    container.info = info
    previous: _Container | None = None
    for ref in info.references:  # step 1A: link the References chain
        node = table.setdefault(ref, _Container())
        linkable = previous is not None and node is not previous and node.parent is None
        if linkable and previous is not None and not previous.ancestors_include(node):
            previous.adopt(node)
        previous = node
    # step 1B: the last reference becomes the parent, unless that makes a loop
    if container.parent is not None:
        container.parent.children.remove(container)
        container.parent = None
    if (
        previous is not None
        and previous is not container
        and not previous.ancestors_include(container)
    ):
        previous.adopt(container)


def _prune(nodes: list[_Container]) -> list[_Container]:
    out: list[_Container] = []
    for node in nodes:
        node.children = _prune(node.children)
        for child in node.children:
            child.parent = node
        if node.info is not None:
            out.append(node)
        elif not node.children:
            continue  # step 3A: dummy without children
        elif node.parent is None and len(node.children) > 1:
            out.append(node)  # step 3B: a root dummy with several children stays
        else:
            for child in node.children:  # promote the children
                child.parent = node.parent
            out.extend(node.children)
    return out


def _thread_date(node: _Container) -> tuple[int, int]:
    # §3 step 4: a dummy sorts by its first child after the children are sorted
    if node.info is not None:
        return node.info.date, node.info.seq
    return _thread_date(_sorted(node.children)[0])


def _sorted(nodes: list[_Container]) -> list[_Container]:
    return sorted(nodes, key=_thread_date)


def _subject_of(node: _Container) -> Info:
    return node.info if node.info is not None else _subject_of(_sorted(node.children)[0])


def _group_by_subject(roots: list[_Container]) -> list[_Container]:
    """Step 5: merge root threads that share a base subject."""
    by_subject: dict[str, _Container] = {}
    for root in _sorted(roots):
        subject = _subject_of(root).subject
        if not subject:
            continue
        old = by_subject.get(subject)
        if old is None:
            by_subject[subject] = root
            continue
        # 5C: prefer the non-reply / dummy as the thread root
        old_info, new_info = old.info, root.info
        if old_info is None and new_info is None:
            for child in list(root.children):
                old.adopt(child)
            root.children = []
            continue
        if old_info is None:
            old.adopt(root)
        elif new_info is None:
            root.adopt(old)
            by_subject[subject] = root
        elif new_info.is_reply and not old_info.is_reply:
            old.adopt(root)
        elif old_info.is_reply and not new_info.is_reply:
            root.adopt(old)
            by_subject[subject] = root
        else:
            dummy = _Container()
            dummy.adopt(old)
            dummy.adopt(root)
            by_subject[subject] = dummy
    kept = [r for r in roots if r.parent is None and (r.info is not None or r.children)]
    for dummy in by_subject.values():
        if dummy.parent is None and dummy not in kept:
            kept.append(dummy)
    return kept


def _members(node: _Container, uid: bool) -> str:
    """thread-members / thread-nested of RFC 5256 §4 for ``node`` and its descendants."""
    children = _sorted(node.children)
    nested = "".join(f"({_members(c, uid)})" for c in children)
    if node.info is None:
        return nested
    number = str(node.info.uid if uid else node.info.seq)
    if len(children) == 1:
        return f"{number} {_members(children[0], uid)}"
    return f"{number} {nested}" if children else number


def render(roots: list[_Container], uid: bool) -> bytes:
    """``(2)(3 6 (4 23)(44 7 96))`` (RFC 5256 §4)."""
    return "".join(f"({_members(root, uid)})" for root in roots).encode()

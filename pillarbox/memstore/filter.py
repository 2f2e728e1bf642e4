"""The neutral SEARCH filter (``pillarbox.mailstore.filters``) evaluated in Python.

The SQLite store compiles the tree to SQL (``store.query``); this evaluates the same tree
on one message, with SQL's three-valued logic so both answer alike: a term on a missing
value (``sent`` on a message without a ``Date:``) is *unknown*, ``not`` of unknown stays
unknown, and only a *true* filter lets a message through.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

EPOCH_ORDINAL: Final = 719163  # date(1970, 1, 1).toordinal()
DAY: Final = 86400

Truth = bool | None  # None: SQL's NULL, "unknown"


class Searchable(Protocol):
    """What a filter tests of a message."""

    uid: int
    mask: int
    keywords: list[str]
    internal_date: int
    size: int
    modseq: int
    sent_date: int | None
    search_text: str  # case-folded ``name:value`` header lines


def passes(node: tuple[object, ...], message: Searchable) -> bool:
    return _eval(node, message) is True


def _eval(node: tuple[object, ...], m: Searchable) -> Truth:
    kind = node[0]
    if kind == "all":
        return True
    if kind == "mask":
        _, bit, present = node
        return bool(m.mask & _int(bit)) == bool(present)
    if kind == "keyword":
        _, name, present = node
        have = str(name).lower() in (k.lower() for k in m.keywords)
        return have == bool(present)
    if kind == "larger":
        return m.size > _int(node[1])
    if kind == "smaller":
        return m.size < _int(node[1])
    if kind == "date":
        return _on_day(str(node[1]), m.internal_date, _int(node[2]))
    if kind == "sent":
        if m.sent_date is None:
            return None
        return _compare_day(str(node[1]), m.sent_date, _int(node[2]))
    if kind == "idate":
        limit = _int(node[2])
        return m.internal_date > limit if node[1] == ">" else m.internal_date <= limit
    if kind == "modseq":
        return m.modseq >= _int(node[1])
    if kind == "uids":
        return any(lo <= m.uid <= hi for lo, hi in _list(node[1]))
    if kind == "header":
        _, field, value = node
        return (str(value) or f"{field}:") in m.search_text
    if kind == "text":
        return True  # no full-text index here: every message is "not indexed yet"
    if kind == "and":
        return _all([_eval(item, m) for item in _list(node[1])])
    if kind == "or":
        left, right = _eval(_node(node[1]), m), _eval(_node(node[2]), m)
        if left is True or right is True:
            return True
        return None if left is None or right is None else False
    if kind == "not":
        inner = _eval(_node(node[1]), m)
        return None if inner is None else not inner
    raise ValueError(f"unknown filter term {kind!r}")


def _int(value: object) -> int:
    assert isinstance(value, int), value
    return value


def _node(value: object) -> tuple[object, ...]:
    assert isinstance(value, tuple), value
    return value


def _list(value: object) -> list[Any]:
    assert isinstance(value, list), value
    return value


def _all(values: list[Truth]) -> Truth:
    unknown = False
    for value in values:
        if value is False:
            return False
        unknown = unknown or value is None
    return None if unknown else True


def _on_day(op: str, epoch: int, ordinal: int) -> bool:
    """Internal date against a UTC day (RFC 3501 §6.4.4 BEFORE / ON / SINCE)."""
    start = (ordinal - EPOCH_ORDINAL) * DAY
    if op == "before":
        return epoch < start
    if op == "since":
        return epoch >= start
    return start <= epoch < start + DAY


def _compare_day(op: str, day: int, ordinal: int) -> bool:
    if op == "before":
        return day < ordinal
    if op == "since":
        return day >= ordinal
    return day == ordinal

"""The neutral SEARCH filter (``pillarbox.mailstore.filters``) compiled to PostgreSQL.

The same tree the SQLite store compiles for SQLite (``store.query``), here into a
``WHERE`` expression over ``mail_messages m`` with psycopg's ``%s`` parameters, so the
database returns only the candidate rows. SQL's three-valued logic is what the other
stores answer too (a ``sent`` term on a message without ``Date:`` is unknown, and
``NOT unknown`` stays unknown).

The full-text terms are exact here: every message row carries its case-folded body and
header text from the moment it is written (``mime.text.search_texts``, the function the
other stores index and scan with), so ``strpos`` on them is the answer and no message is
ever "not indexed yet".
"""

from __future__ import annotations

from typing import Any, Final

EPOCH_ORDINAL: Final = 719163  # date(1970, 1, 1).toordinal()
DAY: Final = 86400
MAX_TERMS: Final = 500


class FilterError(ValueError):
    """A malformed filter (a programming error in the caller)."""


def compile_filter(node: Any) -> tuple[str, list[Any]]:
    """(SQL boolean expression over ``m``, its parameters)."""
    params: list[Any] = []
    return _compile(node, params, [0]), params


def mentions_header(node: Any) -> bool:
    """Whether the filter tests the header text (the rows must then carry it)."""
    kind = node[0]
    if kind == "header":
        return True
    if kind == "and":
        return any(mentions_header(n) for n in node[1])
    if kind in ("or", "not"):
        return any(mentions_header(n) for n in node[1:])
    return False


def _compile(node: Any, params: list[Any], counter: list[int]) -> str:
    counter[0] += 1
    if counter[0] > MAX_TERMS:
        raise FilterError("search filter too large")
    kind = node[0]
    if kind == "all":
        return "true"
    if kind == "mask":
        _, bit, present = node
        return f"(m.mask & {int(bit)}) {'<>' if present else '='} 0"
    if kind == "keyword":
        _, name, present = node
        params.append(str(name).lower())
        found = "%s = ANY(SELECT lower(k) FROM unnest(m.keywords) AS k)"
        return found if present else f"NOT ({found})"
    if kind in ("larger", "smaller"):
        params.append(int(node[1]))
        return "m.size > %s" if kind == "larger" else "m.size < %s"
    if kind == "date":
        return _internal_day(str(node[1]), int(node[2]), params)
    if kind == "sent":
        _, op, ordinal = node
        params.append(int(ordinal))
        return {"before": "m.sent_date < %s", "since": "m.sent_date >= %s"}.get(
            op, "m.sent_date = %s"
        )
    if kind == "idate":
        _, op, ts = node
        if op not in (">", "<="):
            raise FilterError(f"bad idate operator {op}")
        params.append(int(ts))
        return f"m.internal_date {op} %s"
    if kind == "modseq":
        params.append(int(node[1]))
        return "m.modseq >= %s"
    if kind == "uids":
        ranges = node[1][:MAX_TERMS]
        if not ranges:
            return "false"
        parts = []
        for lo, hi in ranges:
            params += [int(lo), int(hi)]
            parts.append("m.uid BETWEEN %s AND %s")
        return "(" + " OR ".join(parts) + ")"
    if kind == "header":
        _, field, value = node
        params.append(value or (field + ":"))
        return "strpos(m.search_text, %s) > 0"
    if kind == "text":
        _, scope, needle = node
        params.append(needle)
        if scope == "body":
            return "strpos(m.body_text, %s) > 0"
        params.append(needle)
        return "(strpos(m.body_text, %s) > 0 OR strpos(m.header_text, %s) > 0)"
    if kind == "and":
        items = [_compile(n, params, counter) for n in node[1]]
        return "(" + " AND ".join(items) + ")" if items else "true"
    if kind == "or":
        left = _compile(node[1], params, counter)
        right = _compile(node[2], params, counter)
        return f"({left} OR {right})"
    if kind == "not":
        return f"NOT ({_compile(node[1], params, counter)})"
    raise FilterError(f"unknown filter term {kind!r}")


def _internal_day(op: str, ordinal: int, params: list[Any]) -> str:
    """Internal date against a UTC day (RFC 3501 §6.4.4 BEFORE / ON / SINCE)."""
    start = (ordinal - EPOCH_ORDINAL) * DAY
    if op == "before":
        params.append(start)
        return "m.internal_date < %s"
    if op == "since":
        params.append(start)
        return "m.internal_date >= %s"
    params += [start, start + DAY]
    return "(m.internal_date >= %s AND m.internal_date < %s)"

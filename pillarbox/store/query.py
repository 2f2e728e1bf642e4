"""Compile the neutral SEARCH filter of ``pillarbox.imap.backend`` into SQL.

The filter is a tree of tuples (see ``backend.SEARCH_FILTER``): flags, keywords, sizes,
dates, modseqs, UID ranges, header substrings and full-text needles (``store.fulltext``),
combined with and/or/not. Columns refer to ``messages m`` and, for header terms,
``message_search d``; SQLite then returns only the candidate rows, so ``SEARCH UNSEEN`` or
``SEARCH FROM x`` on 100,000 messages never builds 100,000 Python rows.
"""

from __future__ import annotations

from typing import Any, Final

from pillarbox.store import fulltext

EPOCH_ORDINAL: Final = 719163  # date(1970, 1, 1).toordinal()
DAY: Final = 86400
MAX_TERMS: Final = 500


class FilterError(ValueError):
    """A malformed filter (a programming error in the caller)."""


def compile_filter(node: Any) -> tuple[str, list[Any], bool]:
    """(SQL expression, parameters, needs the message_search join)."""
    params: list[Any] = []
    counter = [0]
    needs_text = [False]
    sql = _compile(node, params, counter, needs_text)
    return sql, params, needs_text[0]


def _compile(node: Any, params: list[Any], counter: list[int], text: list[bool]) -> str:
    counter[0] += 1
    if counter[0] > MAX_TERMS:
        raise FilterError("search filter too large")
    kind = node[0]
    if kind == "all":
        return "1"
    if kind == "mask":
        _, bit, present = node
        return f"(m.flags & {int(bit)}) {'!=' if present else '='} 0"
    if kind == "keyword":
        _, name, present = node
        params.append(f" {name.lower()} ")
        return f"instr(' ' || lower(m.keywords) || ' ', ?) {'>' if present else '='} 0"
    if kind in ("larger", "smaller"):
        params.append(int(node[1]))
        return "m.size > ?" if kind == "larger" else "m.size < ?"
    if kind == "date":
        _, op, ordinal = node
        start = (int(ordinal) - EPOCH_ORDINAL) * DAY
        if op == "before":
            params.append(start)
            return "m.internal_date < ?"
        if op == "since":
            params.append(start)
            return "m.internal_date >= ?"
        params += [start, start + DAY]
        return "(m.internal_date >= ? AND m.internal_date < ?)"
    if kind == "sent":
        _, op, ordinal = node
        params.append(int(ordinal))
        return {"before": "m.sent_date < ?", "since": "m.sent_date >= ?"}.get(op, "m.sent_date = ?")
    if kind == "idate":
        _, op, ts = node
        if op not in (">", "<="):
            raise FilterError(f"bad idate operator {op}")
        params.append(int(ts))
        return f"m.internal_date {op} ?"
    if kind == "modseq":
        params.append(int(node[1]))
        return "m.modseq >= ?"
    if kind == "uids":
        ranges = node[1][:MAX_TERMS]
        if not ranges:
            return "0"
        parts = []
        for lo, hi in ranges:
            params += [int(lo), int(hi)]
            parts.append("m.uid BETWEEN ? AND ?")
        return "(" + " OR ".join(parts) + ")"
    if kind == "header":
        _, field, value = node
        text[0] = True
        params.append(value or (field + ":"))
        return "instr(d.text, ?) > 0"
    if kind == "text":
        # Matches in the full-text index, or not indexed yet (the caller scans those):
        # uncorrelated subqueries, so SQLite runs each once.
        _, scope, needle = node
        if not fulltext.searchable(needle):
            raise FilterError("full-text needle shorter than the index can look up")
        columns = ["body"] if scope == "body" else ["body", "header"]
        found = []
        for column in columns:
            params.append(fulltext.glob_pattern(needle))
            found.append(
                f"{fulltext.ROWID_SQL} IN (SELECT rowid FROM message_fts WHERE {column} GLOB ?)"
            )
        pending = "(m.mailbox_id, m.uid) IN (SELECT mailbox_id, uid FROM fts_pending)"
        return "(" + " OR ".join([*found, pending]) + ")"
    if kind == "and":
        items = [_compile(n, params, counter, text) for n in node[1]]
        return "(" + " AND ".join(items) + ")" if items else "1"
    if kind == "or":
        left = _compile(node[1], params, counter, text)
        right = _compile(node[2], params, counter, text)
        return f"({left} OR {right})"
    if kind == "not":
        return f"NOT ({_compile(node[1], params, counter, text)})"
    raise FilterError(f"unknown filter term {kind!r}")

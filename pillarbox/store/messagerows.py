"""The index rows of one message, built from its file (or its bytes) and written together.

A message has three rows: ``messages`` (UID, flags, MODSEQ, internal date, CRLF size, sent
date, file name), ``message_data`` (ENVELOPE, BODYSTRUCTURE, the header block, for FETCH
without opening the file) and ``message_search`` (the case-folded header text a header
SEARCH scans: a table of its own so such a search reads only it), plus its full-text row
(``store.fulltext``) when that is built at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple

from pillarbox import mime
from pillarbox.mime.text import search_texts
from pillarbox.store import flags as fl
from pillarbox.store import fulltext
from pillarbox.store.boxstate import Mailbox


class IndexRow(NamedTuple):
    message: tuple[Any, ...]  # the ``messages`` row
    data: tuple[Any, ...]  # mailbox_id, uid, envelope, structure, header, header search text
    texts: tuple[str, str] | None  # full-text body and header, when indexed at once


def parsed_row(
    box: Mailbox, uid: int, fname: str, names: list[str], modseq: int, *, texts: bool
) -> IndexRow | None:
    """The rows of the file ``cur/fname``, or None when it is gone (or unreadable)."""
    try:
        with open(box.path / "cur" / fname, "rb") as f:
            stat = os.fstat(f.fileno())
            data = mime.to_crlf(f.read())
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    base, info = fl.split_filename(fname)
    mask, keywords = fl.parse_info(info, names)
    parsed = mime.parse(data)
    message = (
        box.id,
        uid,
        mask,
        " ".join(keywords),
        modseq,
        int(stat.st_mtime),
        len(data),
        parsed.sent_date,
        base,
        fname,
    )
    extra = (
        box.id,
        uid,
        json.dumps(parsed.envelope, separators=(",", ":")),
        json.dumps(parsed.structure, separators=(",", ":")),
        data[: parsed.header_end],
        mime.header_search_text(parsed.fields),
    )
    body_header = search_texts(data, parsed.structure, parsed.header_end) if texts else None
    return IndexRow(message, extra, body_header)


def insert_rows(conn: sqlite3.Connection, rows: Iterable[IndexRow]) -> None:
    """Write ``rows`` (inside the caller's transaction)."""
    rows = list(rows)
    conn.executemany(
        "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [r.message for r in rows],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO message_data VALUES (?, ?, ?, ?, ?)", [r.data[:5] for r in rows]
    )
    conn.executemany(
        "INSERT OR REPLACE INTO message_search VALUES (?, ?, ?)",
        [(r.data[0], r.data[1], r.data[5]) for r in rows],
    )
    fulltext.add(conn, ((r.data[0], r.data[1], *r.texts) for r in rows if r.texts is not None))

"""The index rows of one message, built from its file (or its bytes) and written together.

A message has four rows: ``messages`` (UID, flags, MODSEQ, internal date, CRLF size, sent
date, file name), ``message_data`` (ENVELOPE, BODYSTRUCTURE, the header block, for FETCH
without opening the file; the ENVELOPE also in its IMAP wire form when that is the same
for every session, ``pillarbox.mime.imapwire``), ``message_search`` (the case-folded
header text a header SEARCH scans: a table of its own so such a search reads only it) and
``message_sort`` (the SORT keys, ``store.sortkeys``), plus its full-text row
(``store.fulltext``) when that is built at once. The parsed rows (all but ``messages``)
are :class:`ParsedRows`, which the lazy parse (``store.lazyparse``) writes too.

Component ``mailindex.rows`` of the index database rebuilds ``message_data`` of an index
made before it as a rowid table with ``imap_envelope`` (see :func:`_rebuild_data`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from pillarbox import mime
from pillarbox.mime.imapwire import envelope_bytes
from pillarbox.mime.structure import ParsedMessage
from pillarbox.mime.text import search_texts
from pillarbox.store import db, fulltext, sortkeys
from pillarbox.store import flags as fl
from pillarbox.store.boxstate import Mailbox

COMPONENT: Final = "mailindex.rows"
FILL_CHUNK: Final = 2000  # envelopes converted at a time by the migration


class ParsedRows(NamedTuple):
    """What the parse of one message adds to its ``messages`` row."""

    data: tuple[Any, ...]  # message_data: mailbox_id, uid, envelope, structure, header, wire
    search: tuple[int, int, str]  # message_search: mailbox_id, uid, header search text
    sort: sortkeys.SortRow  # message_sort


class IndexRow(NamedTuple):
    message: tuple[Any, ...]  # the ``messages`` row
    parsed: ParsedRows
    texts: tuple[str, str] | None  # full-text body and header, when indexed at once


def parsed_rows(mailbox_id: int, uid: int, data: bytes, parsed: ParsedMessage) -> ParsedRows:
    """The parsed rows of the message ``data`` (CRLF), parsed as ``parsed``."""
    header = data[: parsed.header_end]
    return ParsedRows(
        (
            mailbox_id,
            uid,
            json.dumps(parsed.envelope, separators=(",", ":")),
            json.dumps(parsed.structure, separators=(",", ":")),
            header,
            envelope_bytes(parsed.envelope),
        ),
        (mailbox_id, uid, mime.header_search_text(parsed.fields)),
        sortkeys.row(mailbox_id, uid, header),
    )


def insert_parsed(conn: sqlite3.Connection, rows: Sequence[ParsedRows]) -> None:
    """Write parsed rows (inside the caller's transaction, after their ``messages`` rows:
    the sort row's date falls back to the message's INTERNALDATE)."""
    conn.executemany(
        "INSERT OR REPLACE INTO message_data"
        " (mailbox_id, uid, envelope, structure, header, imap_envelope) VALUES (?, ?, ?, ?, ?, ?)",
        [r.data for r in rows],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO message_search VALUES (?, ?, ?)", [r.search for r in rows]
    )
    sortkeys.insert(conn, (r.sort for r in rows))


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
    body_header = search_texts(data, parsed.structure, parsed.header_end) if texts else None
    return IndexRow(message, parsed_rows(box.id, uid, data, parsed), body_header)


def insert_rows(conn: sqlite3.Connection, rows: Iterable[IndexRow]) -> None:
    """Write ``rows`` (inside the caller's transaction)."""
    rows = list(rows)
    conn.executemany(
        "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [r.message for r in rows],
    )
    insert_parsed(conn, [r.parsed for r in rows])
    fulltext.add(
        conn,
        ((r.message[0], r.message[1], *r.texts) for r in rows if r.texts is not None),
    )


def _rebuild_data(conn: sqlite3.Connection) -> None:
    """``message_data`` as a rowid table, the ENVELOPE's wire form its first data column.

    As a WITHOUT ROWID table (an index b-tree: about 1,000 bytes of a row on its page) every
    row of ~1.4 KB spilled onto an overflow page of its own: 4.7 KB of file per message,
    and a page read per row for every FETCH of its data. A rowid table keeps ~4 KB of a row
    on its page; the column order puts what FETCH ENVELOPE reads first. The rows are copied
    with their wire envelopes rendered from the JSON ones."""
    conn.execute(
        "CREATE TABLE message_data_new (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
        " imap_envelope BLOB, envelope TEXT NOT NULL, structure TEXT NOT NULL,"
        " header BLOB NOT NULL, PRIMARY KEY (mailbox_id, uid))"
    )
    columns = "uid, mailbox_id, envelope, structure, header"
    for rows in db.keyed_chunks(conn, "message_data", columns, FILL_CHUNK):
        conn.executemany(
            "INSERT INTO message_data_new VALUES (?, ?, ?, ?, ?, ?)",
            [
                (box, uid, envelope_bytes(json.loads(env)), env, structure, header)
                for uid, box, env, structure, header in rows
            ],
        )
    conn.execute("DROP TABLE message_data")
    conn.execute("ALTER TABLE message_data_new RENAME TO message_data")


MIGRATIONS: Final[list[db.Migration]] = [_rebuild_data]


def prepare(conn: sqlite3.Connection) -> None:
    """Bring the parsed rows' tables to this release's columns (see the module docstring)."""
    db.migrate(conn, COMPONENT, MIGRATIONS)

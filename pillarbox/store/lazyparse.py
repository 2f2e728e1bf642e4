"""Messages indexed before they are parsed: the small row first, the parse later.

The first SELECT of a Maildir copied in from elsewhere (50,000 files) must not wait for
every file to be read and parsed (issue #17: Dovecot answers in 0.3 s, a full parse takes
over 10 s). So a big batch of new files (more than :data:`INLINE_MAX`) gets only its small
``messages`` row at once, built from the file name and one ``stat``: UID, MODSEQ, flags and
keywords from the ``:2,`` info, internal date from the mtime (as the full row), the CRLF
size from Dovecot's ``,W=`` field when the name has one; no ``message_data`` or
``message_search`` row. Each such message is listed in ``parse_pending``; ``sized = 0``
there says its ``size`` column is the file's size, a stand-in until the parse counts the
CRLF form (a file with bare LF line ends is smaller on disk than RFC822.SIZE says).

Readers never see a stand-in: whoever needs parsed columns parses the pending messages it
is about to read first (:func:`pending_in` finds them, :func:`parse` writes the rows, under
the index write lock, in chunks), and a background job (:func:`backlog`) parses the rest,
a chunk per turn of the lock, with their full-text rows (one read of the file for both).
The parse writes the same rows an eager index build writes (``store.messagerows``) and
leaves MODSEQ alone: no client can have seen the message's parsed data change.

A reader asks for what it needs (:class:`Need`), not always the full parse: the CRLF size
alone (POP3 LIST, STATUS SIZE, the quota: :func:`measure`, a read and no parse), or the
columns a SEARCH reads (:func:`parse_heads`: the sent date and the header search text,
from the file's header block only; with the size too when a row-by-row SEARCH may test
it). So the first header SEARCH of a Maildir copied in reads 50,000 header blocks, not
50,000 messages parsed with their bodies and full-text rows. Those columns are what the
full parse writes for them (the same header block, the same functions), and the message
stays pending for the rest.

Layout (component ``mailindex.parse`` of the index database):
``parse_pending(mailbox_id, uid, sized, headed)``: ``headed = 1`` says the sent date and
the ``message_search`` row are written; a trigger drops a message's row with the message
(expunge, MOVE, mailbox deletion), so the table can only lag, never lie.
"""

from __future__ import annotations

import enum
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from pillarbox import mime
from pillarbox.mailstore.filters import SearchFilter
from pillarbox.mime.headers import split_fields
from pillarbox.mime.structure import sent_date
from pillarbox.mime.text import search_texts
from pillarbox.store import db, fulltext, messagerows
from pillarbox.store import flags as fl
from pillarbox.store.boxstate import Mailbox
from pillarbox.store.names import BadMailboxName, folder_dir

COMPONENT: Final = "mailindex.parse"
INLINE_MAX: Final = 200  # a batch of new files up to this size is parsed at once
# Dovecot's virtual size: the size of the message with CRLF line ends (RFC822.SIZE).
_VIRTUAL_SIZE: Final = re.compile(r",W=(\d+)")
HEAD_READ: Final = 8192  # bytes read at a time while looking for a header block's end
# Two line ends in a row in raw bytes (see header_block).
_BLANK_LINE: Final = (b"\n\n", b"\n\r", b"\r\r")


class Need(enum.Enum):
    """What a reader needs of the pending messages it is about to read."""

    PARSED = "parsed"  # every column: the full parse
    SIZES = "sizes"  # the CRLF size (a read of the file, no parse)
    HEADERS = "headers"  # the sent date and header search text (the header block only)
    SEARCHED = "searched"  # the headers' columns and the size: a row-by-row SEARCH's


# The parse_pending rows that still lack what each Need asks for.
_LACKING: Final = {
    Need.PARSED: "",
    Need.SIZES: " AND p.sized = 0",
    Need.HEADERS: " AND p.headed = 0",
    Need.SEARCHED: " AND (p.headed = 0 OR p.sized = 0)",
}
# Filter terms that read columns only the parse fills (see store.query; "text" reads the
# full-text index, which has its own pending list).
_SIZE_TERMS: Final = frozenset({"larger", "smaller"})
_HEADER_TERMS: Final = frozenset({"sent", "header"})


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE parse_pending (mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
        " sized INTEGER NOT NULL, PRIMARY KEY (mailbox_id, uid)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TRIGGER parse_pending_removed AFTER DELETE ON messages BEGIN"
        " DELETE FROM parse_pending WHERE mailbox_id = old.mailbox_id AND uid = old.uid; END"
    )


def _add_headed(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE parse_pending ADD COLUMN headed INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: Final[list[db.Migration]] = [_create, _add_headed]


class SmallRow(NamedTuple):
    message: tuple[Any, ...]  # the ``messages`` row, sent_date NULL
    sized: bool  # the size column is the CRLF size (from ``,W=``)


def small_rows(
    box: Mailbox,
    files: Iterable[tuple[int, str]],
    names: list[str],
    modseq: int,
    sizes: Mapping[str, int] | None = None,
) -> list[SmallRow]:
    """The ``messages`` rows of ``(uid, file name)`` files of ``cur/``, from their names and
    a stat each (relative to ``cur/``'s descriptor: a path walk per file costs more than
    the stat); a file gone meanwhile is left out. ``sizes`` holds the CRLF sizes of the
    base names whose bytes the caller had in hand (delivery's)."""
    sizes = sizes or {}
    rows: list[SmallRow] = []
    split, stat = fl.split_filename, os.stat
    flags_of: dict[str, tuple[int, str]] = {}  # info letters -> (mask, keywords): few kinds
    cur = os.open(box.path / "cur", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for uid, fname in files:
            try:
                st = stat(fname, dir_fd=cur)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            base, info = split(fname)
            flags = flags_of.get(info)
            if flags is None:
                mask, keywords = fl.parse_info(info, names)
                flags = flags_of[info] = mask, " ".join(keywords)
            size = sizes.get(base)
            if size is None:
                virtual = _VIRTUAL_SIZE.search(base) if ",W=" in base else None
                size = int(virtual.group(1)) if virtual else None
            message = (box.id, uid, *flags, modseq, int(st.st_mtime),
                       st.st_size if size is None else size, None, base, fname)  # fmt: skip
            rows.append(SmallRow(message, size is not None))
    finally:
        os.close(cur)
    return rows


def insert_small(conn: sqlite3.Connection, rows: Sequence[SmallRow]) -> None:
    """Write small rows of new UIDs and list them as pending (inside the caller's
    transaction)."""
    conn.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [r.message for r in rows],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO parse_pending (mailbox_id, uid, sized) VALUES (?, ?, ?)",
        [(r.message[0], r.message[1], int(r.sized)) for r in rows],
    )


def copy_pending(conn: sqlite3.Connection, pairs: Iterable[tuple[int, int, int, int]]) -> None:
    """COPY/MOVE ``(source mailbox, source UID, destination mailbox, new UID)``: a copy of a
    pending message is pending too (inside the caller's transaction, after its row)."""
    conn.executemany(
        "INSERT OR REPLACE INTO parse_pending SELECT ?, ?, sized, headed FROM parse_pending"
        " WHERE mailbox_id = ? AND uid = ?",
        [(dst, new, src, uid) for src, uid, dst, new in pairs],
    )


def any_pending(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM parse_pending LIMIT 1").fetchone() is not None


def need_of(where: SearchFilter) -> Need | None:
    """What a SEARCH with this filter needs parsed first: the sizes (LARGER, SMALLER), the
    header columns (SENT*, header substrings), both, or nothing."""
    kinds = _term_kinds(where)
    sizes, headers = bool(kinds & _SIZE_TERMS), bool(kinds & _HEADER_TERMS)
    if sizes and headers:
        return Need.SEARCHED
    if headers:
        return Need.HEADERS
    return Need.SIZES if sizes else None


def _term_kinds(where: SearchFilter) -> set[str]:
    kind = where[0]
    if kind == "and":
        return set().union(*(_term_kinds(n) for n in where[1]))  # type: ignore[attr-defined]
    if kind in ("or", "not"):
        return set().union(*(_term_kinds(n) for n in where[1:]))  # type: ignore[arg-type]
    return {str(kind)}


class Pending(NamedTuple):
    uid: int
    fname: str
    sized: bool  # the size column is the CRLF size already


def pending_in(
    conn: sqlite3.Connection,
    mailbox_id: int,
    ranges: Sequence[tuple[int, int]],
    *,
    need: Need = Need.PARSED,
    changed_since: int = 0,
    limit: int = 1 << 62,
) -> list[Pending]:
    """The first ``limit`` pending messages in ``ranges`` (with a modseq above
    ``changed_since``) that lack what ``need`` asks for, in UID order.

    Parsing these is what a read of the first ``limit`` messages of ``ranges`` needs: the
    pending ones among them are at most ``limit`` and come first in UID order."""
    found: list[Pending] = []
    for lo, hi in ranges:
        found += map(Pending._make, conn.execute(
            "SELECT p.uid, m.fname, p.sized FROM parse_pending p JOIN messages m"
            " ON m.mailbox_id = p.mailbox_id AND m.uid = p.uid"
            f" WHERE p.mailbox_id = ? AND p.uid BETWEEN ? AND ? AND m.modseq > ?{_LACKING[need]}"
            " ORDER BY p.uid LIMIT ?",
            (mailbox_id, lo, hi, changed_since, limit - len(found)),
        ))  # fmt: skip
        if len(found) >= limit:
            break
    return found


def any_pending_in(
    conn: sqlite3.Connection,
    mailbox_id: int,
    ranges: Sequence[tuple[int, int]],
    *,
    need: Need = Need.PARSED,
) -> bool:
    """Whether ``ranges`` hold a pending message lacking what ``need`` asks for (a cheap
    look on a read connection)."""
    for lo, hi in ranges:
        row = conn.execute(
            "SELECT 1 FROM parse_pending p WHERE p.mailbox_id = ? AND p.uid BETWEEN ? AND ?"
            f"{_LACKING[need]} LIMIT 1",
            (mailbox_id, lo, hi),
        ).fetchone()
        if row is not None:
            return True
    return False


def parse(
    conn: sqlite3.Connection,
    folder: Path,
    mailbox_id: int,
    messages: Iterable[tuple[int, str] | Pending],
    *,
    full_text: bool,
) -> None:
    """Parse ``(uid, file name)`` messages of the folder and write their rows, in one
    transaction; with ``full_text`` also the full-text row of those the index lacks.
    A file that cannot be read (renamed or removed by another program since the sync)
    stays pending: the next sync sees ``cur/`` changed and repairs the row."""
    updates: list[tuple[object, ...]] = []
    parsed_rows: list[messagerows.ParsedRows] = []
    texts: list[tuple[int, int, str, str]] = []
    for uid, fname, *_ in messages:
        try:
            data = mime.to_crlf((folder / "cur" / fname).read_bytes())
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
        parsed = mime.parse(data)
        updates.append((len(data), parsed.sent_date, mailbox_id, uid))
        parsed_rows.append(messagerows.parsed_rows(mailbox_id, uid, data, parsed))
        if full_text and _text_pending(conn, mailbox_id, uid):
            texts.append(
                (mailbox_id, uid, *search_texts(data, parsed.structure, parsed.header_end))
            )
    if not updates:
        return
    with db.Transaction(conn):
        # The size UPDATE moves the quota usage by the difference (store.quota's trigger).
        conn.executemany(
            "UPDATE messages SET size = ?, sent_date = ? WHERE mailbox_id = ? AND uid = ?",
            updates,
        )
        messagerows.insert_parsed(conn, parsed_rows)
        conn.executemany(
            "DELETE FROM parse_pending WHERE mailbox_id = ? AND uid = ?",
            [(u[2], u[3]) for u in updates],
        )
        fulltext.add(conn, texts)


def backlog(
    conn: sqlite3.Connection,
    root: Path,
    after: tuple[int, int],
    limit: int,
    *,
    full_text: bool,
) -> tuple[int, int] | None:
    """Parse up to ``limit`` pending messages after the cursor ``(mailbox_id, uid)``, of
    whatever mailbox; returns the new cursor, or None when nothing is left after it."""
    rows = conn.execute(
        "SELECT p.mailbox_id, p.uid, m.fname, b.name FROM parse_pending p"
        " JOIN messages m ON m.mailbox_id = p.mailbox_id AND m.uid = p.uid"
        " JOIN mailboxes b ON b.id = p.mailbox_id"
        " WHERE (p.mailbox_id, p.uid) > (?, ?) ORDER BY p.mailbox_id, p.uid LIMIT ?",
        (*after, limit),
    ).fetchall()
    if not rows:
        return None
    by_box: dict[tuple[int, str], list[tuple[int, str]]] = {}
    for mailbox_id, uid, fname, name in rows:
        by_box.setdefault((mailbox_id, name), []).append((uid, fname))
    for (mailbox_id, name), messages in by_box.items():
        try:
            directory = folder_dir(name)
        except BadMailboxName:
            continue
        parse(conn, root / directory if directory else root, mailbox_id, messages,
              full_text=full_text)  # fmt: skip
    return rows[-1][0], rows[-1][1]


def _text_pending(conn: sqlite3.Connection, mailbox_id: int, uid: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM fts_pending WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
    ).fetchone()
    return row is not None


def parse_heads(
    conn: sqlite3.Connection,
    folder: Path,
    mailbox_id: int,
    messages: Iterable[Pending],
    *,
    sizes: bool,
) -> None:
    """Give pending messages their sent date and header search text, read from the file's
    header block only; with ``sizes`` the unsized ones their CRLF size too (their whole
    file is read then, and not parsed). They stay pending for the rest. The columns are
    those :func:`parse` writes: the header block is the one ``mime.parse`` finds, split
    and rendered by the same functions."""
    heads: list[tuple[object, ...]] = []
    measured: list[tuple[int, int, int]] = []
    cur = os.open(folder / "cur", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for uid, fname, sized in messages:
            try:
                fd = os.open(fname, os.O_RDONLY, dir_fd=cur)  # no path walk per file
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue  # stays pending: the next sync sees cur/ changed
            try:
                if sizes and not sized:
                    data = mime.to_crlf(_read_all(fd))
                    measured.append((len(data), mailbox_id, uid))
                    head = data[: mime.split_header(data)]
                else:
                    head = header_block(fd)
            finally:
                os.close(fd)
            fields = split_fields(head)
            heads.append((sent_date(fields), mime.header_search_text(fields), mailbox_id, uid))
    finally:
        os.close(cur)
    if not heads:
        return
    with db.Transaction(conn):
        conn.executemany("UPDATE messages SET sent_date = ? WHERE mailbox_id = ? AND uid = ?",
                         [(h[0], h[2], h[3]) for h in heads])  # fmt: skip
        conn.executemany("INSERT OR REPLACE INTO message_search VALUES (?, ?, ?)",
                         [(h[2], h[3], h[1]) for h in heads])  # fmt: skip
        conn.executemany("UPDATE parse_pending SET headed = 1 WHERE mailbox_id = ? AND uid = ?",
                         [(h[2], h[3]) for h in heads])  # fmt: skip
        _set_sizes(conn, measured)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def header_block(fd: int) -> bytes:
    """The CRLF form of the file's header block, with the blank line that ends it (all of
    the file when it has none): the block ``mime.parse`` finds in the CRLF form of the
    whole file, read and converted no further than ``HEAD_READ`` bytes past its end.

    A line end is CR LF, a bare LF or a bare CR (``mime.to_crlf``), so a blank line starts
    where one line end is followed by another: at the first LF LF, LF CR or CR CR of the
    raw bytes (CR LF is one line end, never two). Converting the bytes up to there gives
    the start of the whole file's CRLF form."""
    raw = b""
    while chunk := os.read(fd, HEAD_READ):
        start = max(len(raw) - 1, 0)  # a pair may straddle two reads
        raw += chunk
        if raw[:1] in (b"\r", b"\n"):
            return b"\r\n"  # an empty header (RFC 2046 §5.1.1)
        found = [i for i in (raw.find(pair, start) for pair in _BLANK_LINE) if i >= 0]
        if found:
            return mime.to_crlf(raw[: min(found) + 1]) + b"\r\n"
    return mime.to_crlf(raw)  # no blank line: all header, no body


def measure(
    conn: sqlite3.Connection, folder: Path, mailbox_id: int, messages: Iterable[Pending]
) -> None:
    """Give pending messages without a known size their CRLF size (a read, no parse: what
    POP3 LIST, STATUS SIZE and the quota need); they stay pending for the rest."""
    sizes: list[tuple[int, int, int]] = []
    for uid, fname, _ in messages:
        try:
            data = (folder / "cur" / fname).read_bytes()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
        sizes.append((len(mime.to_crlf(data)), mailbox_id, uid))
    with db.Transaction(conn):
        _set_sizes(conn, sizes)


def _set_sizes(conn: sqlite3.Connection, sizes: list[tuple[int, int, int]]) -> None:
    """``(CRLF size, mailbox_id, uid)``: the size column is exact from now on."""
    conn.executemany("UPDATE messages SET size = ? WHERE mailbox_id = ? AND uid = ?", sizes)
    conn.executemany(
        "UPDATE parse_pending SET sized = 1 WHERE mailbox_id = ? AND uid = ?",
        [(m, u) for _, m, u in sizes],
    )

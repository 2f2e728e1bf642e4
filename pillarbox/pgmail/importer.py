"""A user's SQLite mailbox index (``store.index``) moved into the PostgreSQL index, so an
install that switches ``[store] backend`` keeps every mailbox as its clients know it.

``pillarbox store migrate`` imports every user up front (:func:`import_all`, inside its one
transaction); the store imports a user it finds no row for at the first open (an install
that ran on PostgreSQL before the index moved there), in the transaction that creates the
user's row, so two nodes import a user once.

What a client's cache depends on is kept: mailbox names, special uses, subscriptions,
UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and each message's UID, flags, keywords, MODSEQ and
internal date; the files stay where they are (rows name them). Expunges before the move
are one tombstone set under the mailbox's HIGHESTMODSEQ: every UID below UIDNEXT that is
not there any more, which RFC 7162 §3.2.5.1 allows a VANISHED (EARLIER) to report to a
client that resynchronises from an older MODSEQ. Files the index had not taken yet (in
``new/``, or copied into ``cur/`` by another program) get the next UIDs, as the next sync
would have given them. The SQLite files are only read (``store.dump.MailDump``, a
read-only connection); every message file is read once, to parse it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

from pillarbox import postgres as pg
from pillarbox.mailstore.flags import FLAG_TEXT
from pillarbox.pgmail.rows import NewMessage, merge_ranges, parse_new
from pillarbox.store.dump import MailDump, StoredMailbox, StoredMessage
from pillarbox.store.flags import parse_info, read_keywords, split_filename
from pillarbox.store.index import INDEX_FILE
from pillarbox.store.maildir import user_maildir

_MESSAGE_COLUMNS = (
    "mailbox_id, uid, modseq, mask, keywords, internal_date, size, sent_date, path,"
    " envelope, structure, header, search_text, body_text, header_text"
)


@dataclass
class Imported:
    """What an import moved."""

    users: int = 0
    mailboxes: int = 0
    messages: int = 0

    def add(self, other: Imported) -> None:
        self.users += other.users
        self.mailboxes += other.mailboxes
        self.messages += other.messages

    def __str__(self) -> str:
        return f"{self.users} users, {self.mailboxes} mailboxes, {self.messages} messages"


def has_sqlite_index(mail_dir: Path, user: str) -> bool:
    try:
        return (user_maildir(mail_dir, user) / INDEX_FILE).is_file()
    except ValueError:
        return False


def sqlite_users(mail_dir: Path) -> Iterator[str]:
    """Every ``local@domain`` under ``mail_dir`` with an SQLite index, sorted."""
    if not mail_dir.is_dir():
        return
    for domain in sorted(p for p in mail_dir.iterdir() if p.is_dir()):
        for local in sorted(p for p in domain.iterdir() if p.is_dir()):
            if (local / INDEX_FILE).is_file():
                yield f"{local.name}@{domain.name}"


def import_all(
    conn: pg.Connection, mail_dir: Path, say: Callable[[str], None] | None = None
) -> Imported:
    """Every user's index under ``mail_dir`` (inside the caller's transaction)."""
    total = Imported()
    for user in sqlite_users(mail_dir):
        conn.execute("INSERT INTO mail_users (user_address) VALUES (%s)", (user,))
        done = import_user(conn, mail_dir, user)
        total.add(done)
        if say is not None:
            say(f"  mailbox index of {user}: {done.mailboxes} mailboxes, {done.messages} messages")
    return total


def import_user(conn: pg.Connection, mail_dir: Path, user: str) -> Imported:
    """``user``'s SQLite index into the PostgreSQL index, inside the caller's transaction,
    which has just created the user's row (and nothing else of the user)."""
    root = user_maildir(mail_dir, user)
    dump = MailDump(root)
    try:
        boxes = dump.mailboxes()
        last = max((box.uidvalidity for box in boxes), default=0)
        conn.execute(
            "UPDATE mail_users SET last_uidvalidity = greatest(last_uidvalidity, %s)"
            " WHERE user_address = %s",
            (last, user),
        )
        done = Imported(users=1)
        for box in boxes:
            done.messages += _import_mailbox(conn, dump, mail_dir, user, box)
            done.mailboxes += 1
        subscribed = [row[0] for row in dump.conn.execute("SELECT name FROM subscriptions")]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO mail_subscriptions (user_address, name) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                [(user, name) for name in subscribed],
            )
        return done
    finally:
        dump.close()


def _import_mailbox(
    conn: pg.Connection, dump: MailDump, mail_dir: Path, user: str, box: StoredMailbox
) -> int:
    """One mailbox with its messages; how many messages."""
    highest = int(
        dump.conn.execute(
            "SELECT highestmodseq FROM mailboxes WHERE name = ?", (box.name,)
        ).fetchone()[0]
    )
    modseqs = dict(
        dump.conn.execute(
            "SELECT m.uid, m.modseq FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
            " WHERE b.name = ?",
            (box.name,),
        ).fetchall()
    )
    rows: list[tuple[int, int, NewMessage]] = []  # (uid, modseq, message)
    known: set[str] = set()
    for stored in dump.messages(box):
        known.add(stored.base)
        path = _file_of(box, stored)
        if path is None:
            continue  # expunged behind the index's back: the next sync would drop it
        new = _parse(path, mail_dir, stored.flags, stored.internal_date)
        rows.append((stored.uid, modseqs[stored.uid], new))
    uidnext = box.uidnext
    stray = list(_unindexed_files(box, known))
    if stray:
        highest += 1
        for path in stray:
            new = _parse(path, mail_dir, _maildir_flags(box.path, path.name), path.stat().st_mtime)
            rows.append((uidnext, highest, new))
            uidnext += 1
    # The FLAGS list: the folder's keyword file (every keyword once stored), then any other.
    stored_keywords = read_keywords(box.path) + [k for _, _, m in rows for k in m.keywords]
    keywords = [k for k in dict.fromkeys(stored_keywords) if k]
    box_id = pg.scalar(
        conn,
        "INSERT INTO mail_mailboxes (user_address, name, special_use, uidvalidity, uidnext,"
        " highestmodseq, recent_uid, keywords) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id",
        (user, box.name, box.special_use, box.uidvalidity, uidnext, highest, uidnext, keywords),
    )
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY mail_messages ({_MESSAGE_COLUMNS}) FROM STDIN") as copy,
    ):
        for uid, modseq, new in rows:
            copy.write_row((box_id, uid, modseq, *astuple(new)))
    present = {uid for uid, _, _ in rows}
    gone = merge_ranges([uid for uid in range(1, box.uidnext) if uid not in present])
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO mail_tombstones (mailbox_id, modseq, uid_lo, uid_hi)"
            " VALUES (%s, %s, %s, %s)",
            [(box_id, highest, lo, hi) for lo, hi in gone],
        )
    return len(rows)


def _parse(path: Path, mail_dir: Path, flags: tuple[str, ...], when: float) -> NewMessage:
    return parse_new(path.read_bytes(), flags, when, str(path.relative_to(mail_dir)))


def _file_of(box: StoredMailbox, message: StoredMessage) -> Path | None:
    """The file of an indexed message: its name in the index, else (renamed by a flag
    change another program made) the one with its base name."""
    cur = box.path / "cur"
    exact = cur / message.fname
    if exact.is_file():
        return exact
    prefix = message.base + ":"
    for name in os.listdir(cur) if cur.is_dir() else ():
        if name == message.base or name.startswith(prefix):
            return cur / name
    return None


def _unindexed_files(box: StoredMailbox, known: set[str]) -> Iterator[Path]:
    """Files of the folder the index does not name, oldest first (``new/`` then ``cur/``)."""
    for sub in ("new", "cur"):
        directory = box.path / sub
        if not directory.is_dir():
            continue
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        for name in names:
            if split_filename(name)[0] not in known:
                yield directory / name


def _maildir_flags(folder: Path, name: str) -> tuple[str, ...]:
    """The flags in a Maildir file name's ``:2,`` info, keywords by the folder's
    ``dovecot-keywords`` letters (as the SQLite store's sync reads them)."""
    mask, keywords = parse_info(split_filename(name)[1], read_keywords(folder))
    return tuple(FLAG_TEXT[mask].split()) + tuple(keywords)

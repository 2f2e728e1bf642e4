"""The queue's durable state: one spool file per message, rows for everything else.

The rows live in SQLite (``QueueStore``, here) or, for several nodes sharing one queue,
in PostgreSQL (``pgstore.PgQueueStore``); ``open_store`` picks by ``[store] backend``.
Both keep the spool files the same way (``QueueStoreBase``).

Layout under ``settings.queue_dir``::

    queue.db         messages, recipients (per-recipient state), attempts (history)
    tmp/ID           a message being written (removed or renamed; strays deleted at start)
    msg/ID           the message, stored once, immutable after enqueue (it may be signed)

Why files + SQLite: a message body is written once and streamed out many times, which is
what files do best (copy_file_range in, sequential reads out, no BLOB churn in the WAL); the
per-recipient state changes on every attempt and is queried by due time, which is what an
indexed table does best, with atomic multi-row commits. A separate database file (not the
accounts/mailbox one) keeps the queue's frequent fsync'd commits from contending with the
mailbox index writer, and makes the queue directory self-contained.

Crash safety (kill -9 at any point):

- enqueue writes ``tmp/ID``, fsyncs it, renames it to ``msg/ID``, fsyncs ``msg/``, and only
  then commits the rows: a crash before the commit leaves an orphan file (deleted at start),
  never a row without its file.
- an attempt is recorded (committed) before the connection is made; on start, attempts with
  no end are closed as "interrupted" and their recipients, still ``queued``, are retried.
- recipients are marked ``sent`` only after the peer's 250 to the final dot. A crash between
  that reply and our commit means the message is sent again: RFC 5321 §6.1's known
  duplicate window (RFC 1047), a few milliseconds wide.

All methods are blocking: the service runs them on one worker thread (see service.py);
the CLI calls them directly when the server is not running.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox.config import Settings
from pillarbox.queue.api import OutboundRecipient
from pillarbox.store import db
from pillarbox.store.maildir import fsync_dir

# Recipient states.
QUEUED = "queued"
SENT = "sent"
FAILED = "failed"  # bounced or expired: final, a failure DSN may be pending

# Pending DSN actions (RFC 3464 §2.3.3), in the recipients.dsn column.
DSN_FAILED = "failed"
DSN_DELAYED = "delayed"
DSN_RELAYED = "relayed"

MIGRATIONS = [
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        envid TEXT,
        ret TEXT,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        eightbit INTEGER NOT NULL DEFAULT 0,
        smtputf8 INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        notify TEXT NOT NULL DEFAULT '',
        orcpt TEXT,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_reply TEXT,
        remote_mta TEXT,
        dsn TEXT,
        warned INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL
    );
    CREATE INDEX recipients_due ON recipients(state, next_attempt);
    CREATE INDEX recipients_message ON recipients(queue_id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        domain TEXT NOT NULL,
        recipients TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT,
        detail TEXT
    );
    CREATE INDEX attempts_message ON attempts(queue_id);
    CREATE TABLE sts_policies (
        domain TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        policy TEXT NOT NULL,
        fetched REAL NOT NULL,
        expires REAL NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class Message:
    id: str
    sender: str
    envid: str | None
    ret: str | None
    created: float
    size: int
    eightbit: bool
    smtputf8: bool


@dataclass(frozen=True)
class Recipient:
    id: int
    queue_id: str
    address: str
    domain: str
    notify: frozenset[str]
    orcpt: str | None
    state: str
    attempts: int
    next_attempt: float
    last_reply: str | None
    remote_mta: str | None
    dsn: str | None
    warned: bool
    updated: float


@dataclass(frozen=True)
class Outcome:
    """What one attempt decided for one recipient."""

    recipient_id: int
    state: str  # QUEUED (deferred), SENT or FAILED
    reply: str
    remote_mta: str | None = None
    next_attempt: float = 0.0
    dsn: str | None = None
    warned: bool = False


_QUEUE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


def is_queue_id(text: str) -> bool:
    """Queue ids name files: letters and digits only (no path tricks from the CLI)."""
    return bool(_QUEUE_ID.match(text))


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    return any(not a.isascii() for a in [sender, *recipients])


def recipient_rows(
    queue_id: str, recipients: Sequence[OutboundRecipient], now: float
) -> list[tuple[str, str, str, str, str | None, float, float]]:
    """The recipients table's new rows, in its column order (queue_id, address, domain,
    notify, orcpt, next_attempt, updated): one place for both stores' INSERT."""
    return [
        (
            queue_id,
            r.address,
            recipient_domain(r.address),
            ",".join(sorted(r.notify)),
            r.orcpt,
            now,
            now,
        )
        for r in recipients
    ]


class QueueStoreBase(abc.ABC):
    """The queue's state: the spool files (here, the same for every backend) and the rows
    (``QueueStore`` in SQLite, ``pgstore.PgQueueStore`` in PostgreSQL, shared by nodes).

    The methods are blocking; one caller thread at a time."""

    #: Several nodes work on these rows at once (claims and leases matter).
    shared = False

    def __init__(self, queue_dir: Path, *, readonly: bool = False) -> None:
        self.dir = queue_dir
        self.msg_dir = queue_dir / "msg"
        self.tmp_dir = queue_dir / "tmp"
        if not readonly:
            for d in (self.msg_dir, self.tmp_dir):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def message_path(self, queue_id: str) -> Path:
        if not is_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.msg_dir / queue_id

    # -- enqueue --------------------------------------------------------------------------

    def write_spool(self, queue_id: str, parts: Sequence[bytes | Path]) -> tuple[int, bool]:
        """Write ``parts`` to ``msg/ID`` durably; returns (size, has 8-bit octets).

        Raises FileExistsError when ``msg/ID`` exists (a reused id never replaces a message).
        """
        final = self.message_path(queue_id)
        tmp = self.tmp_dir / queue_id
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = 0
            for part in parts:
                if isinstance(part, bytes):
                    _write_all(fd, part)
                    size += len(part)
                else:
                    size += _append_file(fd, part)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.link(tmp, final)  # unlike rename, never replaces an existing file
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.msg_dir)
        return size, _has_8bit(final)

    def remove_orphans(self, older_than: float = 0.0) -> list[str]:
        """Spool files without rows (a crash during enqueue); returns the removed ids."""
        removed = []
        for d in (self.tmp_dir, self.msg_dir):
            for path in d.iterdir():
                if d is self.msg_dir and self.message(path.name) is not None:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime <= time.time() - older_than:
                        path.unlink()
                        removed.append(path.name)
        return removed

    # -- the rows -------------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def add_message(
        self,
        queue_id: str,
        sender: str,
        recipients: Sequence[OutboundRecipient],
        *,
        size: int,
        eightbit: bool,
        envid: str | None,
        ret: str | None,
        now: float | None = None,
    ) -> list[Recipient]:
        """Commit the rows of a message whose spool file is already durable; returns its
        recipients, which this node may work on at once (on a shared store, claimed by it:
        the node that accepted a message makes its first attempt)."""

    @abc.abstractmethod
    def message(self, queue_id: str) -> Message | None: ...

    @abc.abstractmethod
    def messages(self) -> list[Message]: ...

    @abc.abstractmethod
    def recipients(self, queue_id: str) -> list[Recipient]: ...

    @abc.abstractmethod
    def due(self, now: float, limit: int = 1000) -> list[Recipient]:
        """Queued recipients due at ``now``, which this node may now work on (claimed)."""

    @abc.abstractmethod
    def next_due(self, after: float) -> float | None:
        """The earliest retry time later than ``after`` (due ones are being handled)."""

    @abc.abstractmethod
    def attempts(self, queue_id: str) -> list[dict[str, object]]: ...

    @abc.abstractmethod
    def pending_reports(self) -> list[str]:
        """Ids of messages with a DSN to send or nothing left to do (to retire)."""

    @abc.abstractmethod
    def begin_attempt(self, queue_id: str, domain: str, recipient_ids: Sequence[int]) -> int:
        """Record an attempt before it is made (its end is recorded by finish_attempt)."""

    @abc.abstractmethod
    def finish_attempt(self, attempt_id: int, outcomes: Sequence[Outcome], detail: str) -> None:
        """Commit the outcomes of an attempt (and end this node's claim on them)."""

    @abc.abstractmethod
    def close_interrupted_attempts(self) -> int:
        """Attempts that never finished, of a node no longer running (their recipients
        are still queued and will be tried again)."""

    @abc.abstractmethod
    def clear_dsn(self, recipient_ids: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def flush(self, queue_id: str | None = None) -> int:
        """Make queued recipients (of one message, or all) due now; returns how many."""

    @abc.abstractmethod
    def delete(self, queue_id: str) -> bool:
        """Remove a message and its state (no DSN); True if it existed."""

    @abc.abstractmethod
    def retire_if_done(self, queue_id: str) -> bool:
        """Delete a message once no recipient is queued and no DSN is pending."""

    @abc.abstractmethod
    def sts_get(self, domain: str) -> tuple[str, str, float, float] | None: ...

    @abc.abstractmethod
    def sts_put(self, domain: str, policy_id: str, policy: str, expires: float) -> None: ...

    # -- claims: one node has all of them in SQLite, so these only matter when shared -----

    def still_claimed(self, recipient_ids: Sequence[int]) -> list[int]:
        """Those of ``recipient_ids`` this node still holds (just before an attempt)."""
        return list(recipient_ids)

    def renew_claims(self, held: Collection[tuple[str, str]] = ()) -> int:
        """Extend this node's claims on the jobs ``held`` ((queue id, domain) pairs);
        returns how many recipients that renewed."""
        return 0

    def release_claims(self) -> int:
        """Give up every claim this node holds (stopping); returns how many."""
        return 0

    def claim_report(self, queue_id: str) -> bool:
        """Take the right to send a message's pending reports (False: another node has it)."""
        return True

    def release_report(self, queue_id: str) -> None:
        """Done with a message's reports (see claim_report)."""
        return None


class QueueStore(QueueStoreBase):
    """The SQLite rows (see the module docstring). Not thread-safe: use it from one thread
    at a time."""

    def __init__(self, queue_dir: Path, *, readonly: bool = False) -> None:
        super().__init__(queue_dir, readonly=readonly)
        self.conn = db.connect(queue_dir / "queue.db", readonly=readonly)
        if not readonly:
            db.migrate(self.conn, "queue", MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    def add_message(
        self,
        queue_id: str,
        sender: str,
        recipients: Sequence[OutboundRecipient],
        *,
        size: int,
        eightbit: bool,
        envid: str | None,
        ret: str | None,
        now: float | None = None,
    ) -> list[Recipient]:
        now = time.time() if now is None else now
        smtputf8 = needs_smtputf8(sender, (r.address for r in recipients))
        with db.Transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO messages(id, sender, envid, ret, created, size, eightbit, smtputf8)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (queue_id, sender, envid, ret, now, size, int(eightbit), int(smtputf8)),
            )
            conn.executemany(
                "INSERT INTO recipients(queue_id, address, domain, notify, orcpt,"
                " next_attempt, updated) VALUES(?, ?, ?, ?, ?, ?, ?)",
                recipient_rows(queue_id, recipients, now),
            )
        return self.recipients(queue_id)

    # -- reading --------------------------------------------------------------------------

    def message(self, queue_id: str) -> Message | None:
        row = self.conn.execute("SELECT * FROM messages WHERE id = ?", (queue_id,)).fetchone()
        return message_of_row(row) if row else None

    def messages(self) -> list[Message]:
        rows = self.conn.execute("SELECT * FROM messages ORDER BY created, id").fetchall()
        return [message_of_row(r) for r in rows]

    def recipients(self, queue_id: str) -> list[Recipient]:
        rows = self.conn.execute(
            "SELECT * FROM recipients WHERE queue_id = ? ORDER BY id", (queue_id,)
        ).fetchall()
        return [recipient_of_row(r) for r in rows]

    def due(self, now: float, limit: int = 1000) -> list[Recipient]:
        rows = self.conn.execute(
            "SELECT * FROM recipients WHERE state = ? AND next_attempt <= ?"
            " ORDER BY next_attempt, id LIMIT ?",
            (QUEUED, now, limit),
        ).fetchall()
        return [recipient_of_row(r) for r in rows]

    def next_due(self, after: float) -> float | None:
        """The earliest retry time later than ``after`` (due ones are being handled)."""
        row = self.conn.execute(
            "SELECT MIN(next_attempt) FROM recipients WHERE state = ? AND next_attempt > ?",
            (QUEUED, after),
        ).fetchone()
        return row[0] if row and row[0] is not None else None

    def attempts(self, queue_id: str) -> list[dict[str, object]]:
        rows = self.conn.execute(
            "SELECT domain, recipients, started, finished, outcome, detail FROM attempts"
            " WHERE queue_id = ? ORDER BY id",
            (queue_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    def pending_reports(self) -> list[str]:
        """Ids of messages with a DSN to send or nothing left to do (to retire)."""
        rows = self.conn.execute(
            "SELECT DISTINCT queue_id FROM recipients WHERE dsn IS NOT NULL"
            " UNION SELECT id FROM messages m WHERE NOT EXISTS"
            " (SELECT 1 FROM recipients r WHERE r.queue_id = m.id AND r.state = ?)",
            (QUEUED,),
        ).fetchall()
        return [r[0] for r in rows]

    # -- attempts and outcomes ------------------------------------------------------------

    def begin_attempt(self, queue_id: str, domain: str, recipient_ids: Sequence[int]) -> int:
        """Record an attempt before it is made (its end is recorded by finish_attempt)."""
        now = time.time()
        with db.Transaction(self.conn) as conn:
            cur = conn.execute(
                "INSERT INTO attempts(queue_id, domain, recipients, started) VALUES(?, ?, ?, ?)",
                (queue_id, domain, ",".join(map(str, recipient_ids)), now),
            )
            conn.executemany(
                "UPDATE recipients SET attempts = attempts + 1, updated = ? WHERE id = ?",
                [(now, rid) for rid in recipient_ids],
            )
            return int(cur.lastrowid or 0)

    def finish_attempt(self, attempt_id: int, outcomes: Sequence[Outcome], detail: str) -> None:
        now = time.time()
        states = sorted({o.state for o in outcomes})
        with db.Transaction(self.conn) as conn:
            conn.execute(
                "UPDATE attempts SET finished = ?, outcome = ?, detail = ? WHERE id = ?",
                (now, ",".join(states), detail[:2000], attempt_id),
            )
            for o in outcomes:
                conn.execute(
                    "UPDATE recipients SET state = ?, last_reply = ?, remote_mta = ?,"
                    " next_attempt = ?, dsn = COALESCE(?, dsn), warned = MAX(warned, ?),"
                    " updated = ? WHERE id = ?",
                    (
                        o.state,
                        o.reply[:2000],
                        o.remote_mta,
                        o.next_attempt,
                        o.dsn,
                        int(o.warned),
                        now,
                        o.recipient_id,
                    ),
                )

    def close_interrupted_attempts(self) -> int:
        """After a crash: attempts that never finished (their recipients are still queued)."""
        with db.Transaction(self.conn) as conn:
            cur = conn.execute(
                "UPDATE attempts SET finished = ?, outcome = 'interrupted' WHERE finished IS NULL",
                (time.time(),),
            )
            return cur.rowcount

    def clear_dsn(self, recipient_ids: Sequence[int]) -> None:
        with db.Transaction(self.conn) as conn:
            conn.executemany(
                "UPDATE recipients SET dsn = NULL WHERE id = ?", [(rid,) for rid in recipient_ids]
            )

    def flush(self, queue_id: str | None = None) -> int:
        """Make queued recipients (of one message, or all) due now; returns how many."""
        now = time.time()
        with db.Transaction(self.conn) as conn:
            if queue_id is None:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt = ? WHERE state = ?", (now, QUEUED)
                )
            else:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt = ? WHERE state = ? AND queue_id = ?",
                    (now, QUEUED, queue_id),
                )
            return cur.rowcount

    def delete(self, queue_id: str) -> bool:
        """Remove a message and its state (no DSN); True if it existed."""
        if not is_queue_id(queue_id):
            return False
        with db.Transaction(self.conn) as conn:
            cur = conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
            existed = cur.rowcount > 0
        self.message_path(queue_id).unlink(missing_ok=True)
        return existed

    def retire_if_done(self, queue_id: str) -> bool:
        """Delete a message once no recipient is queued and no DSN is pending."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM recipients WHERE queue_id = ? AND (state = ? OR dsn IS NOT NULL)",
            (queue_id, QUEUED),
        ).fetchone()
        if row[0]:
            return False
        return self.delete(queue_id)

    # -- MTA-STS policy cache -------------------------------------------------------------

    def sts_get(self, domain: str) -> tuple[str, str, float, float] | None:
        row = self.conn.execute(
            "SELECT policy_id, policy, fetched, expires FROM sts_policies WHERE domain = ?",
            (domain,),
        ).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else None

    def sts_put(self, domain: str, policy_id: str, policy: str, expires: float) -> None:
        with db.Transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO sts_policies(domain, policy_id, policy, fetched, expires)"
                " VALUES(?, ?, ?, ?, ?) ON CONFLICT(domain) DO UPDATE SET"
                " policy_id = excluded.policy_id, policy = excluded.policy,"
                " fetched = excluded.fetched, expires = excluded.expires",
                (domain, policy_id, policy, time.time(), expires),
            )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _append_file(fd: int, path: Path) -> int:
    total = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            _write_all(fd, chunk)
            total += len(chunk)
    return total


def _has_8bit(path: Path) -> bool:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if not chunk.isascii():
                return True
    return False


def message_of_row(row: Mapping[str, Any]) -> Message:
    return Message(
        id=row["id"],
        sender=row["sender"],
        envid=row["envid"],
        ret=row["ret"],
        created=row["created"],
        size=row["size"],
        eightbit=bool(row["eightbit"]),
        smtputf8=bool(row["smtputf8"]),
    )


def recipient_of_row(row: Mapping[str, Any]) -> Recipient:
    return Recipient(
        id=row["id"],
        queue_id=row["queue_id"],
        address=row["address"],
        domain=row["domain"],
        notify=frozenset(filter(None, row["notify"].split(","))),
        orcpt=row["orcpt"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        last_reply=row["last_reply"],
        remote_mta=row["remote_mta"],
        dsn=row["dsn"],
        warned=bool(row["warned"]),
        updated=row["updated"],
    )


def open_store(settings: Settings, *, readonly: bool = False) -> QueueStoreBase | None:
    """The queue store ``settings`` name; None when ``readonly`` and there is no queue yet
    (nothing was ever queued, so a reader has nothing to show)."""
    if settings.store.backend == "postgresql":
        from pillarbox.queue.pgstore import PgQueueStore

        return PgQueueStore.open(settings, readonly=readonly)
    if readonly and not (settings.queue_dir / "queue.db").exists():
        return None
    return QueueStore(settings.queue_dir, readonly=readonly)

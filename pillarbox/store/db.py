"""SQLite connections and schema migrations.

Each storage component (accounts, mailbox index, queue) owns a list of migration steps and
a version row in ``schema_versions``; ``migrate`` applies the steps that are new, each in its
own transaction, so a database created by an older release upgrades itself on start-up.

Connections use WAL (readers never block the writer, and the CLI can read while the server
writes) and ``synchronous=FULL`` where a commit is a promise to a client (the queue and the
mailbox index both answer only after commit).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Migration = str | Callable[[sqlite3.Connection], None]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` with the pragmas every Pillarbox database uses."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            timeout=10,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Holds password hashes: create it private before SQLite opens it.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection, component: str, steps: Sequence[Migration]) -> int:
    """Apply the not yet applied ``steps`` of ``component``; returns the new version.

    Steps are append-only: never edit a released step, add a new one.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = conn.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (component,)
    ).fetchone()
    current = row[0] if row else 0
    if current > len(steps):
        raise RuntimeError(
            f"database schema for {component} is version {current}, newer than this "
            f"release knows ({len(steps)}); upgrade Pillarbox"
        )
    for version, step in enumerate(steps[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if callable(step):
                step(conn)
            else:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_versions(component, version) VALUES(?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(steps)


class Transaction:
    """``with Transaction(conn):`` runs the block in BEGIN IMMEDIATE ... COMMIT/ROLLBACK.

    Inside another transaction it is a savepoint (released, or rolled back to on an
    exception), so work made of several transactions can be committed as one: one WAL
    commit instead of several (the index's delivery path does that, see
    ``store.writes``)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._nested = False

    def __enter__(self) -> sqlite3.Connection:
        self._nested = self.conn.in_transaction
        self.conn.execute("SAVEPOINT nested" if self._nested else "BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._nested:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return
        if exc_type is not None:
            self.conn.execute("ROLLBACK TO nested")
        self.conn.execute("RELEASE nested")


def keyed_chunks(
    conn: sqlite3.Connection, table: str, columns: str, chunk: int
) -> Iterator[list[sqlite3.Row]]:
    """Every row of a mailbox index table keyed ``(mailbox_id, uid)``, ``chunk`` rows at a
    time in key order, for a migration that rewrites them all: each chunk is one range read
    of the primary key (``(mailbox_id, uid) > (?, ?)`` would scan the table every time).
    ``columns`` are the SELECT list and start with ``uid``."""
    boxes = [row[0] for row in conn.execute(f"SELECT DISTINCT mailbox_id FROM {table}")]
    for mailbox_id in boxes:
        after = 0
        while True:
            rows = conn.execute(
                f"SELECT {columns} FROM {table} WHERE mailbox_id = ? AND uid > ?"
                " ORDER BY uid LIMIT ?",
                (mailbox_id, after, chunk),
            ).fetchall()
            if not rows:
                break
            yield rows
            after = rows[-1][0]

"""Users' Sieve scripts and vacation memory in PostgreSQL, shared by several nodes
(``[store] backend = "postgresql"``): a script stored through ManageSieve on one node
files the mail any node delivers.

Same interface and rules as ``sieve_scripts.SieveScripts`` (``SieveStore``); what
sharing changes:

- **Writes of one user are serialised across nodes** by a transaction-scoped advisory
  lock on the user, so the script limits (``MAX_SCRIPTS``) hold when two nodes store at
  once, and a replaced script (``put``: delete and insert, a new id, the version delivery
  caches its parse under) never collides with a second ``put`` of the same name.
- **``has_active`` stays off the network.** Delivery asks it on the event loop for every
  local recipient (most users have no script, and then cost no thread hop). A query to
  another machine there would stall the loop, so the set of users with an active script
  is held in memory, replaced whole, like ``PgAccounts``' snapshot: every change of it
  (``set_active``, ``delete_user``) commits with ``NOTIFY pillarbox_sieve``, and a
  server's store (``follow=True``) reloads on each notification, so an activation on one
  node reaches the others within milliseconds. The script itself (``active_script``,
  read in delivery's thread) always comes from the database.
- **Vacation memory** (RFC 5230 §4.2) is one UPSERT that only overwrites an expired
  record, so two nodes delivering to one user at once send one reply.
- **Scripts a node kept in SQLite** (an install that ran on PostgreSQL before the
  scripts moved there) are imported once, at the first open (``postgres.import_once``),
  without replacing a script of the same name already in the database.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from pillarbox import postgres as pg
from pillarbox.config import Settings
from pillarbox.store import db
from pillarbox.store.sieve_scripts import (
    StoredScript,
    active_not_deletable,
    name_taken,
    no_such_script,
    normalize_name,
    quota_error,
)

COMPONENT = "sieve"
CHANNEL = "pillarbox_sieve"
_LOCK_NAMESPACE = 0x51E5E  # advisory locks on a user's scripts: (this, hashtext(user))

MIGRATIONS = [
    """
    CREATE TABLE sieve_scripts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_address text NOT NULL,
        name text NOT NULL,
        text text NOT NULL,
        active boolean NOT NULL DEFAULT false,
        modified double precision NOT NULL,
        UNIQUE (user_address, name)
    );
    CREATE UNIQUE INDEX sieve_scripts_one_active ON sieve_scripts(user_address) WHERE active;
    CREATE TABLE sieve_vacation (
        user_address text NOT NULL,
        sender text NOT NULL,
        handle text NOT NULL,
        until double precision NOT NULL,
        PRIMARY KEY (user_address, sender, handle)
    );
    CREATE INDEX sieve_vacation_until ON sieve_vacation(until);
    """,
]


def sqlite_source(settings: Settings) -> str:
    """The name ``postgres.import_once`` records for this node's SQLite scripts."""
    return f"sieve:{settings.database_path.resolve()}"


def import_sqlite(conn: pg.Connection, path: Path) -> str:
    """Copy the scripts and vacation memory of the SQLite file at ``path`` in, keeping
    what the database has (``ON CONFLICT DO NOTHING`` also keeps its active script)."""
    source = db.connect(path, readonly=True)
    try:
        if source_table_missing(source, "sieve_scripts"):
            return "no scripts"
        scripts = source.execute(
            "SELECT user, name, text, active, modified FROM sieve_scripts ORDER BY id"
        ).fetchall()
        vacation = source.execute(
            "SELECT user, sender, handle, until FROM sieve_vacation"
        ).fetchall()
    finally:
        source.close()
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sieve_scripts(user_address, name, text, active, modified)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(r["user"], r["name"], r["text"], bool(r["active"]), r["modified"]) for r in scripts],
        )
        cur.executemany(
            "INSERT INTO sieve_vacation VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [tuple(r) for r in vacation],
        )
    return f"{len(scripts)} scripts, {len(vacation)} vacation records"


def source_table_missing(conn: sqlite3.Connection, table: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return found is None


def delete_user_rows(conn: pg.Connection, user: str) -> None:
    """Every script and vacation record of ``user``, in the caller's transaction (the
    accounts delete a user's filters with the user; see Accounts.delete_user)."""
    conn.execute("DELETE FROM sieve_scripts WHERE user_address = %s", (user,))
    conn.execute("DELETE FROM sieve_vacation WHERE user_address = %s", (user,))
    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


class PgSieveScripts:
    """See the module docstring."""

    def __init__(self, settings: Settings, *, follow: bool = False) -> None:
        self.pool = pg.open_pool(settings.store.dsn, name=COMPONENT, size=settings.store.pool_size)
        try:
            with self.pool.connection() as conn:
                pg.migrate(conn, COMPONENT, MIGRATIONS)
                path = settings.database_path
                if path.exists():
                    source = sqlite_source(settings)
                    pg.import_once(conn, source, lambda c: import_sqlite(c, path))
            self._active_users = self._load_active_users()
        except BaseException:
            self.pool.close()
            raise
        self._follower = (
            pg.Follower(settings.store.dsn, CHANNEL, self.reload_active) if follow else None
        )

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        self.pool.close()

    # -- the in-memory set of users with an active script ---------------------------------

    def _load_active_users(self) -> frozenset[str]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT user_address FROM sieve_scripts WHERE active").fetchall()
        return frozenset(r["user_address"] for r in rows)

    def reload_active(self) -> None:
        """Read the set again (a notification came, or the control socket's
        ``sieve.changed``: harmless beside the notifications, which carry the same)."""
        self._active_users = self._load_active_users()

    def has_active(self, user: str) -> bool:
        """Whether ``user`` has an active script, from memory (see the module docstring)."""
        return user in self._active_users

    @contextlib.contextmanager
    def _writing(self, user: str, *, notify: bool = False) -> Iterator[pg.Connection]:
        """A write transaction holding ``user``'s lock; ``notify``: it may change who has
        an active script, so every node is told (on commit) and this one reloads."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                pg.advisory_lock(conn, _LOCK_NAMESPACE, user)
                yield conn
                if notify:
                    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        finally:
            if notify:
                self.reload_active()

    # -- scripts --------------------------------------------------------------------------

    def list(self, user: str) -> list[tuple[str, bool]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, active FROM sieve_scripts WHERE user_address = %s"
                ' ORDER BY name COLLATE "C"',
                (user,),
            ).fetchall()
        return [(r["name"], bool(r["active"])) for r in rows]

    def get(self, user: str, name: str) -> str | None:
        name = normalize_name(name)
        with self.pool.connection() as conn:
            value = pg.scalar(
                conn,
                "SELECT text FROM sieve_scripts WHERE user_address = %s AND name = %s",
                (user, name),
            )
        return None if value is None else str(value)

    def put(self, user: str, name: str, text: str) -> None:
        name = normalize_name(name)
        with self._writing(user) as conn:
            self._check_space(conn, user, name, len(text.encode("utf-8")))
            old = conn.execute(
                "DELETE FROM sieve_scripts WHERE user_address = %s AND name = %s RETURNING active",
                (user, name),
            ).fetchone()
            conn.execute(
                "INSERT INTO sieve_scripts(user_address, name, text, active, modified)"
                " VALUES (%s, %s, %s, %s, %s)",
                (user, name, text, bool(old and old["active"]), time.time()),
            )

    def delete(self, user: str, name: str) -> None:
        name = normalize_name(name)
        with self._writing(user) as conn:
            script_id, active = self._row(conn, user, name)
            if active:
                raise active_not_deletable(name)
            conn.execute("DELETE FROM sieve_scripts WHERE id = %s", (script_id,))

    def rename(self, user: str, old: str, new: str) -> None:
        old, new = normalize_name(old), normalize_name(new)
        with self._writing(user) as conn:
            script_id, _ = self._row(conn, user, old)
            if old == new:
                return
            if self._find(conn, user, new) is not None:
                raise name_taken(new)
            conn.execute("UPDATE sieve_scripts SET name = %s WHERE id = %s", (new, script_id))

    def set_active(self, user: str, name: str | None) -> None:
        with self._writing(user, notify=True) as conn:
            target = None if name is None else self._row(conn, user, normalize_name(name))
            conn.execute(
                "UPDATE sieve_scripts SET active = false WHERE user_address = %s AND active",
                (user,),
            )
            if target is not None:
                conn.execute("UPDATE sieve_scripts SET active = true WHERE id = %s", (target[0],))

    def active(self, user: str) -> tuple[str, str] | None:
        script = self.active_script(user)
        return None if script is None else (script.name, script.text)

    def active_script(self, user: str) -> StoredScript | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, name, text FROM sieve_scripts WHERE user_address = %s AND active",
                (user,),
            ).fetchone()
        return None if row is None else StoredScript(row["name"], row["text"], int(row["id"]))

    def space_used(self, user: str) -> int:
        with self.pool.connection() as conn:
            return self._space_used(conn, user)

    def check_space(self, user: str, name: str, size: int) -> None:
        name = normalize_name(name)
        with self.pool.connection() as conn:
            self._check_space(conn, user, name, size)

    def delete_user(self, user: str) -> None:
        with self._writing(user, notify=True) as conn:
            delete_user_rows(conn, user)

    # -- vacation memory (RFC 5230 §4.2) -------------------------------------------------

    def vacation_due(self, user: str, sender: str, handle: str, days_seconds: float) -> bool:
        """Whether a reply to ``sender`` is due; if so, records it as sent now. One
        statement: a record is only overwritten once expired, so of two nodes delivering
        at once exactly one gets the row back."""
        now = time.time()
        with self.pool.connection() as conn, conn.transaction():
            due = conn.execute(
                "INSERT INTO sieve_vacation(user_address, sender, handle, until)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (user_address, sender, handle)"
                " DO UPDATE SET until = excluded.until WHERE sieve_vacation.until <= %s"
                " RETURNING 1",
                (user, sender.lower(), handle, now + days_seconds, now),
            ).fetchone()
            # Expired rows are of no use; drop them here rather than in a timer.
            conn.execute("DELETE FROM sieve_vacation WHERE until <= %s", (now,))
        return due is not None

    # -- helpers (inside the caller's connection) ----------------------------------------

    @staticmethod
    def _find(conn: pg.Connection, user: str, name: str) -> tuple[int, bool] | None:
        row = conn.execute(
            "SELECT id, active FROM sieve_scripts WHERE user_address = %s AND name = %s",
            (user, name),
        ).fetchone()
        return None if row is None else (int(row["id"]), bool(row["active"]))

    def _row(self, conn: pg.Connection, user: str, name: str) -> tuple[int, bool]:
        found = self._find(conn, user, name)
        if found is None:
            raise no_such_script(name)
        return found

    @staticmethod
    def _space_used(conn: pg.Connection, user: str) -> int:
        value = pg.scalar(
            conn,
            "SELECT coalesce(sum(octet_length(text)), 0) FROM sieve_scripts"
            " WHERE user_address = %s",
            (user,),
        )
        return int(value)

    def _check_space(self, conn: pg.Connection, user: str, name: str, size: int) -> None:
        count = pg.scalar(
            conn, "SELECT count(*) FROM sieve_scripts WHERE user_address = %s", (user,)
        )
        error = quota_error(int(count), self._find(conn, user, name) is not None, size)
        if error is not None:
            raise error

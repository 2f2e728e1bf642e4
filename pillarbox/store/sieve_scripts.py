"""Users' Sieve scripts, and the vacation replies already sent (RFC 5230 §4.2).

Kept in the accounts database (``pillarbox.db``, ``Settings.database_path``) as two tables
of the "sieve" schema component (``store/db.py`` migrations), so a backup of the accounts
carries the filters with them and the CLI, ManageSieve and delivery share one truth.

Interface (``SieveStore``; synchronous and thread-safe; callers on the event loop run it
in a thread like every other store call):

- ``open_sieve_scripts(settings, follow=...)`` picks the store ``[store] backend`` names:
  ``SieveScripts(db_path)`` here (one connection, one lock), or ``PgSieveScripts``
  (``store/pgsieve.py``) in PostgreSQL, shared by every node; ``close()``.
- ``list(user) -> list[tuple[str, bool]]``: (name, active), sorted by name.
- ``get(user, name) -> str | None``.
- ``put(user, name, text)``: create or replace. Callers run ``pillarbox.sieve.check``
  first; this layer stores text, it does not judge it.
- ``delete(user, name)``, ``rename(user, old, new)`` (the active mark moves with it),
  ``set_active(user, name)`` or ``set_active(user, None)`` (no script active).
- ``active(user) -> tuple[str, str] | None``: (name, text) of the active script;
  ``active_script(user) -> StoredScript | None`` adds the version, a number that changes
  whenever the script's text does (delivery caches the parsed script by it).
- ``has_active(user) -> bool``: from memory, for the event loop (delivery asks it for
  every local recipient): the set of users with an active script, loaded at open and
  again after this store's own writes that change it (``set_active``, ``delete_user``).
  Another process's writes (the CLI's ``pillarbox sieve``, ``Accounts.delete_user``)
  reach a running server through ``reload_active()``, which the control socket's
  ``sieve.changed`` (and ``accounts.changed``) call; PostgreSQL nodes also hear each
  other's (``pgsieve.py``).
- ``space_used(user) -> int`` (bytes of UTF-8 over all scripts), ``check_space(user, name,
  size)`` (RFC 5804 HAVESPACE: raises QUOTA if a script of ``size`` bytes would not fit).
- Errors: ``SieveScriptError(code, text)``, ``code`` one of the RFC 5804 §1.3 response
  codes "NONEXISTENT", "ALREADYEXISTS", "ACTIVE", "QUOTA" (``subcode`` then says
  "MAXSCRIPTS" or "MAXSIZE", RFC 5804 §1.3's QUOTA/...), or None for a bad script name.

Users are the canonical address string under which ``Accounts`` keeps them
(``users.address``, as ``Resolution.local_users`` and the authenticator return it).

Limits: a script is at most ``MAX_SCRIPT_BYTES``, a user has at most ``MAX_SCRIPTS``, and
script names follow RFC 5804 §1.6 (1 to ``MAX_NAME_CHARS`` characters of Net-Unicode: no
control characters, no U+2028/U+2029; stored NFC-normalised).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pillarbox.config import Settings
from pillarbox.store.db import Transaction, connect, migrate

MAX_SCRIPT_BYTES = 64 * 1024
MAX_SCRIPTS = 16
MAX_NAME_CHARS = 128

MIGRATIONS = [
    # ``id`` is AUTOINCREMENT so a number is never reused: a script replaced by ``put`` gets
    # a new id, which is the version delivery caches its parse under.
    """
    CREATE TABLE sieve_scripts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        text TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        modified REAL NOT NULL,
        UNIQUE (user, name)
    );
    CREATE UNIQUE INDEX sieve_scripts_one_active ON sieve_scripts(user) WHERE active = 1;
    CREATE TABLE sieve_vacation (
        user TEXT NOT NULL,
        sender TEXT NOT NULL,
        handle TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (user, sender, handle)
    )
    """,
]


class SieveScriptError(Exception):
    """A refused script operation, with its RFC 5804 response code."""

    def __init__(self, code: str | None, text: str, subcode: str | None = None):
        super().__init__(text)
        self.code = code
        self.subcode = subcode
        self.text = text


@dataclass(frozen=True, slots=True)
class StoredScript:
    name: str
    text: str
    version: int


def normalize_name(name: str) -> str:
    """The stored form of a script name, or SieveScriptError(None, ...) (RFC 5804 §1.6)."""
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise SieveScriptError(None, "a script name cannot be empty")
    if len(name) > MAX_NAME_CHARS:
        raise SieveScriptError(None, f"a script name has at most {MAX_NAME_CHARS} characters")
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            raise SieveScriptError(None, f"a script name cannot contain U+{code:04X}")
    return name


class SieveStore(Protocol):
    """The scripts and vacation memory, whichever database holds them (see the module
    docstring for the semantics every implementation keeps)."""

    def close(self) -> None: ...
    def has_active(self, user: str) -> bool: ...
    def reload_active(self) -> None: ...
    def list(self, user: str) -> list[tuple[str, bool]]: ...
    def get(self, user: str, name: str) -> str | None: ...
    def put(self, user: str, name: str, text: str) -> None: ...
    def delete(self, user: str, name: str) -> None: ...
    def rename(self, user: str, old: str, new: str) -> None: ...
    def set_active(self, user: str, name: str | None) -> None: ...
    def active(self, user: str) -> tuple[str, str] | None: ...
    def active_script(self, user: str) -> StoredScript | None: ...
    def space_used(self, user: str) -> int: ...
    def check_space(self, user: str, name: str, size: int) -> None: ...
    def delete_user(self, user: str) -> None: ...
    def vacation_due(self, user: str, sender: str, handle: str, days_seconds: float) -> bool: ...


def open_sieve_scripts(settings: Settings, *, follow: bool = False) -> SieveStore:
    """The script store ``[store] backend`` names. ``follow``: a long-lived server's,
    which, on PostgreSQL, keeps up with other nodes' activations (see pgsieve.py)."""
    if settings.store.backend == "postgresql":
        from pillarbox.store.pgsieve import PgSieveScripts

        return PgSieveScripts(settings, follow=follow)
    return SieveScripts(settings.database_path)


def quota_error(user_scripts: int, replacing: bool, size: int) -> SieveScriptError | None:
    """The QUOTA refusal for storing a script of ``size`` bytes for a user who has
    ``user_scripts`` scripts (``replacing``: one of them has this name), or None."""
    if size > MAX_SCRIPT_BYTES:
        return SieveScriptError(
            "QUOTA", f"a script is at most {MAX_SCRIPT_BYTES} bytes (this one: {size})", "MAXSIZE"
        )
    if not replacing and user_scripts >= MAX_SCRIPTS:
        return SieveScriptError(
            "QUOTA", f"a user has at most {MAX_SCRIPTS} scripts; delete one first", "MAXSCRIPTS"
        )
    return None


def no_such_script(name: str) -> SieveScriptError:
    return SieveScriptError("NONEXISTENT", f'there is no script named "{name}"')


def active_not_deletable(name: str) -> SieveScriptError:
    # RFC 5804 §2.10: the active script cannot be deleted.
    return SieveScriptError("ACTIVE", f'"{name}" is the active script; deactivate it first')


def name_taken(name: str) -> SieveScriptError:
    return SieveScriptError("ALREADYEXISTS", f'a script named "{name}" exists')


class SieveScripts:
    """The scripts and vacation memory over the accounts database."""

    def __init__(self, db_path: Path):
        self.conn = connect(db_path)
        self.lock = threading.Lock()
        migrate(self.conn, "sieve", MIGRATIONS)
        self._active_users = self._load_active_users()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- the in-memory set of users with an active script ---------------------------------

    def _load_active_users(self) -> frozenset[str]:
        """Called with the lock held (or before the store is shared)."""
        rows = self.conn.execute("SELECT user FROM sieve_scripts WHERE active = 1").fetchall()
        return frozenset(row["user"] for row in rows)

    def has_active(self, user: str) -> bool:
        """Whether ``user`` has an active script, from memory (see the module docstring):
        a query per message was a tenth of the main process's event loop under load."""
        return user in self._active_users

    def reload_active(self) -> None:
        """Read the set again: another process changed the scripts (blocking)."""
        with self.lock:
            self._active_users = self._load_active_users()

    # -- scripts ---------------------------------------------------------------------

    def list(self, user: str) -> list[tuple[str, bool]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT name, active FROM sieve_scripts WHERE user = ? ORDER BY name", (user,)
            ).fetchall()
        return [(row["name"], bool(row["active"])) for row in rows]

    def get(self, user: str, name: str) -> str | None:
        name = normalize_name(name)
        with self.lock:
            row = self.conn.execute(
                "SELECT text FROM sieve_scripts WHERE user = ? AND name = ?", (user, name)
            ).fetchone()
        return None if row is None else str(row["text"])

    def put(self, user: str, name: str, text: str) -> None:
        name = normalize_name(name)
        with self.lock, Transaction(self.conn) as c:
            self._check_space(c, user, name, len(text.encode("utf-8")))
            old = c.execute(
                "SELECT active FROM sieve_scripts WHERE user = ? AND name = ?", (user, name)
            ).fetchone()
            c.execute("DELETE FROM sieve_scripts WHERE user = ? AND name = ?", (user, name))
            c.execute(
                "INSERT INTO sieve_scripts(user, name, text, active, modified) "
                "VALUES(?, ?, ?, ?, ?)",
                (user, name, text, old["active"] if old else 0, time.time()),
            )

    def delete(self, user: str, name: str) -> None:
        name = normalize_name(name)
        with self.lock, Transaction(self.conn) as c:
            row = self._row(c, user, name)
            if row["active"]:
                raise active_not_deletable(name)
            c.execute("DELETE FROM sieve_scripts WHERE id = ?", (row["id"],))

    def rename(self, user: str, old: str, new: str) -> None:
        old, new = normalize_name(old), normalize_name(new)
        with self.lock, Transaction(self.conn) as c:
            row = self._row(c, user, old)
            if old == new:
                return
            if self._find(c, user, new) is not None:
                raise name_taken(new)
            c.execute("UPDATE sieve_scripts SET name = ? WHERE id = ?", (new, row["id"]))

    def set_active(self, user: str, name: str | None) -> None:
        with self.lock:
            with Transaction(self.conn) as c:
                target = None if name is None else self._row(c, user, normalize_name(name))
                c.execute(
                    "UPDATE sieve_scripts SET active = 0 WHERE user = ? AND active = 1", (user,)
                )
                if target is not None:
                    c.execute("UPDATE sieve_scripts SET active = 1 WHERE id = ?", (target["id"],))
            # After the commit, before returning: the next message sees the change.
            self._active_users = self._load_active_users()

    def active(self, user: str) -> tuple[str, str] | None:
        script = self.active_script(user)
        return None if script is None else (script.name, script.text)

    def active_script(self, user: str) -> StoredScript | None:
        with self.lock:
            row = self.conn.execute(
                "SELECT id, name, text FROM sieve_scripts WHERE user = ? AND active = 1", (user,)
            ).fetchone()
        return None if row is None else StoredScript(row["name"], row["text"], row["id"])

    def space_used(self, user: str) -> int:
        with self.lock:
            return self._space_used(self.conn, user)

    def check_space(self, user: str, name: str, size: int) -> None:
        name = normalize_name(name)
        with self.lock:
            self._check_space(self.conn, user, name, size)

    def delete_user(self, user: str) -> None:
        """Forget every script and vacation record of ``user`` (the user is deleted)."""
        with self.lock:
            with Transaction(self.conn) as c:
                c.execute("DELETE FROM sieve_scripts WHERE user = ?", (user,))
                c.execute("DELETE FROM sieve_vacation WHERE user = ?", (user,))
            self._active_users = self._load_active_users()

    # -- vacation memory (RFC 5230 §4.2: one reply per sender and handle per :days) ----

    def vacation_due(self, user: str, sender: str, handle: str, days_seconds: float) -> bool:
        """Whether a reply to ``sender`` is due; if so, records it as sent now.

        Test and record are one transaction, so two deliveries at once send one reply.
        """
        now = time.time()
        sender = sender.lower()
        with self.lock, Transaction(self.conn) as c:
            row = c.execute(
                "SELECT until FROM sieve_vacation WHERE user = ? AND sender = ? AND handle = ?",
                (user, sender, handle),
            ).fetchone()
            if row is not None and row["until"] > now:
                return False
            c.execute(
                "INSERT INTO sieve_vacation(user, sender, handle, until) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(user, sender, handle) DO UPDATE SET until = excluded.until",
                (user, sender, handle, now + days_seconds),
            )
            # Expired rows are of no use; drop them here rather than in a timer.
            c.execute("DELETE FROM sieve_vacation WHERE until <= ?", (now,))
            return True

    # -- helpers (called with the lock held) -----------------------------------------

    @staticmethod
    def _find(c: sqlite3.Connection, user: str, name: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = c.execute(
            "SELECT id, active FROM sieve_scripts WHERE user = ? AND name = ?", (user, name)
        ).fetchone()
        return row

    def _row(self, c: sqlite3.Connection, user: str, name: str) -> sqlite3.Row:
        row = self._find(c, user, name)
        if row is None:
            raise no_such_script(name)
        return row

    @staticmethod
    def _space_used(c: sqlite3.Connection, user: str) -> int:
        row = c.execute(
            "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM sieve_scripts WHERE user = ?",
            (user,),
        ).fetchone()
        return int(row[0])

    def _check_space(self, c: sqlite3.Connection, user: str, name: str, size: int) -> None:
        count = c.execute("SELECT count(*) FROM sieve_scripts WHERE user = ?", (user,)).fetchone()
        error = quota_error(count[0], self._find(c, user, name) is not None, size)
        if error is not None:
            raise error

"""PostgreSQL connections and versioned schema migrations: db.py's counterpart for
``[store] backend = "postgresql"``.

Only the PostgreSQL stores import this module, so an SQLite install never loads the
driver. The stores keep the blocking interface of their SQLite siblings (they are called
from worker threads and from the CLI), so they use psycopg's synchronous API with a
``psycopg_pool.ConnectionPool``: connections are checked before use, so a database
restart costs a reconnection, not a failed call.

Migrations mirror db.py's: each component (``queue``, ``accounts``) owns an append-only
list of steps and a row in ``pillarbox_schema``. Several nodes may start at once, so
``migrate`` runs under a transaction-scoped advisory lock, and since PostgreSQL's DDL is
transactional, a node sees either no new step or all of them.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from pillarbox import log
from pillarbox.config import ConfigError, Settings

_log = log.get("store")

Connection = psycopg.Connection[DictRow]
Pool = ConnectionPool[Connection]

# The database's clock in Unix seconds, for leases: the nodes' clocks may disagree, the
# database has one. (clock_timestamp, not now(): now() is frozen at the transaction start.)
DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"

CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout for the first connection
# How long a listener waits between reconnection attempts when the database is away.
RECONNECT_DELAY = 1.0

# Any fixed key: pg_advisory_xact_lock(bigint) serialises the nodes' migrations.
_MIGRATION_LOCK = 0x70696C6C6172  # "pillar"
_IMPORT_LOCK = 0x1A9047  # advisory_lock's namespace for import_once


def node_name(settings: Settings) -> str:
    """This node's name on what it claims: ``[store] node_id``, else host and process id
    (a restarted node is a new node: its old claims simply expire)."""
    return settings.store.node_id or f"{socket.gethostname()}:{os.getpid()}"


def open_pool(dsn: str, *, name: str, size: int, autocommit: bool = False) -> Pool:
    """A pool of ``size`` connections to ``dsn``. One connection is made first, so a
    wrong or unreachable dsn fails at once with libpq's own message as a config error
    naming ``store.dsn`` (the pool itself would retry for its timeout and then only say
    that it got no connection). ``autocommit``: a statement outside ``transaction()``
    is its own transaction, with no BEGIN and COMMIT round trips around it."""
    try:
        psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # libpq's lines, one line
        raise ConfigError(f"cannot connect to PostgreSQL: {reason}", key="store.dsn") from None
    pool: Pool = ConnectionPool(
        dsn,
        connection_class=psycopg.Connection[DictRow],
        kwargs={
            "row_factory": dict_row,
            "application_name": f"pillarbox-{name}",
            "autocommit": autocommit,
        },
        min_size=1,
        max_size=max(1, size),
        name=name,
        check=ConnectionPool.check_connection,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=30.0)
    except Exception:
        pool.close()
        raise
    return pool


def migrate(conn: Connection, component: str, steps: Sequence[str]) -> int:
    """Apply the not yet applied ``steps`` of ``component``; returns the new version.

    Steps are append-only: never edit a released step, add a new one."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pillarbox_schema ("
            " component text PRIMARY KEY, version integer NOT NULL)"
        )
        current = _version(conn, component)
        if current > len(steps):
            raise RuntimeError(
                f"database schema for {component} is version {current}, newer than this "
                f"release knows ({len(steps)}); upgrade Pillarbox"
            )
        for version, step in enumerate(steps[current:], start=current + 1):
            conn.execute(step)  # several statements, no parameters
            conn.execute(
                "INSERT INTO pillarbox_schema(component, version) VALUES (%s, %s)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
    return len(steps)


# What was imported from SQLite files (``pillarbox store migrate``, and the per-node
# files of an install that ran on PostgreSQL before its Sieve scripts and spam learning
# moved there), so that nothing is imported twice.
IMPORTS_COMPONENT = "imports"
IMPORTS_MIGRATIONS = [
    """
    CREATE TABLE pillarbox_imports (
        source text NOT NULL,
        finished double precision NOT NULL,
        summary text NOT NULL
    );
    CREATE INDEX pillarbox_imports_source ON pillarbox_imports(source);
    """,
]


def imported(conn: Connection, source: str) -> bool:
    """Whether ``source`` was imported before (``record_import``)."""
    return (
        conn.execute("SELECT 1 FROM pillarbox_imports WHERE source = %s", (source,)).fetchone()
        is not None
    )


def record_import(conn: Connection, source: str, summary: str) -> None:
    conn.execute(
        "INSERT INTO pillarbox_imports(source, finished, summary)"
        " VALUES (%s, extract(epoch FROM now()), %s)",
        (source, summary),
    )


def import_once(conn: Connection, source: str, work: Callable[[Connection], str]) -> bool:
    """Run ``work`` (which copies ``source`` in and returns a summary) and record it, in
    one transaction, unless ``source`` was imported before; True if it ran. Under a lock
    on ``source``, so two nodes starting at once import it once."""
    with conn.transaction():
        migrate(conn, IMPORTS_COMPONENT, IMPORTS_MIGRATIONS)
        advisory_lock(conn, _IMPORT_LOCK, source)
        if imported(conn, source):
            return False
        record_import(conn, source, work(conn))
    return True


def schema_version(conn: Connection, component: str) -> int:
    """The applied version of ``component`` (0: never migrated), without changing anything."""
    row = conn.execute("SELECT to_regclass('pillarbox_schema') AS t").fetchone()
    if row is None or row["t"] is None:
        return 0
    return _version(conn, component)


def _version(conn: Connection, component: str) -> int:
    row = conn.execute(
        "SELECT version FROM pillarbox_schema WHERE component = %s", (component,)
    ).fetchone()
    return int(row["version"]) if row else 0


def scalar(conn: Connection, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row (None without rows)."""
    row = conn.execute(query, params).fetchone()
    return next(iter(row.values())) if row else None


def advisory_lock(conn: Connection, namespace: int, key: str) -> None:
    """Serialise this transaction with every other one that locks (namespace, key), on
    any node, until it ends (pg_advisory_xact_lock's two-int form; ``hashtext`` maps the
    key, and a collision only serialises two unrelated keys)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (namespace, key))


class Follower:
    """Calls ``reload`` whenever another node NOTIFYs ``channel``, and after every
    (re)connection (notifications sent while it was away are lost), from a daemon thread
    with a connection of its own. A write's NOTIFY is delivered only if it commits."""

    def __init__(self, dsn: str, channel: str, reload: Callable[[], None]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._reload = reload
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{channel}-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self._reload()  # whatever changed while we were not listening
                    while not self._stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=0.5, stop_after=1)):
                            self._reload()
            except psycopg.Error as exc:
                _log.warning("listener reconnecting", channel=self._channel, error=str(exc))
                self._stopping.wait(RECONNECT_DELAY)


class Listener:
    """Calls ``on_payload(payload)`` for every NOTIFY on ``channel``, from a daemon thread
    with a connection of its own: :class:`Follower` for changes that say what changed
    (the mail index names the user and mailbox), where reloading everything is no answer.
    Notifications sent while it was reconnecting are lost; its users have another way to
    learn of them (IMAP sessions poll while they idle)."""

    def __init__(self, dsn: str, channel: str, on_payload: Callable[[str], None]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_payload = on_payload
        self._stopping = threading.Event()
        self.listening = threading.Event()  # set once LISTEN is in place (tests wait for it)
        self._thread = threading.Thread(target=self._run, name=f"{channel}-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self.listening.set()
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=0.5):
                            self._on_payload(notify.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                _log.warning("listener reconnecting", channel=self._channel, error=str(exc))
                self._stopping.wait(RECONNECT_DELAY)

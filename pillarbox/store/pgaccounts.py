"""The accounts in PostgreSQL, shared by several nodes (``[store] backend = "postgresql"``).

The rules (validation, alias expansion, sub-addressing, send-as) are ``Accounts``'; this
class only stores. Two constraints shaped it:

- **Reads stay off the network.** The SMTP and IMAP code asks the accounts on the event
  loop (``resolve`` at every RCPT, ``may_send_as`` at MAIL), which SQLite answers from
  the page cache in microseconds; a query to another machine would stall the loop. So the
  users, aliases and send-as grants (a personal server has tens, not millions) are held
  as one immutable snapshot in memory, replaced whole. Only ``password_hash`` asks the
  database each time: the authenticator calls it from a worker thread, and a password
  changed on one node must stop working on every node at once.
- **Other nodes' changes arrive by LISTEN/NOTIFY.** Every write commits with
  ``NOTIFY pillarbox_accounts`` in its transaction (PostgreSQL delivers it only if the
  write commits). A server's store (``follow=True``) listens on a connection of its own
  in a daemon thread and reloads its snapshot on each notification, and after every
  reconnection (notifications sent while it was away are lost). A write through this
  object reloads at once, so the CLI and the web admin see their own changes.

Domains stay in the config (each node's), not in the database. Deleting a user deletes its
Sieve scripts (``pgsieve``'s tables, in the same database) in the same transaction, as the
SQLite store does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from pillarbox import log
from pillarbox import postgres as pg
from pillarbox.config import Settings
from pillarbox.core.address import normalize_domain
from pillarbox.store import pgsieve
from pillarbox.store.accounts import AccountError, Accounts, UserInfo

_log = log.get("store")

COMPONENT = "accounts"
CHANNEL = "pillarbox_accounts"

MIGRATIONS = [
    """
    CREATE TABLE account_users (
        address text PRIMARY KEY,
        domain text NOT NULL,
        password_hash text NOT NULL,
        created double precision NOT NULL,
        admin boolean NOT NULL DEFAULT false,
        quota bigint
    );
    CREATE TABLE account_aliases (
        alias text NOT NULL,
        target text NOT NULL,
        PRIMARY KEY (alias, target)
    );
    CREATE INDEX account_aliases_target ON account_aliases(target);
    CREATE TABLE account_send_as (
        user_address text NOT NULL,
        pattern text NOT NULL,
        PRIMARY KEY (user_address, pattern)
    );
    """,
]


@dataclass(frozen=True)
class Snapshot:
    """Everything but the password hashes, as read in one transaction."""

    users: dict[str, UserInfo] = field(default_factory=dict)  # address -> user
    domains: dict[str, str] = field(default_factory=dict)  # address -> its domain
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # alias -> targets
    aliases_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target -> aliases
    send_as: dict[str, tuple[str, ...]] = field(default_factory=dict)  # user -> patterns


class PgAccounts(Accounts):
    """See the module docstring."""

    def __init__(self, settings: Settings, *, follow: bool = False) -> None:
        # Not Accounts.__init__: that opens the SQLite database.
        self._resolved = {}
        self.changed = False
        self.domains = frozenset(normalize_domain(d) for d in settings.domains)
        self._dsn = settings.store.dsn
        self.pool = pg.open_pool(self._dsn, name=COMPONENT, size=settings.store.pool_size)
        try:
            with self.pool.connection() as conn:
                pg.migrate(conn, COMPONENT, MIGRATIONS)
                # The users' Sieve scripts live beside them; delete_user removes them too.
                pg.migrate(conn, pgsieve.COMPONENT, pgsieve.MIGRATIONS)
            self._snapshot = self._load()
        except BaseException:
            self.pool.close()
            raise
        # A server's store keeps up with the other nodes' writes (see the module docstring).
        self._follower = pg.Follower(self._dsn, CHANNEL, self.reload) if follow else None

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        self.pool.close()

    # -- the snapshot -----------------------------------------------------------------

    def _load(self) -> Snapshot:
        with self.pool.connection() as conn:
            users = conn.execute(
                "SELECT address, domain, admin, created, quota FROM account_users"
                " ORDER BY domain, address"
            ).fetchall()
            aliases = conn.execute(
                "SELECT alias, target FROM account_aliases ORDER BY alias, target"
            ).fetchall()
            grants = conn.execute(
                "SELECT user_address, pattern FROM account_send_as ORDER BY user_address, pattern"
            ).fetchall()
        targets: dict[str, list[str]] = {}
        sources: dict[str, list[str]] = {}
        for row in aliases:
            targets.setdefault(row["alias"], []).append(row["target"])
            sources.setdefault(row["target"], []).append(row["alias"])
        send_as: dict[str, list[str]] = {}
        for row in grants:
            send_as.setdefault(row["user_address"], []).append(row["pattern"])
        return Snapshot(
            users={
                r["address"]: UserInfo(r["address"], r["admin"], r["created"], r["quota"])
                for r in users
            },
            domains={r["address"]: r["domain"] for r in users},
            aliases={k: tuple(v) for k, v in targets.items()},
            aliases_of={k: tuple(v) for k, v in sources.items()},
            send_as={k: tuple(v) for k, v in send_as.items()},
        )

    def reload(self) -> None:
        """Read the snapshot again and forget remembered resolutions."""
        self._snapshot = self._load()
        self._resolved.clear()

    def forget_cached(self) -> None:
        """Another process changed the accounts: read them again (blocking: from a thread)."""
        self.reload()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[pg.Connection]:  # type: ignore[override]
        """A write transaction that tells every node (NOTIFY, delivered on commit) and
        reloads this one's snapshot after the commit."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
                conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        finally:
            self.changed = True
            self.reload()

    # -- users ------------------------------------------------------------------------

    def add_user(self, address: str, password_hash: str, *, admin: bool = False) -> str:
        addr = self.parse_local(address)
        try:
            with self._changing() as c:
                c.execute(
                    "INSERT INTO account_users(address, domain, password_hash, created, admin)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (str(addr), addr.domain, password_hash, time.time(), admin),
                )
        except psycopg.errors.UniqueViolation:
            raise AccountError(f"user {addr} already exists") from None
        return str(addr)

    def _update_user(self, address: str, assignment: str, value: object) -> None:
        addr = self.parse_local(address)
        with self._changing() as c:
            count = c.execute(
                f"UPDATE account_users SET {assignment} WHERE address = %s", (value, str(addr))
            ).rowcount
        if count == 0:
            raise AccountError(f"no such user: {addr}")

    def set_password(self, address: str, password_hash: str) -> None:
        self._update_user(address, "password_hash = %s", password_hash)

    def set_admin(self, address: str, admin: bool) -> None:
        self._update_user(address, "admin = %s", admin)

    def set_quota(self, address: str, quota: int | None) -> None:
        if quota is not None and quota < 0:
            raise AccountError("a quota cannot be negative")
        self._update_user(address, "quota = %s", quota)

    def delete_user(self, address: str) -> None:
        addr = str(self.parse_local(address))
        with self._changing() as c:
            count = c.execute("DELETE FROM account_users WHERE address = %s", (addr,)).rowcount
            c.execute("DELETE FROM account_aliases WHERE target = %s", (addr,))
            c.execute("DELETE FROM account_send_as WHERE user_address = %s", (addr,))
            # A user made again under this address must not inherit the old filters (a
            # redirect would send the newcomer's mail to someone else) or vacation memory.
            pgsieve.delete_user_rows(c, addr)
        if count == 0:
            raise AccountError(f"no such user: {addr}")

    def is_admin(self, address: str) -> bool:
        user = self._snapshot.users.get(address)
        return bool(user and user.admin)

    def own_quota(self, address: str) -> int | None:
        user = self._snapshot.users.get(address)
        return None if user is None or user.quota is None else int(user.quota)

    def user_details(self) -> list[UserInfo]:
        return list(self._snapshot.users.values())

    def list_users(self) -> list[str]:
        return list(self._snapshot.users)

    def user_exists(self, address: str) -> bool:
        return address in self._snapshot.users

    def password_hash(self, address: str) -> str | None:
        with self.pool.connection() as conn:
            value = pg.scalar(
                conn, "SELECT password_hash FROM account_users WHERE address = %s", (address,)
            )
        return str(value) if value is not None else None

    def first_user(self, domain: str) -> str | None:
        snapshot = self._snapshot
        ordered = sorted(
            snapshot.users.values(),
            key=lambda u: (snapshot.domains[u.address] != domain, u.created, u.address),
        )
        return ordered[0].address if ordered else None

    # -- aliases and send-as ----------------------------------------------------------

    def _insert_aliases(self, key: str, targets: list[str]) -> None:
        with self._changing() as c, c.cursor() as cur:
            cur.executemany(
                "INSERT INTO account_aliases(alias, target) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(key, t) for t in targets],
            )

    def delete_alias(self, alias: str) -> None:
        key = self._alias_key(alias)
        with self._changing() as c:
            count = c.execute("DELETE FROM account_aliases WHERE alias = %s", (key,)).rowcount
        if count == 0:
            raise AccountError(f"no such alias: {key}")

    def list_aliases(self) -> dict[str, list[str]]:
        return {alias: list(targets) for alias, targets in self._snapshot.aliases.items()}

    def _alias_targets(self, key: str) -> list[str]:
        return list(self._snapshot.aliases.get(key, ()))

    def _aliases_of(self, target: str) -> list[str]:
        return list(self._snapshot.aliases_of.get(target, ()))

    def _insert_send_as(self, user: str, pattern: str) -> None:
        with self._changing() as c:
            c.execute(
                "INSERT INTO account_send_as(user_address, pattern) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (user, pattern),
            )

    def delete_send_as(self, user: str, pattern: str) -> str:
        address = str(self.parse_local(user))
        key = self._send_as_pattern(pattern)
        with self._changing() as c:
            count = c.execute(
                "DELETE FROM account_send_as WHERE user_address = %s AND pattern = %s",
                (address, key),
            ).rowcount
        if count == 0:
            raise AccountError(f"{address} has no send-as grant for {key}")
        return key

    def list_send_as(self, user: str) -> list[str]:
        return list(self._snapshot.send_as.get(user, ()))

"""Accounts: domains, users with argon2id password hashes, and aliases.

The table of record for who receives mail. Recipient resolution (aliases, catch-all,
sub-addressing) and sender ownership (which From addresses a user may use) are answered here
so SMTP, IMAP and the CLI agree on one set of rules.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox.config import Settings
from pillarbox.core.address import (
    Address,
    AddressError,
    is_catch_all,
    normalize_domain,
    parse_address,
)
from pillarbox.store.db import Transaction, connect, migrate
from pillarbox.store.sieve_scripts import MIGRATIONS as SIEVE_MIGRATIONS

MIGRATIONS = [
    """
    CREATE TABLE domains (name TEXT PRIMARY KEY);
    CREATE TABLE users (
        address TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE aliases (
        alias TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (alias, target)
    );
    CREATE INDEX aliases_target ON aliases(target)
    """,
    # Send-as grants: the addresses a user may put in From beyond the ones it owns. A
    # pattern is one address or ``@domain`` (any address there).
    """
    CREATE TABLE send_as (
        user TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (user, pattern)
    )
    """,
]

# The admin flag (the web admin's /admin/ pages) has a migration line of its own, so a
# column that another feature adds to ``users`` in parallel (quota) never renumbers it:
# each line's version row in ``schema_versions`` counts only its own steps.
ADMIN_MIGRATIONS = [
    "ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0",
]
# The storage quota (RFC 9208 STORAGE, in bytes), its own migration line for the same
# reason: NULL = the configured default (``[store] quota``), 0 = no limit.
QUOTA_MIGRATIONS = [
    "ALTER TABLE users ADD COLUMN quota INTEGER",
]

# Alias chains deeper than this are a loop or a mistake; Postfix stops at 1000 expansions.
MAX_ALIAS_DEPTH = 10
# How long a found recipient is remembered (see Accounts.resolve), and how many.
RESOLUTION_CACHE_SECONDS = 5.0
RESOLUTION_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class UserInfo:
    """One user as the admin sees it (``user list``, the web admin)."""

    address: str
    admin: bool
    created: float
    quota: int | None = None  # the user's own quota in bytes (0: none); None: the default


class AccountError(Exception):
    """A user-facing error about accounts (unknown user, duplicate, bad address)."""


@dataclass(frozen=True)
class Resolution:
    """Where mail for one envelope recipient goes."""

    local_users: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.local_users or self.remote)


@dataclass
class _Expansion:
    local: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


class Accounts:
    """The accounts store over one SQLite database (thread-safe: one lock-free connection
    per call site is not needed because sqlite3 serialises on the connection)."""

    def __init__(self, db_path: Path, domains: Iterable[str]):
        self.conn: sqlite3.Connection = connect(db_path)
        self._resolved: dict[tuple[str, str], tuple[float, Resolution]] = {}
        self._quotas: dict[str, tuple[float, int | None]] = {}  # as _resolved, for own_quota
        # Whether this object wrote anything (the CLI then tells a running server).
        self.changed = False
        migrate(self.conn, "accounts", MIGRATIONS)
        migrate(self.conn, "accounts.admin", ADMIN_MIGRATIONS)
        migrate(self.conn, "accounts.quota", QUOTA_MIGRATIONS)
        # The users' Sieve scripts live beside them; delete_user removes them too.
        migrate(self.conn, "sieve", SIEVE_MIGRATIONS)
        self.domains = frozenset(normalize_domain(d) for d in domains)
        self._sync_domains()

    def close(self) -> None:
        self.conn.close()

    def _sync_domains(self) -> None:
        # The configured domains, recorded at every open: not an account change.
        with Transaction(self.conn) as c:
            c.execute("DELETE FROM domains")
            c.executemany("INSERT INTO domains(name) VALUES(?)", [(d,) for d in self.domains])

    # -- validation ------------------------------------------------------------------

    def parse_local(self, text: str) -> Address:
        """Parse an address that must belong to one of our domains."""
        try:
            address = parse_address(text)
        except AddressError as exc:
            raise AccountError(str(exc)) from None
        if address.domain not in self.domains:
            raise AccountError(
                f"{address.domain} is not one of this server's domains "
                f"({', '.join(sorted(self.domains))}); add it to `domains` in the config"
            )
        return address

    def is_local_domain(self, domain: str) -> bool:
        try:
            return normalize_domain(domain) in self.domains
        except AddressError:
            return False

    # -- users -----------------------------------------------------------------------

    def add_user(self, address: str, password_hash: str, *, admin: bool = False) -> str:
        addr = self.parse_local(address)
        try:
            with self._changing() as c:
                c.execute(
                    "INSERT INTO users(address, domain, password_hash, created, admin)"
                    " VALUES(?,?,?,?,?)",
                    (str(addr), addr.domain, password_hash, time.time(), int(admin)),
                )
        except sqlite3.IntegrityError:
            raise AccountError(f"user {addr} already exists") from None
        return str(addr)

    def set_password(self, address: str, password_hash: str) -> None:
        addr = self.parse_local(address)
        with self._changing() as c:
            cur = c.execute(
                "UPDATE users SET password_hash = ? WHERE address = ?", (password_hash, str(addr))
            )
        if cur.rowcount == 0:
            raise AccountError(f"no such user: {addr}")

    def delete_user(self, address: str) -> None:
        addr = self.parse_local(address)
        with self._changing() as c:
            cur = c.execute("DELETE FROM users WHERE address = ?", (str(addr),))
            c.execute("DELETE FROM aliases WHERE target = ?", (str(addr),))
            c.execute("DELETE FROM send_as WHERE user = ?", (str(addr),))
            # A user made again under this address must not inherit the old filters (a
            # redirect would send the newcomer's mail to someone else) or vacation memory.
            c.execute("DELETE FROM sieve_scripts WHERE user = ?", (str(addr),))
            c.execute("DELETE FROM sieve_vacation WHERE user = ?", (str(addr),))
        if cur.rowcount == 0:
            raise AccountError(f"no such user: {addr}")

    def set_admin(self, address: str, admin: bool) -> None:
        """Grant or withdraw the admin flag (the web admin's /admin/ pages)."""
        addr = self.parse_local(address)
        with self._changing() as c:
            cur = c.execute("UPDATE users SET admin = ? WHERE address = ?", (int(admin), str(addr)))
        if cur.rowcount == 0:
            raise AccountError(f"no such user: {addr}")

    def is_admin(self, address: str) -> bool:
        row = self.conn.execute("SELECT admin FROM users WHERE address = ?", (address,)).fetchone()
        return bool(row and row[0])

    def set_quota(self, address: str, quota: int | None) -> None:
        """The user's own storage quota in bytes (0: no limit); None: the configured
        default (``[store] quota``) again."""
        addr = self.parse_local(address)
        if quota is not None and quota < 0:
            raise AccountError("a quota cannot be negative")
        with self._changing() as c:
            cur = c.execute("UPDATE users SET quota = ? WHERE address = ?", (quota, str(addr)))
        if cur.rowcount == 0:
            raise AccountError(f"no such user: {addr}")

    def own_quota(self, address: str) -> int | None:
        """The quota set for ``address`` itself (None: none set, the default applies).

        Remembered as :meth:`resolve` remembers recipients, for the same reason: every
        RCPT and every delivery asks (12% of the main process's event loop per message
        with intake workers), and the same invalidation applies."""
        known = self._quotas.get(address)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        row = self.conn.execute("SELECT quota FROM users WHERE address = ?", (address,)).fetchone()
        quota = None if row is None or row[0] is None else int(row[0])
        if len(self._quotas) >= RESOLUTION_CACHE_SIZE:
            self._quotas.clear()
        self._quotas[address] = (time.monotonic() + RESOLUTION_CACHE_SECONDS, quota)
        return quota

    def quota_of(self, address: str, default: int) -> int:
        """The quota that applies to ``address``: its own, else ``default``; 0 = none."""
        own = self.own_quota(address)
        return default if own is None else own

    def user_details(self) -> list[UserInfo]:
        return [
            UserInfo(r[0], bool(r[1]), r[2], r[3])
            for r in self.conn.execute(
                "SELECT address, admin, created, quota FROM users ORDER BY domain, address"
            )
        ]

    def list_users(self) -> list[str]:
        return [
            r[0] for r in self.conn.execute("SELECT address FROM users ORDER BY domain, address")
        ]

    def user_exists(self, address: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone()
        return row is not None

    def password_hash(self, address: str) -> str | None:
        row = self.conn.execute(
            "SELECT password_hash FROM users WHERE address = ?", (address,)
        ).fetchone()
        return row[0] if row else None

    # -- aliases ---------------------------------------------------------------------

    def _alias_key(self, alias: str) -> str:
        if is_catch_all(alias):
            domain = alias.strip()[1:]
            try:
                domain = normalize_domain(domain)
            except AddressError as exc:
                raise AccountError(str(exc)) from None
            if domain not in self.domains:
                raise AccountError(f"{domain} is not one of this server's domains")
            return "@" + domain
        return str(self.parse_local(alias))

    def add_alias(self, alias: str, targets: Iterable[str]) -> tuple[str, list[str]]:
        key = self._alias_key(alias)
        normalised: list[str] = []
        for target in targets:
            try:
                normalised.append(str(parse_address(target)))
            except AddressError as exc:
                raise AccountError(f"target {target!r}: {exc}") from None
        if not normalised:
            raise AccountError("an alias needs at least one target")
        if key in normalised:
            raise AccountError(f"alias {key} cannot point to itself")
        if not key.startswith("@") and self.user_exists(key):
            raise AccountError(f"{key} is a user; an alias cannot shadow it")
        self._insert_aliases(key, normalised)
        return key, normalised

    def _insert_aliases(self, key: str, targets: list[str]) -> None:
        with self._changing() as c:
            c.executemany(
                "INSERT OR IGNORE INTO aliases(alias, target) VALUES(?, ?)",
                [(key, t) for t in targets],
            )

    def delete_alias(self, alias: str) -> None:
        key = self._alias_key(alias)
        with self._changing() as c:
            cur = c.execute("DELETE FROM aliases WHERE alias = ?", (key,))
        if cur.rowcount == 0:
            raise AccountError(f"no such alias: {key}")

    def list_aliases(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for alias, target in self.conn.execute(
            "SELECT alias, target FROM aliases ORDER BY alias, target"
        ):
            result.setdefault(alias, []).append(target)
        return result

    def _alias_targets(self, key: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT target FROM aliases WHERE alias = ? ORDER BY target", (key,)
            )
        ]

    # -- routing ---------------------------------------------------------------------

    def resolve(self, address: str, delimiter: str) -> Resolution:
        """Expand one recipient into local users and remote forwarding targets.

        Order of lookup, as Postfix's virtual_alias_maps + virtual_mailbox_maps:
        exact address, then the address without its sub-address, then the ``@domain``
        catch-all. A user's own address beats a catch-all.

        A recipient that was found is remembered for RESOLUTION_CACHE_SECONDS: every RCPT
        asks, and a SQLite query releases the GIL, so under load each one waited behind
        the delivery threads (11% of the event loop in the SMTP benchmark). Only found
        recipients are kept, so a new user receives mail at once; a change made through
        this object forgets everything, and the CLI tells the running server
        (``accounts.changed``) after its changes, so a deleted user stops receiving mail
        at once too; another writer is seen within the TTL.
        """
        key = (address, delimiter)
        known = self._resolved.get(key)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        resolution = self._resolve(address, delimiter)
        if resolution.found:
            if len(self._resolved) >= RESOLUTION_CACHE_SIZE:
                self._resolved.clear()
            self._resolved[key] = (time.monotonic() + RESOLUTION_CACHE_SECONDS, resolution)
        return resolution

    def forget_cached(self) -> None:
        """Drop remembered resolutions and quotas (another process changed the accounts)."""
        self._resolved.clear()
        self._quotas.clear()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that forgets remembered resolutions once it has committed
        (a resolve racing the write cannot keep the old answer) and marks ``changed``."""
        try:
            with Transaction(self.conn) as c:
                yield c
        finally:
            self.changed = True
            self._resolved.clear()
            self._quotas.clear()

    def _resolve(self, address: str, delimiter: str) -> Resolution:
        try:
            addr = parse_address(address)
        except AddressError:
            return Resolution()
        expansion = _Expansion()
        self._expand(addr, delimiter, expansion, depth=0, seen=set())
        return Resolution(
            tuple(dict.fromkeys(expansion.local)), tuple(dict.fromkeys(expansion.remote))
        )

    def _expand(
        self, addr: Address, delimiter: str, out: _Expansion, depth: int, seen: set[str]
    ) -> None:
        if depth > MAX_ALIAS_DEPTH or str(addr) in seen:
            return
        seen.add(str(addr))
        if addr.domain not in self.domains:
            out.remote.append(str(addr))
            return
        base = addr.base(delimiter)
        for candidate in dict.fromkeys((str(addr), str(base))):
            if self.user_exists(candidate):
                out.local.append(candidate)
                return
            targets = self._alias_targets(candidate)
            if targets:
                for target in targets:
                    self._expand(parse_address(target), delimiter, out, depth + 1, seen)
                return
        for target in self._alias_targets("@" + addr.domain):
            self._expand(parse_address(target), delimiter, out, depth + 1, seen)

    def owned_addresses(self, user: str) -> set[str]:
        """Addresses ``user`` may send as: its own and every alias that delivers to it."""
        owned = {user}
        frontier = [user]
        while frontier:
            target = frontier.pop()
            for alias in self._aliases_of(target):
                if alias not in owned and not alias.startswith("@"):
                    owned.add(alias)
                    frontier.append(alias)
        return owned

    def _aliases_of(self, target: str) -> list[str]:
        """The aliases (catch-alls included) with ``target`` among their targets."""
        return [
            r[0] for r in self.conn.execute("SELECT alias FROM aliases WHERE target = ?", (target,))
        ]

    def first_user(self, domain: str) -> str | None:
        """The oldest user of ``domain``, else of any domain (postmaster's default)."""
        row = self.conn.execute(
            "SELECT address FROM users ORDER BY domain != ?, created, address LIMIT 1",
            (domain,),
        ).fetchone()
        return str(row[0]) if row else None

    def may_send_as(self, user: str, address: str, delimiter: str) -> bool:
        """RFC 6409 §6.1 lets a submission server check the sender against the user:
        allow the user's address, its sub-addresses, aliases pointing to it and the
        send-as grants of the user (an address, or ``@domain``)."""
        try:
            addr = parse_address(address)
        except AddressError:
            return False
        candidates = {str(addr), str(addr.base(delimiter))}
        if candidates & self.owned_addresses(user):
            return True
        grants = set(self.list_send_as(user))
        return bool(candidates & grants) or "@" + addr.domain in grants

    def owner_of(self, address: str, delimiter: str) -> str | None:
        """The one user that owns ``address`` (itself, a sub-address or an alias leading
        only to that user), or None."""
        try:
            addr = parse_address(address)
        except AddressError:
            return None
        if addr.domain not in self.domains:
            return None
        users = self.resolve(str(addr), delimiter).local_users
        if len(set(users)) == 1 and self.may_send_as(users[0], str(addr), delimiter):
            return users[0]
        return None

    # -- send-as grants --------------------------------------------------------------

    def _send_as_pattern(self, pattern: str) -> str:
        if is_catch_all(pattern):
            try:
                return "@" + normalize_domain(pattern.strip()[1:])
            except AddressError as exc:
                raise AccountError(str(exc)) from None
        try:
            return str(parse_address(pattern))
        except AddressError as exc:
            raise AccountError(str(exc)) from None

    def add_send_as(self, user: str, pattern: str) -> str:
        """Let ``user`` send as ``pattern`` (an address or ``@domain``, ours or not)."""
        address = str(self.parse_local(user))
        if not self.user_exists(address):
            raise AccountError(f"no such user: {address}")
        key = self._send_as_pattern(pattern)
        self._insert_send_as(address, key)
        return key

    def _insert_send_as(self, user: str, pattern: str) -> None:
        with self._changing() as c:
            c.execute("INSERT OR IGNORE INTO send_as(user, pattern) VALUES(?, ?)", (user, pattern))

    def delete_send_as(self, user: str, pattern: str) -> str:
        address = str(self.parse_local(user))
        key = self._send_as_pattern(pattern)
        with self._changing() as c:
            cur = c.execute("DELETE FROM send_as WHERE user = ? AND pattern = ?", (address, key))
        if cur.rowcount == 0:
            raise AccountError(f"{address} has no send-as grant for {key}")
        return key

    def list_send_as(self, user: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT pattern FROM send_as WHERE user = ? ORDER BY pattern", (user,)
            )
        ]


def open_accounts(settings: Settings, *, follow: bool = False) -> Accounts:
    """The accounts store ``[store] backend`` names. ``follow``: a long-lived server's,
    which, on PostgreSQL, keeps up with other nodes' changes (see pgaccounts.py)."""
    if settings.store.backend == "postgresql":
        from pillarbox.store.pgaccounts import PgAccounts

        return PgAccounts(settings, follow=follow)
    return Accounts(settings.database_path, settings.domains)

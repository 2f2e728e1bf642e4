"""The learning store in PostgreSQL, shared by several nodes (``[store] backend =
"postgresql"``): what a user teaches by moving mail on one node scores mail on every node.

Same interface and answers as ``reputation.ReputationStore`` (``Reputation``); what
sharing changes:

- **Counts are only ever incremented in the database** (``INSERT ... ON CONFLICT DO
  UPDATE SET spam = GREATEST(t.spam + n, 0)``), never read, changed and written back, so
  two nodes learning at once add up. A lesson's rows are upserted in key order, so two
  transactions lock shared rows in the same order and never deadlock.
- **A message is learnt once across nodes**: ``learn_message`` records it first (``INSERT
  ... ON CONFLICT DO NOTHING``, which waits for a concurrent insert of the same key), and
  only a recorded verdict that flips takes the old lesson back, all in one transaction.
- **Greylisting**: a first sighting is an insert that only one node wins; a known triplet
  is examined under its row lock.
- **A node's own ``spam.db``** (an install that ran on PostgreSQL before the learning
  moved there) is imported once, at the first open (``postgres.import_once``): its counts
  are added (each node had learnt other moves), thresholds and learnt messages kept
  where the database has them already.

Blocking methods (the engine calls them in threads), a connection pool, versioned
migrations (``postgres.migrate``, component ``spam``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from pillarbox import postgres as pg
from pillarbox.config import Settings
from pillarbox.spam.reputation import PRUNE_EVERY, Knowledge, Lesson

COMPONENT = "spam"

MIGRATIONS = [
    """
    CREATE TABLE spam_totals (
        user_address text PRIMARY KEY,
        spam bigint NOT NULL,
        ham bigint NOT NULL
    );
    CREATE TABLE spam_reputation (
        user_address text NOT NULL,
        kind text NOT NULL,
        key text NOT NULL,
        spam bigint NOT NULL,
        ham bigint NOT NULL,
        PRIMARY KEY (user_address, kind, key)
    );
    CREATE INDEX spam_reputation_key ON spam_reputation(kind, key);
    CREATE TABLE spam_tokens (
        user_address text NOT NULL,
        token text NOT NULL,
        spam bigint NOT NULL,
        ham bigint NOT NULL,
        PRIMARY KEY (user_address, token)
    );
    CREATE TABLE spam_thresholds (
        user_address text PRIMARY KEY,
        junk double precision,
        reject double precision
    );
    CREATE TABLE spam_greylist (
        triplet text PRIMARY KEY,
        first_seen double precision NOT NULL,
        passed double precision
    );
    CREATE TABLE spam_learned (
        user_address text NOT NULL,
        message text NOT NULL,
        spam boolean NOT NULL,
        PRIMARY KEY (user_address, message)
    );
    """,
]

# GREATEST(..., 0): a lesson taken back never drives a count below zero (as in SQLite).
_BUMP = "spam = GREATEST({t}.spam + %(s)s, 0), ham = GREATEST({t}.ham + %(h)s, 0)"
_BUMP_EXCLUDED = "spam = {t}.spam + excluded.spam, ham = {t}.ham + excluded.ham"


# A node's spam.db: each table, its columns, and how a row already in the database is
# met (counts add up; the rest keeps the database's).
_SQLITE_IMPORT = (
    ("totals", "spam_totals", "user, spam, ham", "%s, %s, %s",
     "(user_address) DO UPDATE SET " + _BUMP_EXCLUDED.format(t="spam_totals")),
    ("reputation", "spam_reputation", "user, kind, key, spam, ham", "%s, %s, %s, %s, %s",
     "(user_address, kind, key) DO UPDATE SET " + _BUMP_EXCLUDED.format(t="spam_reputation")),
    ("tokens", "spam_tokens", "user, token, spam, ham", "%s, %s, %s, %s",
     "(user_address, token) DO UPDATE SET " + _BUMP_EXCLUDED.format(t="spam_tokens")),
    ("thresholds", "spam_thresholds", "user, junk, reject", "%s, %s, %s", "DO NOTHING"),
    ("greylist", "spam_greylist", "triplet, first_seen, passed", "%s, %s, %s", "DO NOTHING"),
    ("learned", "spam_learned", "user, message, spam", "%s, %s, %s::int <> 0", "DO NOTHING"),
)  # fmt: skip


def sqlite_source(settings: Settings) -> str:
    """The name ``postgres.import_once`` records for this node's spam.db."""
    return f"spam:{(settings.data_dir / 'spam.db').resolve()}"


def import_sqlite(conn: pg.Connection, path: Path) -> str:
    """Add the learning in the SQLite file at ``path`` to the database's."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    counts = []
    try:
        for table, target, columns, values, on_conflict in _SQLITE_IMPORT:
            known = "SELECT 1 FROM sqlite_master WHERE name = ?"
            if not source.execute(known, (table,)).fetchone():
                continue
            rows = [tuple(_text(v) if isinstance(v, str) else v for v in row)
                    for row in source.execute(f"SELECT {columns} FROM {table}")]  # fmt: skip
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {target} VALUES ({values}) ON CONFLICT {on_conflict}", rows
                )
            counts.append(f"{len(rows)} {target}")
    finally:
        source.close()
    return ", ".join(counts) or "nothing"


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL, which a token or a Message-ID might carry."""
    return value.replace("\x00", "\ufffd")


class PgReputationStore:
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.pool = pg.open_pool(settings.store.dsn, name=COMPONENT, size=settings.store.pool_size)
        try:
            with self.pool.connection() as conn:
                pg.migrate(conn, COMPONENT, MIGRATIONS)
                path = settings.data_dir / "spam.db"
                if path.exists():
                    source = sqlite_source(settings)
                    pg.import_once(conn, source, lambda c: import_sqlite(c, path))
        except BaseException:
            self.pool.close()
            raise
        self._greylist_checks = 0

    def close(self) -> None:
        self.pool.close()

    # -- thresholds and totals ------------------------------------------------------------

    def trained_users(self) -> dict[str, tuple[int, int]]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT user_address, spam, ham FROM spam_totals").fetchall()
        return {r["user_address"]: (int(r["spam"]), int(r["ham"])) for r in rows}

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT user_address, junk, reject FROM spam_thresholds").fetchall()
        return {r["user_address"]: (r["junk"], r["reject"]) for r in rows}

    def set_thresholds(self, user: str, junk: float | None, reject: float | None) -> None:
        with self.pool.connection() as conn:
            if junk is None and reject is None:
                conn.execute("DELETE FROM spam_thresholds WHERE user_address = %s", (user,))
                return
            conn.execute(
                "INSERT INTO spam_thresholds VALUES (%s, %s, %s) ON CONFLICT (user_address)"
                " DO UPDATE SET junk = excluded.junk, reject = excluded.reject",
                (user, junk, reject),
            )

    # -- learning -------------------------------------------------------------------------

    def learn(self, user: str, lesson: Lesson, spam: bool, weight: int = 1) -> None:
        """Count ``lesson`` as spam (or ham) ``weight`` times; -1 takes a lesson back."""
        with self.pool.connection() as conn, conn.transaction():
            self._learn(conn, user, lesson, spam, weight)

    def learn_message(self, user: str, key: str, lesson: Lesson, spam: bool) -> bool:
        """Learn one classified message once (see ReputationStore.learn_message); one
        transaction, so two nodes learning the same move count it once."""
        key = _text(key)
        with self.pool.connection() as conn, conn.transaction():
            new = conn.execute(
                "INSERT INTO spam_learned VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                (user, key, spam),
            ).fetchone()
            if new is None:
                flipped = conn.execute(
                    "UPDATE spam_learned SET spam = %s WHERE user_address = %s"
                    " AND message = %s AND spam <> %s RETURNING 1",
                    (spam, user, key, spam),
                ).fetchone()
                if flipped is None:
                    return False  # taught the same way before
                self._learn(conn, user, lesson, not spam, -1)
            self._learn(conn, user, lesson, spam, 1)
        return True

    @staticmethod
    def _learn(conn: pg.Connection, user: str, lesson: Lesson, spam: bool, weight: int) -> None:
        counts = {"s": weight if spam else 0, "h": 0 if spam else weight}
        conn.execute(
            "INSERT INTO spam_totals VALUES (%(u)s, GREATEST(%(s)s, 0), GREATEST(%(h)s, 0))"
            f" ON CONFLICT (user_address) DO UPDATE SET {_BUMP.format(t='spam_totals')}",
            {"u": user, **counts},
        )
        identities = sorted(dict.fromkeys((k, _text(v)) for k, v in lesson.identities()))
        if identities:
            kinds, keys = zip(*identities, strict=True)
            conn.execute(
                "INSERT INTO spam_reputation SELECT %(u)s, kind, key, GREATEST(%(s)s, 0),"
                " GREATEST(%(h)s, 0) FROM unnest(%(kinds)s::text[], %(keys)s::text[])"
                " AS l(kind, key) ORDER BY kind, key"
                " ON CONFLICT (user_address, kind, key) DO UPDATE SET"
                f" {_BUMP.format(t='spam_reputation')}",
                {"u": user, "kinds": list(kinds), "keys": list(keys), **counts},
            )
        tokens = sorted({_text(t) for t in lesson.tokens})
        if tokens:
            conn.execute(
                "INSERT INTO spam_tokens SELECT %(u)s, token, GREATEST(%(s)s, 0),"
                " GREATEST(%(h)s, 0) FROM unnest(%(tokens)s::text[]) AS l(token)"
                ' ORDER BY token COLLATE "C"'
                " ON CONFLICT (user_address, token) DO UPDATE SET"
                f" {_BUMP.format(t='spam_tokens')}",
                {"u": user, "tokens": tokens, **counts},
            )

    # -- what the history says ------------------------------------------------------------

    def good_domain(self, domain: str) -> bool:
        """Has any user taught mail from ``domain`` as ham more than as spam?"""
        with self.pool.connection() as conn:
            value = pg.scalar(
                conn,
                "SELECT sum(ham) - sum(spam) FROM spam_reputation"
                " WHERE kind = 'domain' AND key = %s",
                (_text(domain),),
            )
        return bool(value and value > 0)

    def knowledge(self, user: str, lesson: Lesson) -> Knowledge:
        identities = [(k, _text(v)) for k, v in lesson.identities()]
        with self.pool.connection() as conn:
            totals = conn.execute(
                "SELECT spam, ham FROM spam_totals WHERE user_address = %s", (user,)
            ).fetchone()
            reputation: dict[tuple[str, str], tuple[int, int]] = {}
            if identities:
                kinds, keys = zip(*identities, strict=True)
                for row in conn.execute(
                    "SELECT r.kind, r.key, r.spam, r.ham FROM spam_reputation r"
                    " JOIN unnest(%s::text[], %s::text[]) AS l(kind, key)"
                    " USING (kind, key) WHERE r.user_address = %s",
                    (list(kinds), list(keys), user),
                ):
                    reputation[(row["kind"], row["key"])] = (int(row["spam"]), int(row["ham"]))
            tokens = self._token_counts(conn, user, lesson.tokens)
        spam_total, ham_total = (int(totals["spam"]), int(totals["ham"])) if totals else (0, 0)
        return Knowledge(spam_total, ham_total, reputation, tokens)

    @staticmethod
    def _token_counts(
        conn: pg.Connection, user: str, tokens: Sequence[str]
    ) -> list[tuple[int, int]]:
        if not tokens:
            return []
        rows = conn.execute(
            "SELECT spam, ham FROM spam_tokens WHERE user_address = %s AND token = ANY(%s::text[])",
            (user, [_text(t) for t in tokens]),
        ).fetchall()
        return [(int(r["spam"]), int(r["ham"])) for r in rows]

    # -- greylist -------------------------------------------------------------------------

    def greylist_check(self, triplet: str, now: float, delay: float, expire: float) -> bool:
        """True when the triplet may pass (see ReputationStore.greylist_check)."""
        self._greylist_checks += 1
        if self._greylist_checks % PRUNE_EVERY == 0:
            self.greylist_prune(now, expire)
        with self.pool.connection() as conn, conn.transaction():
            first = conn.execute(
                "INSERT INTO spam_greylist VALUES (%s, %s, NULL) ON CONFLICT DO NOTHING"
                " RETURNING 1",
                (triplet, now),
            ).fetchone()
            if first is not None:
                return False  # a first sighting (this node's insert won)
            row = conn.execute(
                "SELECT first_seen, passed FROM spam_greylist WHERE triplet = %s FOR UPDATE",
                (triplet,),
            ).fetchone()
            assert row is not None  # rows are only deleted by pruning, long expired
            first_seen, passed = row["first_seen"], row["passed"]
            known = passed is not None and now - passed <= expire
            retried = passed is None and delay <= now - first_seen <= expire
            if known or retried:
                conn.execute("UPDATE spam_greylist SET passed = %s WHERE triplet = %s",
                             (now, triplet))  # fmt: skip
                return True
            if passed is None and now - first_seen < delay:
                return False  # too early: the first sighting still counts
            # Forgotten (passed too long ago, or never retried): a first sighting again.
            conn.execute(
                "UPDATE spam_greylist SET first_seen = %s, passed = NULL WHERE triplet = %s",
                (now, triplet),
            )
            return False

    def greylist_prune(self, now: float, expire: float) -> int:
        with self.pool.connection() as conn:
            cursor = conn.execute(
                "DELETE FROM spam_greylist WHERE coalesce(passed, first_seen) < %s",
                (now - expire,),
            )
            return cursor.rowcount

    def greylist_domain_known(self, domain: str, expire: float, now: float) -> bool:
        pattern = "%|%@" + domain.replace("%", "\\%").replace("_", "\\_") + "|%"
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM spam_greylist WHERE triplet LIKE %s ESCAPE '\\'"
                " AND passed > %s LIMIT 1",
                (pattern, now - expire),
            ).fetchone()
        return row is not None

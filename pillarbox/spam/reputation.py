"""The per-user learning store: ``DATA_DIR/spam.db`` (SQLite, WAL, 0600), or with
``[store] backend = "postgresql"`` the database every node shares (``pgreputation.py``);
``open_reputation`` picks, ``Reputation`` is the interface both keep.

What each user taught by moving mail (mox's approach): counts of spam and ham per sender
address, sender domain and DKIM signing domain, token counts for the classifier, and the
per-user thresholds set with ``pillarbox user spam``. All methods are blocking; the engine
calls them through ``asyncio.to_thread``. One connection guarded by a lock: the writes are
small (one message's tokens) and rare (a user's move), the reads one indexed query.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pillarbox.config import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS totals (user TEXT PRIMARY KEY, spam INTEGER NOT NULL,
                                   ham INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reputation (user TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, spam INTEGER NOT NULL, ham INTEGER NOT NULL,
    PRIMARY KEY (user, kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (user TEXT NOT NULL, token TEXT NOT NULL,
    spam INTEGER NOT NULL, ham INTEGER NOT NULL, PRIMARY KEY (user, token)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS thresholds (user TEXT PRIMARY KEY, junk REAL, reject REAL);
CREATE TABLE IF NOT EXISTS greylist (triplet TEXT PRIMARY KEY, first_seen REAL NOT NULL,
    passed REAL);
CREATE TABLE IF NOT EXISTS learned (user TEXT NOT NULL, message TEXT NOT NULL,
    spam INTEGER NOT NULL, PRIMARY KEY (user, message)) WITHOUT ROWID;
"""
KINDS = ("sender", "domain", "dkim")
PRUNE_EVERY = 1000  # greylist checks between two prunings of expired triplets


@dataclass(frozen=True)
class Lesson:
    """What one message teaches: its identities and tokens."""

    sender: str
    domain: str
    dkim_domains: tuple[str, ...]
    tokens: Sequence[str]

    def identities(self) -> list[tuple[str, str]]:
        keys = [("sender", self.sender), ("domain", self.domain)]
        keys += [("dkim", d) for d in self.dkim_domains]
        return [(k, v) for k, v in keys if v]


@dataclass(frozen=True)
class Knowledge:
    """What a user's history says about one message."""

    spam_total: int
    ham_total: int
    reputation: dict[tuple[str, str], tuple[int, int]]  # (kind, key) -> (spam, ham)
    tokens: list[tuple[int, int]]  # (spam, ham) of each known token


class Reputation(Protocol):
    """The learning store, whichever database holds it (blocking methods)."""

    def close(self) -> None: ...
    def trained_users(self) -> dict[str, tuple[int, int]]: ...
    def thresholds(self) -> dict[str, tuple[float | None, float | None]]: ...
    def set_thresholds(self, user: str, junk: float | None, reject: float | None) -> None: ...
    def learn(self, user: str, lesson: Lesson, spam: bool, weight: int = 1) -> None: ...
    def learn_message(self, user: str, key: str, lesson: Lesson, spam: bool) -> bool: ...
    def good_domain(self, domain: str) -> bool: ...
    def knowledge(self, user: str, lesson: Lesson) -> Knowledge: ...
    def greylist_check(self, triplet: str, now: float, delay: float, expire: float) -> bool: ...
    def greylist_prune(self, now: float, expire: float) -> int: ...
    def greylist_domain_known(self, domain: str, expire: float, now: float) -> bool: ...


def open_reputation(settings: Settings) -> Reputation:
    """The learning store ``[store] backend`` names."""
    if settings.store.backend == "postgresql":
        from pillarbox.spam.pgreputation import PgReputationStore

        return PgReputationStore(settings)
    return ReputationStore(settings.data_dir / "spam.db")


class ReputationStore:
    def __init__(self, path: Path):
        self.path = path
        fresh = not path.exists()
        self._lock = threading.Lock()
        self._greylist_checks = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def trained_users(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT user, spam, ham FROM totals").fetchall()
        return {str(u): (int(s), int(h)) for u, s, h in rows}

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        with self._lock:
            rows = self._db.execute("SELECT user, junk, reject FROM thresholds").fetchall()
        return {str(u): (j, r) for u, j, r in rows}

    def set_thresholds(self, user: str, junk: float | None, reject: float | None) -> None:
        with self._lock:
            if junk is None and reject is None:
                self._db.execute("DELETE FROM thresholds WHERE user = ?", (user,))
                return
            self._db.execute(
                "INSERT INTO thresholds VALUES (?, ?, ?) ON CONFLICT (user) DO UPDATE "
                "SET junk = excluded.junk, reject = excluded.reject",
                (user, junk, reject),
            )

    def learn(self, user: str, lesson: Lesson, spam: bool, weight: int = 1) -> None:
        """Count ``lesson`` as spam (or ham) ``weight`` times; weight -1 takes a lesson back
        (a message moved out of Junk again was first counted as spam)."""
        s, h = (weight, 0) if spam else (0, weight)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO totals VALUES (?, max(?, 0), max(?, 0)) ON CONFLICT (user) DO "
                "UPDATE SET spam = max(spam + ?, 0), ham = max(ham + ?, 0)",
                (user, s, h, s, h),
            )
            self._db.executemany(
                "INSERT INTO reputation VALUES (?, ?, ?, max(?, 0), max(?, 0)) "
                "ON CONFLICT DO UPDATE SET spam = max(spam + ?, 0), ham = max(ham + ?, 0)",
                [(user, kind, key, s, h, s, h) for kind, key in lesson.identities()],
            )
            self._db.executemany(
                "INSERT INTO tokens VALUES (?, ?, max(?, 0), max(?, 0)) "
                "ON CONFLICT DO UPDATE SET spam = max(spam + ?, 0), ham = max(ham + ?, 0)",
                [(user, token, s, h, s, h) for token in lesson.tokens],
            )

    def learn_message(self, user: str, key: str, lesson: Lesson, spam: bool) -> bool:
        """Learn one message the user classified, once: the same message moved into Junk
        twice counts once, and a message taught as spam and later moved out is taken back
        from the spam counts before it is counted as ham (mox does the same). False when
        there was nothing new to learn."""
        with self._lock:
            row = self._db.execute(
                "SELECT spam FROM learned WHERE user = ? AND message = ?", (user, key)
            ).fetchone()
        if row is not None and bool(row[0]) == spam:
            return False
        if row is not None:
            self.learn(user, lesson, not spam, weight=-1)
        self.learn(user, lesson, spam)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO learned VALUES (?, ?, ?)", (user, key, int(spam))
            )
        return True

    def good_domain(self, domain: str) -> bool:
        """Has any user taught mail from ``domain`` as ham more than as spam?"""
        with self._lock:
            row = self._db.execute(
                "SELECT sum(ham) - sum(spam) FROM reputation WHERE kind = 'domain' AND key = ?",
                (domain,),
            ).fetchone()
        return bool(row and row[0] and row[0] > 0)

    def knowledge(self, user: str, lesson: Lesson) -> Knowledge:
        with self._lock:
            row = self._db.execute(
                "SELECT spam, ham FROM totals WHERE user = ?", (user,)
            ).fetchone()
            reputation: dict[tuple[str, str], tuple[int, int]] = {}
            for kind, key in lesson.identities():
                found = self._db.execute(
                    "SELECT spam, ham FROM reputation WHERE user = ? AND kind = ? AND key = ?",
                    (user, kind, key),
                ).fetchone()
                if found:
                    reputation[(kind, key)] = (int(found[0]), int(found[1]))
            tokens = list(self._token_counts(user, lesson.tokens))
        spam_total, ham_total = (int(row[0]), int(row[1])) if row else (0, 0)
        return Knowledge(spam_total, ham_total, reputation, tokens)

    def _token_counts(self, user: str, tokens: Sequence[str]) -> Iterable[tuple[int, int]]:
        for start in range(0, len(tokens), 500):
            chunk = tokens[start : start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(
                f"SELECT spam, ham FROM tokens WHERE user = ? AND token IN ({marks})",
                (user, *chunk),
            )

    # -- greylist ------------------------------------------------------------------------

    def greylist_check(self, triplet: str, now: float, delay: float, expire: float) -> bool:
        """True when the triplet may pass (seen at least ``delay`` ago, or passed before
        within ``expire``); records a first sighting."""
        self._greylist_checks += 1
        if self._greylist_checks % PRUNE_EVERY == 0:
            self.greylist_prune(now, expire)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT first_seen, passed FROM greylist WHERE triplet = ?", (triplet,)
            ).fetchone()
            if row is not None:
                first_seen, passed = row
                known = passed is not None and now - passed <= expire
                retried = passed is None and delay <= now - first_seen <= expire
                if known or retried:
                    self._db.execute(
                        "UPDATE greylist SET passed = ? WHERE triplet = ?", (now, triplet)
                    )
                    return True
                if passed is None and now - first_seen < delay:
                    return False  # too early: the first sighting still counts
            # New, or forgotten (passed too long ago, or never retried): a first sighting.
            self._db.execute("INSERT OR REPLACE INTO greylist VALUES (?, ?, NULL)", (triplet, now))
            return False

    def greylist_prune(self, now: float, expire: float) -> int:
        """Forget triplets not seen (or passed) within ``expire``: spam that never retried
        must not grow the table for ever."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM greylist WHERE coalesce(passed, first_seen) < ?", (now - expire,)
            )
        return cursor.rowcount

    def greylist_domain_known(self, domain: str, expire: float, now: float) -> bool:
        """Has mail from ``domain`` passed the greylist before (a known-good domain)?"""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM greylist WHERE triplet LIKE ? ESCAPE '\\' AND passed > ? LIMIT 1",
                ("%|%@" + domain.replace("%", "\\%").replace("_", "\\_") + "|%", now - expire),
            ).fetchone()
        return row is not None

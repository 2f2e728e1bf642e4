"""The queue's rows in PostgreSQL, shared by several nodes (``[store] backend =
"postgresql"``). The spool files stay in ``queue_dir`` (``QueueStoreBase``), which the
nodes share as one directory.

The rows are those of the SQLite store (store.py) plus claims, which is what sharing
needs:

- **Claims with a lease.** A new message's recipients are born claimed by the node
  that accepted it (``add_message``), which tries them at once. ``due`` claims the due
  recipients nobody holds with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` (two nodes scanning at once each get other rows,
  neither waits for the other) and stamps them with this node's id and a lease expiry on
  the database's clock. The service renews the leases of the jobs it holds every third
  of ``[store] queue_lease`` and checks, just before connecting, that its claim still
  stands (``still_claimed``); ``finish_attempt`` ends it. A node killed with ``-9``
  renews nothing, so its claims expire and the next scan of any node takes them.
- **At least once, as SMTP.** A recipient is marked sent only after the peer's 250
  (as in SQLite). A node that dies between that reply and its commit, or whose lease ran
  out while the database was unreachable for longer than the lease, leaves the recipient
  queued, and another node sends it again: the duplicate window of RFC 5321 §6.1, never
  a loss. No recipient is ever claimed by two live nodes that can both reach the database.
- **Crashed attempts.** An attempt row left open by a node that no longer holds any live
  claim is closed as "interrupted" (at start and in housekeeping).
- **Reports.** A message's pending DSNs are sent by whichever node takes the message's
  report claim (``claim_report``), so two nodes finishing jobs of one message, or both
  running housekeeping, do not both send the same report.

Timestamps stay Unix seconds (double precision) as in SQLite, so both stores return the
same dataclasses; ids are identity columns. Blocking methods, one caller thread at a
time (the queue's worker thread, or the CLI), like the SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path

from pillarbox import postgres as pg
from pillarbox.config import Settings
from pillarbox.postgres import DB_NOW
from pillarbox.queue.api import OutboundRecipient
from pillarbox.queue.store import (
    QUEUED,
    Message,
    Outcome,
    QueueStoreBase,
    Recipient,
    is_queue_id,
    message_of_row,
    needs_smtputf8,
    recipient_of_row,
    recipient_rows,
)

COMPONENT = "queue"

MIGRATIONS = [
    """
    CREATE TABLE queue_messages (
        id text PRIMARY KEY,
        sender text NOT NULL,
        envid text,
        ret text,
        created double precision NOT NULL,
        size bigint NOT NULL,
        eightbit boolean NOT NULL DEFAULT false,
        smtputf8 boolean NOT NULL DEFAULT false,
        report_by text,
        report_until double precision
    );
    CREATE TABLE queue_recipients (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue_id text NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        address text NOT NULL,
        domain text NOT NULL,
        notify text NOT NULL DEFAULT '',
        orcpt text,
        state text NOT NULL DEFAULT 'queued',
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision NOT NULL,
        last_reply text,
        remote_mta text,
        dsn text,
        warned boolean NOT NULL DEFAULT false,
        updated double precision NOT NULL,
        claimed_by text,
        lease_until double precision
    );
    CREATE INDEX queue_recipients_due ON queue_recipients(state, next_attempt);
    CREATE INDEX queue_recipients_message ON queue_recipients(queue_id);
    CREATE INDEX queue_recipients_claims ON queue_recipients(claimed_by)
        WHERE claimed_by IS NOT NULL;
    CREATE TABLE queue_attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue_id text NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        node text NOT NULL,
        domain text NOT NULL,
        recipients text NOT NULL,
        started double precision NOT NULL,
        finished double precision,
        outcome text,
        detail text
    );
    CREATE INDEX queue_attempts_message ON queue_attempts(queue_id);
    CREATE INDEX queue_attempts_open ON queue_attempts(node) WHERE finished IS NULL;
    CREATE TABLE queue_sts_policies (
        domain text PRIMARY KEY,
        policy_id text NOT NULL,
        policy text NOT NULL,
        fetched double precision NOT NULL,
        expires double precision NOT NULL
    );
    """,
]

# A live claim: someone holds the row and its lease has not run out.
_LIVE_CLAIM = f"claimed_by IS NOT NULL AND lease_until >= {DB_NOW}"


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL, which a remote reply might carry."""
    return value.replace("\x00", "\ufffd") if value is not None else None


class PgQueueStore(QueueStoreBase):
    """See the module docstring."""

    shared = True

    def __init__(
        self,
        queue_dir: Path,
        pool: pg.Pool,
        *,
        node: str,
        lease: float,
        claim_batch: int,
        readonly: bool = False,
    ) -> None:
        super().__init__(queue_dir, readonly=readonly)
        self.pool = pool
        self.node = node
        self.lease = lease
        self.claim_batch = claim_batch

    @classmethod
    def open(cls, settings: Settings, *, readonly: bool = False) -> PgQueueStore | None:
        """Connect (and migrate, unless ``readonly``); None when ``readonly`` and the
        database has no queue yet."""
        pool = pg.open_pool(settings.store.dsn, name=COMPONENT, size=settings.store.pool_size)
        try:
            with pool.connection() as conn:
                if readonly:
                    if pg.schema_version(conn, COMPONENT) == 0:
                        pool.close()
                        return None
                else:
                    pg.migrate(conn, COMPONENT, MIGRATIONS)
        except BaseException:
            pool.close()
            raise
        return cls(
            settings.queue_dir,
            pool,
            node=pg.node_name(settings),
            lease=float(settings.store.queue_lease),
            # Claim a few turns' worth, not the whole backlog, so idle nodes get some.
            claim_batch=max(10, 2 * settings.delivery.max_concurrency),
            readonly=readonly,
        )

    def close(self) -> None:
        self.pool.close()

    # -- enqueue --------------------------------------------------------------------------

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
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO queue_messages(id, sender, envid, ret, created, size, eightbit,"
                " smtputf8) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (queue_id, sender, envid, ret, now, size, eightbit, smtputf8),
            )
            # Born claimed by this node, which tries them at once: another node's scan
            # between this commit and our own would otherwise take them first.
            cur.executemany(
                "INSERT INTO queue_recipients(queue_id, address, domain, notify, orcpt,"
                " next_attempt, updated, claimed_by, lease_until) VALUES"
                f" (%s, %s, %s, %s, %s, %s, %s, %s, {DB_NOW} + %s)",
                [
                    (*row, self.node, self.lease)
                    for row in recipient_rows(queue_id, recipients, now)
                ],
            )
            rows = cur.execute(
                "SELECT * FROM queue_recipients WHERE queue_id = %s ORDER BY id", (queue_id,)
            ).fetchall()
        return [recipient_of_row(r) for r in rows]

    # -- reading --------------------------------------------------------------------------

    def message(self, queue_id: str) -> Message | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT * FROM queue_messages WHERE id = %s", (queue_id,)).fetchone()
        return message_of_row(row) if row else None

    def messages(self) -> list[Message]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT * FROM queue_messages ORDER BY created, id").fetchall()
        return [message_of_row(r) for r in rows]

    def recipients(self, queue_id: str) -> list[Recipient]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM queue_recipients WHERE queue_id = %s ORDER BY id", (queue_id,)
            ).fetchall()
        return [recipient_of_row(r) for r in rows]

    def due(self, now: float, limit: int = 1000) -> list[Recipient]:
        """Claim and return queued recipients due at ``now`` that nobody holds (or whose
        holder's lease ran out); at most ``claim_batch`` per call."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "WITH picked AS ("
                " SELECT id FROM queue_recipients c"
                " WHERE state = %(queued)s AND next_attempt <= %(now)s"
                f" AND (claimed_by IS NULL OR lease_until < {DB_NOW})"
                # Not the siblings of a job this node runs: its runner would not schedule
                # them beside it, and they would sit claimed until the lease ran out.
                " AND NOT EXISTS (SELECT 1 FROM queue_recipients o"
                " WHERE o.queue_id = c.queue_id AND o.domain = c.domain"
                f" AND o.claimed_by = %(node)s AND o.lease_until >= {DB_NOW})"
                " ORDER BY next_attempt, id LIMIT %(limit)s"
                " FOR UPDATE SKIP LOCKED)"
                " UPDATE queue_recipients r"
                f" SET claimed_by = %(node)s, lease_until = {DB_NOW} + %(lease)s"
                " FROM picked WHERE r.id = picked.id RETURNING r.*",
                {
                    "queued": QUEUED,
                    "now": now,
                    "limit": min(limit, self.claim_batch),
                    "node": self.node,
                    "lease": self.lease,
                },
            ).fetchall()
        return sorted((recipient_of_row(r) for r in rows), key=lambda r: (r.next_attempt, r.id))

    def next_due(self, after: float) -> float | None:
        """The earliest time later than ``after`` a recipient becomes ours to try: its
        retry time, or, while another node holds it, when that lease runs out."""
        with self.pool.connection() as conn:
            value = pg.scalar(
                conn,
                "SELECT min(t) FROM (SELECT GREATEST(next_attempt,"
                f" CASE WHEN {_LIVE_CLAIM} THEN lease_until ELSE 0 END) AS t"
                " FROM queue_recipients WHERE state = %s) AS times WHERE t > %s",
                (QUEUED, after),
            )
        return float(value) if value is not None else None

    def attempts(self, queue_id: str) -> list[dict[str, object]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT domain, recipients, started, finished, outcome, detail"
                " FROM queue_attempts WHERE queue_id = %s ORDER BY id",
                (queue_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def pending_reports(self) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT queue_id AS id FROM queue_recipients WHERE dsn IS NOT NULL"
                " UNION SELECT id FROM queue_messages m WHERE NOT EXISTS"
                " (SELECT 1 FROM queue_recipients r WHERE r.queue_id = m.id AND r.state = %s)",
                (QUEUED,),
            ).fetchall()
        return [r["id"] for r in rows]

    # -- claims ---------------------------------------------------------------------------

    def still_claimed(self, recipient_ids: Sequence[int]) -> list[int]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"UPDATE queue_recipients SET lease_until = {DB_NOW} + %s"
                " WHERE id = ANY(%s) AND claimed_by = %s AND state = %s RETURNING id",
                (self.lease, list(recipient_ids), self.node, QUEUED),
            ).fetchall()
        return sorted(r["id"] for r in rows)

    def renew_claims(self, held: Collection[tuple[str, str]] = ()) -> int:
        """Extend this node's leases on the recipients of the jobs ``held``, as
        (queue id, domain) pairs; claims of jobs no longer held are left to expire."""
        if not held:
            return 0
        queue_ids, domains = zip(*held, strict=True)
        with self.pool.connection() as conn:
            cur = conn.execute(
                f"UPDATE queue_recipients SET lease_until = {DB_NOW} + %s"
                " WHERE claimed_by = %s AND (queue_id, domain) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                (self.lease, self.node, list(queue_ids), list(domains)),
            )
            return cur.rowcount

    def release_claims(self) -> int:
        with self.pool.connection() as conn:
            cur = conn.execute(
                "UPDATE queue_recipients SET claimed_by = NULL, lease_until = NULL"
                " WHERE claimed_by = %s",
                (self.node,),
            )
            conn.execute(
                "UPDATE queue_messages SET report_by = NULL, report_until = NULL"
                " WHERE report_by = %s",
                (self.node,),
            )
            return cur.rowcount

    def claim_report(self, queue_id: str) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"UPDATE queue_messages SET report_by = %s, report_until = {DB_NOW} + %s"
                " WHERE id = %s AND (report_by IS NULL OR report_by = %s"
                f" OR report_until < {DB_NOW}) RETURNING id",
                (self.node, self.lease, queue_id, self.node),
            ).fetchone()
        return row is not None

    def release_report(self, queue_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE queue_messages SET report_by = NULL, report_until = NULL"
                " WHERE id = %s AND report_by = %s",
                (queue_id, self.node),
            )

    # -- attempts and outcomes ------------------------------------------------------------

    def begin_attempt(self, queue_id: str, domain: str, recipient_ids: Sequence[int]) -> int:
        now = time.time()
        with self.pool.connection() as conn:
            attempt_id = pg.scalar(
                conn,
                "INSERT INTO queue_attempts(queue_id, node, domain, recipients, started)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (queue_id, self.node, domain, ",".join(map(str, recipient_ids)), now),
            )
            conn.execute(
                "UPDATE queue_recipients SET attempts = attempts + 1, updated = %s"
                " WHERE id = ANY(%s)",
                (now, list(recipient_ids)),
            )
        return int(attempt_id)

    def finish_attempt(self, attempt_id: int, outcomes: Sequence[Outcome], detail: str) -> None:
        now = time.time()
        states = sorted({o.state for o in outcomes})
        with self.pool.connection() as conn, conn.cursor() as cur:
            row = cur.execute(
                "UPDATE queue_attempts SET finished = %s, outcome = %s, detail = %s"
                " WHERE id = %s RETURNING recipients",
                (now, ",".join(states), _text(detail[:2000]), attempt_id),
            ).fetchone()
            cur.executemany(
                "UPDATE queue_recipients SET state = %s, last_reply = %s, remote_mta = %s,"
                " next_attempt = %s, dsn = COALESCE(%s, dsn), warned = warned OR %s,"
                " updated = %s WHERE id = %s",
                [
                    (
                        o.state,
                        _text(o.reply[:2000]),
                        _text(o.remote_mta),
                        o.next_attempt,
                        o.dsn,
                        o.warned,
                        now,
                        o.recipient_id,
                    )
                    for o in outcomes
                ],
            )
            attempted = [int(i) for i in row["recipients"].split(",") if i] if row else []
            cur.execute(
                "UPDATE queue_recipients SET claimed_by = NULL, lease_until = NULL"
                " WHERE id = ANY(%s) AND claimed_by = %s",
                (attempted, self.node),
            )

    def close_interrupted_attempts(self) -> int:
        with self.pool.connection() as conn:
            cur = conn.execute(
                f"UPDATE queue_attempts a SET finished = {DB_NOW}, outcome = 'interrupted'"
                " WHERE finished IS NULL AND NOT EXISTS (SELECT 1 FROM queue_recipients r"
                f" WHERE r.claimed_by = a.node AND r.lease_until >= {DB_NOW})"
            )
            return cur.rowcount

    def clear_dsn(self, recipient_ids: Sequence[int]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE queue_recipients SET dsn = NULL WHERE id = ANY(%s)", (list(recipient_ids),)
            )

    def flush(self, queue_id: str | None = None) -> int:
        now = time.time()
        with self.pool.connection() as conn:
            if queue_id is None:
                cur = conn.execute(
                    "UPDATE queue_recipients SET next_attempt = %s WHERE state = %s", (now, QUEUED)
                )
            else:
                cur = conn.execute(
                    "UPDATE queue_recipients SET next_attempt = %s"
                    " WHERE state = %s AND queue_id = %s",
                    (now, QUEUED, queue_id),
                )
            return cur.rowcount

    def delete(self, queue_id: str) -> bool:
        if not is_queue_id(queue_id):
            return False
        with self.pool.connection() as conn:
            existed = conn.execute("DELETE FROM queue_messages WHERE id = %s", (queue_id,)).rowcount
        self.message_path(queue_id).unlink(missing_ok=True)
        return existed > 0

    def retire_if_done(self, queue_id: str) -> bool:
        with self.pool.connection() as conn:
            left = pg.scalar(
                conn,
                "SELECT count(*) FROM queue_recipients"
                " WHERE queue_id = %s AND (state = %s OR dsn IS NOT NULL)",
                (queue_id, QUEUED),
            )
        if left:
            return False
        return self.delete(queue_id)

    # -- MTA-STS policy cache -------------------------------------------------------------

    def sts_get(self, domain: str) -> tuple[str, str, float, float] | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT policy_id, policy, fetched, expires FROM queue_sts_policies"
                " WHERE domain = %s",
                (domain,),
            ).fetchone()
        return (row["policy_id"], row["policy"], row["fetched"], row["expires"]) if row else None

    def sts_put(self, domain: str, policy_id: str, policy: str, expires: float) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO queue_sts_policies(domain, policy_id, policy, fetched, expires)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain) DO UPDATE SET"
                " policy_id = excluded.policy_id, policy = excluded.policy,"
                " fetched = excluded.fetched, expires = excluded.expires",
                (domain, policy_id, policy, time.time(), expires),
            )

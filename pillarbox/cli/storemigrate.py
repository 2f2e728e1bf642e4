"""``pillarbox store migrate --to postgresql --dsn DSN [--force]``: move an SQLite install's
shared state into PostgreSQL, so that it (and more nodes) can run with ``[store] backend
= "postgresql"``.

What moves: the accounts (users with their password hashes, admin flags and quotas,
aliases, send-as grants), the Sieve scripts and vacation memory, the spam filter's
reputation, tokens, thresholds, greylist and learnt messages, and the outbound queue's
rows (messages, recipients, attempts, MTA-STS policies; the spool files stay in
``queue/``, where the PostgreSQL queue reads them too), and every user's mailbox index
(``pgmail.importer``: UIDVALIDITY, UIDs, flags and MODSEQs as the clients know them; the
message files stay in ``mail/``, where the PostgreSQL index names them).

How it is safe:

- **One transaction.** The target's schema is made by the stores' own versioned
  migrations and every row copied (``COPY``) inside one PostgreSQL transaction, so a run
  that is interrupted (killed, the database gone) leaves nothing behind, and running it
  again starts over and finishes. A finished run records itself (``pillarbox_imports``),
  so running it again says it is done.
- **The sources are only read**: every SQLite file is opened read-only, in one read
  transaction each (a consistent snapshot), and the server must be stopped (the command
  refuses while its control socket answers), so nothing changes under the copy.
- **A non-empty target is refused** unless ``--force``, which empties Pillarbox's
  tables there first.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pillarbox import control
from pillarbox import postgres as pg
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings
from pillarbox.pgmail import importer as mail_importer
from pillarbox.pgmail import schema as mail_schema
from pillarbox.queue import pgstore
from pillarbox.spam import pgreputation
from pillarbox.store import db, pgaccounts, pgsieve

PROGRESS_EVERY = 50_000  # rows between two progress lines of one table
IMPORTED_BY = "sqlite-import"  # the node name on copied queue attempts

Convert = Callable[[Any], Any]


def _bool(value: Any) -> bool:
    return bool(value)


def _text(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL (SQLite's can)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


@dataclass(frozen=True)
class Column:
    target: str
    source: str | None = None  # None: the same name; a missing source column is NULL
    convert: Convert = _text
    default: Any = None  # when the source has no such column

    @property
    def read(self) -> str:
        """The source column's name."""
        return self.source or self.target


@dataclass(frozen=True)
class Table:
    source_file: str  # "accounts", "spam" or "queue"
    source: str
    target: str
    columns: tuple[Column, ...]

    @property
    def label(self) -> str:
        return f"{self.source_file}: {self.source} -> {self.target}"


def _cols(*names: str, **special: Column) -> tuple[Column, ...]:
    return tuple(special.get(name, Column(name)) for name in names)


TABLES: tuple[Table, ...] = (
    Table(
        "accounts",
        "users",
        "account_users",
        _cols(
            "address",
            "domain",
            "password_hash",
            "created",
            "admin",
            "quota",
            admin=Column("admin", convert=_bool, default=False),
        ),
    ),
    Table("accounts", "aliases", "account_aliases", _cols("alias", "target")),
    Table(
        "accounts",
        "send_as",
        "account_send_as",
        _cols(
            "user_address",
            "pattern",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table(
        "accounts",
        "sieve_scripts",
        "sieve_scripts",
        _cols(
            "user_address",
            "name",
            "text",
            "active",
            "modified",
            user_address=Column("user_address", "user"),
            active=Column("active", convert=_bool),
        ),
    ),
    Table(
        "accounts",
        "sieve_vacation",
        "sieve_vacation",
        _cols(
            "user_address",
            "sender",
            "handle",
            "until",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table(
        "spam",
        "totals",
        "spam_totals",
        _cols(
            "user_address",
            "spam",
            "ham",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table(
        "spam",
        "reputation",
        "spam_reputation",
        _cols(
            "user_address",
            "kind",
            "key",
            "spam",
            "ham",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table(
        "spam",
        "tokens",
        "spam_tokens",
        _cols(
            "user_address",
            "token",
            "spam",
            "ham",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table(
        "spam",
        "thresholds",
        "spam_thresholds",
        _cols(
            "user_address",
            "junk",
            "reject",
            user_address=Column("user_address", "user"),
        ),
    ),
    Table("spam", "greylist", "spam_greylist", _cols("triplet", "first_seen", "passed")),
    Table(
        "spam",
        "learned",
        "spam_learned",
        _cols(
            "user_address",
            "message",
            "spam",
            user_address=Column("user_address", "user"),
            spam=Column("spam", convert=_bool),
        ),
    ),
    Table(
        "queue",
        "messages",
        "queue_messages",
        _cols(
            "id",
            "sender",
            "envid",
            "ret",
            "created",
            "size",
            "eightbit",
            "smtputf8",
            eightbit=Column("eightbit", convert=_bool, default=False),
            smtputf8=Column("smtputf8", convert=_bool, default=False),
        ),
    ),
    # Recipient ids are kept: attempts name them ("1,2,3").
    Table(
        "queue",
        "recipients",
        "queue_recipients",
        _cols(
            "id",
            "queue_id",
            "address",
            "domain",
            "notify",
            "orcpt",
            "state",
            "attempts",
            "next_attempt",
            "last_reply",
            "remote_mta",
            "dsn",
            "warned",
            "updated",
            warned=Column("warned", convert=_bool, default=False),
        ),
    ),
    Table(
        "queue",
        "attempts",
        "queue_attempts",
        _cols(
            "id",
            "queue_id",
            "node",
            "domain",
            "recipients",
            "started",
            "finished",
            "outcome",
            "detail",
            node=Column("node", "node", default=IMPORTED_BY),
        ),
    ),
    Table(
        "queue",
        "sts_policies",
        "queue_sts_policies",
        _cols(
            "domain",
            "policy_id",
            "policy",
            "fetched",
            "expires",
        ),
    ),
)

# Identity columns whose sequences must continue after the copied ids.
IDENTITIES = (("queue_recipients", "id"), ("queue_attempts", "id"), ("sieve_scripts", "id"))


def source_paths(settings: Settings) -> dict[str, Path]:
    return {
        "accounts": settings.database_path,
        "spam": settings.data_dir / "spam.db",
        "queue": settings.queue_dir / "queue.db",
    }


# -- reading the SQLite files ------------------------------------------------------------


@contextlib.contextmanager
def open_sources(settings: Settings) -> Iterator[dict[str, sqlite3.Connection]]:
    """Each SQLite file that exists, read-only, in one read transaction (a snapshot)."""
    opened: dict[str, sqlite3.Connection] = {}
    try:
        for name, path in source_paths(settings).items():
            if path.exists():
                conn = db.connect(path, readonly=True)
                conn.execute("BEGIN")
                opened[name] = conn
        yield opened
    finally:
        for conn in opened.values():
            conn.close()


def source_columns(conn: sqlite3.Connection, table: str) -> set[str] | None:
    """The table's columns, or None when the file has no such table."""
    rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return {r["name"] for r in rows} or None


def source_rows(
    conn: sqlite3.Connection, table: Table, have: set[str]
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` in the target's column order; a column the source's (older)
    schema lacks gets its default."""
    picked = [c.read for c in table.columns if c.read in have]
    for row in conn.execute(f"SELECT {', '.join(picked)} FROM {table.source}"):
        yield tuple(
            column.convert(row[column.read]) if column.read in have else column.default
            for column in table.columns
        )


# -- the target --------------------------------------------------------------------------


def connect_target(dsn: str) -> pg.Connection:
    try:
        # autocommit: copy_all's conn.transaction() is then the one real transaction.
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=pg.CONNECT_TIMEOUT, row_factory=dict_row
        )
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CliError(f"cannot connect to PostgreSQL: {reason}") from None


def make_schema(conn: pg.Connection) -> None:
    """Every store's tables, by the stores' own migrations (savepoints in our transaction)."""
    pg.migrate(conn, pgaccounts.COMPONENT, pgaccounts.MIGRATIONS)
    pg.migrate(conn, pgsieve.COMPONENT, pgsieve.MIGRATIONS)
    pg.migrate(conn, pgreputation.COMPONENT, pgreputation.MIGRATIONS)
    pg.migrate(conn, pgstore.COMPONENT, pgstore.MIGRATIONS)
    pg.migrate(conn, pg.IMPORTS_COMPONENT, pg.IMPORTS_MIGRATIONS)
    pg.migrate(conn, mail_schema.COMPONENT, mail_schema.MIGRATIONS)


def previous_import(conn: pg.Connection) -> dict[str, Any] | None:
    if pg.scalar(conn, "SELECT to_regclass('pillarbox_imports')") is None:
        return None
    return conn.execute(
        "SELECT source, finished, summary FROM pillarbox_imports WHERE source LIKE %s"
        " ORDER BY finished DESC LIMIT 1",
        ("install:%",),
    ).fetchone()


def rows_present(conn: pg.Connection) -> list[str]:
    """The target tables that already hold rows."""
    full = []
    for table in TABLES:
        if pg.scalar(conn, "SELECT to_regclass(%s)", (table.target,)) is None:
            continue
        if conn.execute(f"SELECT 1 FROM {table.target} LIMIT 1").fetchone():
            full.append(table.target)
    mail = pg.scalar(conn, "SELECT to_regclass('mail_users')") is not None
    if mail and conn.execute("SELECT 1 FROM mail_users LIMIT 1").fetchone():
        full.append("mail_users")
    return full


def say(line: str) -> None:
    """A progress line, shown as it happens."""
    print(line, flush=True)


def summary(totals: dict[str, int]) -> str:
    return ", ".join(f"{count} {table}" for table, count in totals.items())


def copy_table(conn: pg.Connection, table: Table, source: sqlite3.Connection) -> int:
    have = source_columns(source, table.source)
    if have is None:
        say(f"  {table.label}: no such table, nothing to copy")
        return 0
    columns = ", ".join(c.target for c in table.columns)
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table.target} ({columns}) FROM STDIN") as copy:
        for row in source_rows(source, table, have):
            copy.write_row(row)
            count += 1
            if count % PROGRESS_EVERY == 0:
                say(f"  {table.label}: {count} rows ...")
    say(f"  {table.label}: {count} rows")
    return count


def continue_identities(conn: pg.Connection) -> None:
    for table, column in IDENTITIES:
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
            f" coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
        )


# -- the command -------------------------------------------------------------------------


def refuse_while_running(settings: Settings) -> None:
    try:
        control.call(settings.control_socket, "status", timeout=5)
    except control.ServerNotRunning:
        return
    except control.ControlError:
        pass  # something answers: a server
    raise CliError(
        "the server is running: stop it first (`systemctl stop pillarbox` or Ctrl-C), so "
        "that nothing changes while its state is copied"
    )


def store_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings.store.backend != "sqlite":
        raise CliError('this install already uses [store] backend = "postgresql"')
    refuse_while_running(settings)
    source_label = f"install:{settings.data_dir.resolve()}"
    with contextlib.closing(connect_target(args.dsn)) as conn, open_sources(settings) as sources:
        done = previous_import(conn)
        full = rows_present(conn)
        if full and not args.force:
            if done is not None and done["source"] == source_label:
                say(f"Already migrated from {settings.data_dir} at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(done['finished']))} "
                    f"({done['summary']}); nothing to do.")  # fmt: skip
                print_next_steps(settings, args.dsn)
                return 0
            raise CliError(
                f"the target database is not empty ({', '.join(full)} hold rows); use "
                "--force to replace Pillarbox's tables there with this install's state"
            )
        say(f"Copying {settings.data_dir} into PostgreSQL, in one transaction (if this is "
            "interrupted, nothing is written: run it again).")  # fmt: skip
        node_sources = [pgsieve.sqlite_source(settings), pgreputation.sqlite_source(settings)]
        totals = copy_all(
            conn, sources, source_label, node_sources, force=bool(full), mail_dir=settings.mail_dir
        )
        say(f"Done: {summary(totals)}.")
    print_next_steps(settings, args.dsn)
    return 0


def copy_all(
    conn: pg.Connection,
    sources: dict[str, sqlite3.Connection],
    source_label: str,
    sqlite_sources: list[str],
    *,
    force: bool,
    mail_dir: Path,
) -> dict[str, int]:
    """Schema, rows and the record of this import, in one transaction; rows per table."""
    totals: dict[str, int] = {}
    with conn.transaction():
        make_schema(conn)
        if force:
            targets = ", ".join(t.target for t in TABLES)
            conn.execute(f"TRUNCATE {targets}, mail_users, pillarbox_imports CASCADE")
            say("  --force: emptied Pillarbox's tables in the target")
        for table in TABLES:
            source = sources.get(table.source_file)
            if source is None:
                say(f"  {table.label}: no {table.source_file} database, nothing to copy")
                continue
            count = copy_table(conn, table, source)
            totals[table.target] = totals.get(table.target, 0) + count
        mail = mail_importer.import_all(conn, mail_dir, say)
        say(f"  mailbox index: {mail}")
        totals["mail_mailboxes"] = mail.mailboxes
        totals["mail_messages"] = mail.messages
        continue_identities(conn)
        pg.record_import(conn, source_label, summary(totals))
        # The server imports a node's own Sieve scripts and spam learning once (installs
        # on PostgreSQL from before they moved there); these are in now.
        for node_source in sqlite_sources:
            pg.record_import(conn, node_source, "by pillarbox store migrate")
    return totals


def print_next_steps(settings: Settings, dsn: str) -> None:
    print(f"""
Now set, in {settings.source}:

    [store]
    backend = "postgresql"
    dsn = "{dsn}"

and start the server. Every node pointed at this dsn (and at the same data_dir, as a
shared filesystem) then shares the accounts, Sieve scripts, spam learning, queue and
mailbox index; the message files stay under {settings.mail_dir}, where every node
must see them. The SQLite files were only read; keep them as a backup until you are
satisfied (mail that arrives from now on is only in PostgreSQL's index).""")


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, choices=["postgresql"], help="the target backend")
    parser.add_argument("--dsn", required=True, help='"postgresql://user@host/dbname"')
    parser.add_argument(
        "--force", action="store_true", help="replace Pillarbox's tables in a non-empty target"
    )


COMMANDS = [
    Command(
        ("store", "migrate"),
        "copy this install's accounts, Sieve scripts, spam learning and queue into "
        "PostgreSQL (--to postgresql --dsn DSN [--force])",
        store_migrate,
        _args,
    ),
]

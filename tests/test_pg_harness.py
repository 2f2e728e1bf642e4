"""The PostgreSQL test harness itself: a real server, one database per test, isolated."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests import pg


def test_a_test_database_is_empty_and_writable(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (n integer)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        assert conn.execute("SELECT sum(n) FROM t").fetchone() == (3,)


def test_each_test_gets_its_own_database(pg_server: pg.PgServer) -> None:
    with pg_server.database() as first, pg_server.database() as second:
        assert first != second
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE only_here (n integer)")
        with psycopg.connect(second) as conn, pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM only_here")


def test_the_server_is_private_loopback_and_not_root(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        assert row is not None and "pillarbox-pg-" in row[0]
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    # The postmaster writes its pid file as the user it runs as.
    assert Path(row[0], "postmaster.pid").stat().st_uid != 0

"""Fixtures shared by the whole test suite (each area adds its own, in its own section)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver, pg
from tests.dnsserver import DnsTestServer

# -- mail store under test ------------------------------------------------------------------
# PILLARBOX_TEST_MAILSTORE=memory (or =postgresql) runs every in-process server on the
# in-memory store (or the PostgreSQL one; see tests/pbserver.py). Tests that read or write the
# Maildir/SQLite files themselves, or run `pillarbox serve` as a child process (which always
# has the real store), carry @pytest.mark.on_disk and are skipped in that run.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "on_disk: needs the Maildir + SQLite store (skipped on the memory store)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not pbserver.on_memory():
        return
    skip = pytest.mark.skip(
        reason=f"uses the Maildir/SQLite files; this run is on {pbserver.MAILSTORE}"
    )
    for item in items:
        if item.get_closest_marker("on_disk") is not None:
            item.add_marker(skip)


# -- DNS ------------------------------------------------------------------------------------
# A real authoritative DNS server on 127.0.0.1 (UDP+TCP, free port), one per test; see
# tests/dnsserver.py. Point the code under test at it with
# DnsSettings(nameservers=(dns_server.address,), timeout=1.0).


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


# -- Pillarbox data dir and server -------------------------------------------------------------
# `settings`: a fresh dev data dir (listeners on 127.0.0.1:0) — see tests/pbserver.py.
# `server`: the real server running in a background thread on those settings, with the user
# alice@example.test (password tests.pbserver.PASSWORD). Tests that need other config build
# their own with pbserver.make_settings(tmp_path / "data", {...}) and pbserver.RunningServer.


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return pbserver.make_settings(tmp_path / "data")


@pytest.fixture
def server(settings: Settings) -> Iterator[pbserver.RunningServer]:
    pbserver.add_user(settings, "alice@example.test")
    with pbserver.RunningServer(settings) as running:
        yield running


# -- PostgreSQL ---------------------------------------------------------------------------------
# `pg_server`: a private PostgreSQL cluster per test process (tests/pg.py), skipped with the
# reason when the server binaries or the driver are missing. `pg_dsn`: a fresh database on it
# for one test, as a "postgresql://..." dsn for `[store] dsn`.


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    reason = pg.available()
    if reason is not None:
        pytest.skip(reason)
    with pg.running_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: pg.PgServer) -> Iterator[str]:
    with pg_server.database() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """The `[store]` table of a test that runs on both backends: SQLite's defaults, then a
    fresh PostgreSQL database (skipped with the reason where there is no server)."""
    if request.param == "sqlite":
        return {}
    return {"backend": "postgresql", "dsn": str(request.getfixturevalue("pg_dsn"))}

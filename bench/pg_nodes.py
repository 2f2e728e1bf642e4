"""Two nodes on PostgreSQL beside one node on SQLite, same run (issue 16): port-25 mail
into Maildir (msg/s) and IMAP LOGIN cycles over STARTTLS (per second).

Each setup is real ``pillarbox serve`` processes: one node with SQLite accounts, then two
nodes whose accounts (and queue) live in one PostgreSQL server started for the run
(tests/pg.py: Debian's binaries in a temporary dir). The load is split evenly over the
nodes; the mailbox index and the Maildirs stay per node (not shared yet), so on one
machine the figures show what the accounts' move to PostgreSQL costs per message and per
login, not a scale-out (both nodes share the same cores).

    .venv/bin/python bench/pg_nodes.py --sessions 8 --messages 100 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imapclient_async import client_tls_context, open_session
from smtp_load import run_load

from pillarbox.store.accounts import AccountError
from tests import pbserver, pg

USER = "bench@example.test"  # smtp_load's messages go to it
PASSWORD = benchlib.PASSWORD


@contextlib.contextmanager
def nodes(
    root: Path, count: int, store: dict[str, str]
) -> Iterator[list[pbserver.SubprocessServer]]:
    overrides = {
        "store": store,
        "mailauth": {"verify_inbound": False},
        "limits": {"max_connections_per_ip": 1000},
    }
    settings = [pbserver.make_settings(root / f"node{i}", overrides) for i in range(count)]
    for i, s in enumerate(settings):
        if i == 0 or store.get("backend") != "postgresql":
            with contextlib.suppress(AccountError):  # already in the shared database
                pbserver.add_user(s, USER, PASSWORD)
    running: list[pbserver.SubprocessServer] = []
    try:
        for s in settings:
            running.append(pbserver.SubprocessServer(s, wait=60))
        yield running
    finally:
        for r in running:
            r.stop()


def smtp_rate(servers: list[pbserver.SubprocessServer], sessions: int, messages: int) -> float:
    async def load() -> int:
        per_node = max(1, sessions // len(servers))
        runs = [run_load(s.port("smtp"), per_node, messages, 1, 4096) for s in servers]
        return sum(await asyncio.gather(*runs))

    started = time.perf_counter()
    sent = asyncio.run(load())
    return sent / (time.perf_counter() - started)


async def login_cycles(port: int, clients: int, seconds: float) -> float:
    """As bench/imap_login.py: connect, STARTTLS, LOGIN, LOGOUT, in a loop per client."""
    tls = client_tls_context()
    deadline = time.perf_counter() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            client = await open_session(port, USER, PASSWORD, tls=tls)
            await client.logout()
            client.close()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def login_rate(servers: list[pbserver.SubprocessServer], clients: int, seconds: float) -> float:
    async def load() -> float:
        per_node = max(1, clients // len(servers))
        rates = await asyncio.gather(
            *(login_cycles(s.port("imap"), per_node, seconds) for s in servers)
        )
        return sum(rates)

    return asyncio.run(load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="SMTP sessions, all nodes")
    parser.add_argument("--messages", type=int, default=100, help="per session")
    parser.add_argument("--clients", type=int, default=4, help="IMAP clients, all nodes")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if (reason := pg.available()) is not None:
        raise SystemExit(reason)
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="pillarbox-pgbench-") as tmp,
        pg.running_server() as db,
        db.database() as dsn,
    ):
        setups = [
            ("1 node, SQLite", 1, {}),
            ("1 node, PostgreSQL", 1, {"backend": "postgresql", "dsn": dsn}),
            ("2 nodes, PostgreSQL", 2, {"backend": "postgresql", "dsn": dsn}),
        ]
        for label, count, store in setups:
            with nodes(Path(tmp) / label.replace(" ", "_"), count, store) as servers:
                smtp_rate(servers, count, 5)  # warm-up
                smtp = smtp_rate(servers, args.sessions, args.messages)
                logins = login_rate(servers, args.clients, args.seconds)
            rows.append([label, round(smtp), round(logins, 1)])
    print(benchlib.table(["setup", "SMTP msg/s (4 KB)", "IMAP logins/s"], rows))


if __name__ == "__main__":
    main()

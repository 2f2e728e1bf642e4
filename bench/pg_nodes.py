"""Two nodes on PostgreSQL beside one node on SQLite, same run (issue 16): port-25 mail
into Maildir (msg/s), IMAP LOGIN cycles over STARTTLS (per second), and IMAP commands on
the mailbox index (per second: SELECT, a FETCH of 20 messages' FLAGS ENVELOPE
RFC822.SIZE, a SEARCH by subject, a STORE, in turn, on the INBOX the SMTP load filled).

Each setup is real ``pillarbox serve`` processes: one node with SQLite accounts and index,
then nodes whose accounts, queue and mailbox index live in one PostgreSQL server started
for the run (tests/pg.py: Debian's binaries in a temporary dir); the nodes share one mail
directory (the second node's is a link to the first's), as on a shared filesystem. The
load is split evenly over the nodes; on one machine the figures show what the move to
PostgreSQL costs per message, login and command, not a scale-out (the nodes and the
database share the same cores).

    .venv/bin/python bench/pg_nodes.py --sessions 8 --messages 100 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
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
    for other in settings[1:]:  # one mail directory, as on a shared filesystem
        shutil.rmtree(other.mail_dir, ignore_errors=True)
        other.mail_dir.symlink_to(settings[0].mail_dir, target_is_directory=True)
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


async def index_commands(port: int, clients: int, seconds: float) -> float:
    """Commands per second on the mailbox index, ``clients`` sessions of one user."""
    tls = client_tls_context()
    deadline = time.perf_counter() + seconds
    done = 0

    async def one(seed: int) -> None:
        nonlocal done
        pick = random.Random(seed)
        client = await open_session(port, USER, PASSWORD, tls=tls)
        try:
            while time.perf_counter() < deadline:
                reply = await client.command(b"SELECT INBOX")
                exists = int(reply.split(b" EXISTS", 1)[0].rsplit(b"* ", 1)[1])
                first = pick.randint(1, max(1, exists - 19))
                await client.command(
                    b"FETCH %d:%d (FLAGS ENVELOPE RFC822.SIZE)" % (first, first + 19)
                )
                await client.command(b'UID SEARCH SUBJECT "test 7"')
                await client.command(b"STORE %d FLAGS (\\Seen)" % pick.randint(1, exists))
                done += 4
        finally:
            await client.logout()
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return done / (time.perf_counter() - started)


def index_rate(servers: list[pbserver.SubprocessServer], clients: int, seconds: float) -> float:
    async def load() -> float:
        per_node = max(1, clients // len(servers))
        rates = await asyncio.gather(
            *(index_commands(s.port("imap"), per_node, seconds) for s in servers)
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
    ):
        for label, count, on_pg in [
            ("1 node, SQLite", 1, False),
            ("1 node, PostgreSQL", 1, True),
            ("2 nodes, PostgreSQL", 2, True),
        ]:
            with contextlib.ExitStack() as stack:
                store = {}
                if on_pg:  # a database of its own: each setup starts empty
                    store = {"backend": "postgresql", "dsn": stack.enter_context(db.database())}
                servers = stack.enter_context(
                    nodes(Path(tmp) / label.replace(" ", "_"), count, store)
                )
                smtp_rate(servers, count, 5)  # warm-up
                smtp = smtp_rate(servers, args.sessions, args.messages)
                logins = login_rate(servers, args.clients, args.seconds)
                commands = index_rate(servers, args.clients, args.seconds)
            rows.append([label, round(smtp), round(logins, 1), round(commands)])
    headers = ["setup", "SMTP msg/s (4 KB)", "IMAP logins/s", "IMAP index cmds/s"]
    print(benchlib.table(headers, rows))


if __name__ == "__main__":
    main()

"""Message bodies in S3 beside Maildir, same run (issue 16): port-25 mail (msg/s) and IMAP
FETCH of whole bodies (bodies/s), on one ``pillarbox serve`` node whose index is in
PostgreSQL, with the bodies in Maildir, in S3 behind the read cache, and in S3 with no
cache (every read a GET).

The S3 server is moto's (``moto_server``, a child process on loopback, the one the tests
use): a Python implementation, far slower per request than AWS or MinIO, so the S3
figures are a lower bound and the ratios say what the S3 path costs at most here. The
PostgreSQL server is tests/pg.py's (``fsync = off``). Setups run in turn, round after
round, so that load from other work on the machine falls on all of them alike; the load
average is printed with each figure.

    .venv/bin/python bench/s3_blobs.py --rounds 3 --sessions 8 --messages 100 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imapclient_async import client_tls_context, open_session
from pg_nodes import smtp_rate

from tests import pbserver, pg
from tests.ports import free_port

USER = "bench@example.test"
PASSWORD = benchlib.PASSWORD
ACCESS, SECRET = "bench", "bench-secret"


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s3_client(endpoint).list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
    )  # fmt: skip


def store_table(root: Path, dsn: str, endpoint: str, bucket: str, cache: str) -> dict[str, Any]:
    table: dict[str, Any] = {"backend": "postgresql", "dsn": dsn}
    if bucket:
        s3_client(endpoint).create_bucket(Bucket=bucket)
        root.mkdir(parents=True, exist_ok=True)
        secret = root / "s3-secret"
        secret.write_text(SECRET)
        table |= {
            "blobs": f"s3://{bucket}/mail", "s3_endpoint": endpoint, "s3_access_key": ACCESS,
            "s3_secret_key_file": str(secret), "s3_cache": cache,
        }  # fmt: skip
    return table


@contextlib.contextmanager
def node(root: Path, store: dict[str, Any]) -> Iterator[pbserver.SubprocessServer]:
    overrides = {
        "store": store,
        "mailauth": {"verify_inbound": False},
        "limits": {"max_connections_per_ip": 1000},
    }
    settings = pbserver.make_settings(root, overrides)
    pbserver.add_user(settings, USER, PASSWORD)
    server = pbserver.SubprocessServer(settings, wait=60)
    try:
        yield server
    finally:
        server.stop()


async def fetch_bodies(port: int, clients: int, seconds: float) -> float:
    """Whole bodies per second: each client, in one session, FETCHes BODY.PEEK[] of 10
    messages in turn at random places of the INBOX."""
    tls = client_tls_context()
    deadline = time.perf_counter() + seconds
    done = 0

    async def one(seed: int) -> None:
        nonlocal done
        pick = random.Random(seed)
        client = await open_session(port, USER, PASSWORD, tls=tls)
        try:
            reply = await client.command(b"SELECT INBOX")
            exists = int(reply.split(b" EXISTS", 1)[0].rsplit(b"* ", 1)[1])
            while time.perf_counter() < deadline:
                first = pick.randint(1, max(1, exists - 9))
                await client.command(b"FETCH %d:%d (BODY.PEEK[])" % (first, first + 9))
                done += 10
        finally:
            await client.logout()
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return done / (time.perf_counter() - started)


Figure = tuple[float, float, str, float, float]  # msg/s, bodies/s, load, CPU ms/msg x 2


def measure(server: pbserver.SubprocessServer, moto_pid: int, args: argparse.Namespace) -> Figure:
    """SMTP load (with the CPU the node and the S3 server spent on it), then FETCH load."""
    smtp_rate([server], 1, 5)  # warm-up
    before = load()
    cpu = cpu_now(server.proc.pid, moto_pid)
    smtp = smtp_rate([server], args.sessions, args.messages)
    used = cpu_now(server.proc.pid, moto_pid)
    sent = args.sessions * args.messages
    node_ms, s3_ms = ((u - c) * 1000 / sent for u, c in zip(used, cpu, strict=True))
    fetch = asyncio.run(fetch_bodies(server.port("imap"), args.clients, args.seconds))
    return smtp, fetch, f"{before} -> {load()}", node_ms, s3_ms


def cpu_now(node_pid: int, s3_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the node's process tree and by the S3 server."""
    return benchlib.tree_cpu_seconds([node_pid]), benchlib.tree_cpu_seconds([s3_pid])


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


SETUPS = [("Maildir", "", ""), ("S3 + cache", "cached", "512M"), ("S3, no cache", "raw", "0")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=8, help="SMTP sessions")
    parser.add_argument("--messages", type=int, default=100, help="per session")
    parser.add_argument("--clients", type=int, default=4, help="IMAP clients")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if (reason := pg.available()) is not None:
        raise SystemExit(reason)
    figures: dict[str, list[Figure]] = {label: [] for label, _, _ in SETUPS}
    with (
        tempfile.TemporaryDirectory(prefix="pillarbox-s3bench-") as tmp,
        pg.running_server() as db,
        moto_server() as (endpoint, moto_pid),
    ):
        for number in range(args.rounds):
            for label, kind, cache in SETUPS:
                root = Path(tmp) / f"{kind or 'maildir'}-{number}"
                with db.database() as dsn:
                    bucket = f"bench-{kind}-{number}" if kind else ""
                    store = store_table(root, dsn, endpoint, bucket, cache)
                    with node(root, store) as server:
                        figures[label].append(measure(server, moto_pid, args))
                smtp, fetch, during, node_ms, s3_ms = figures[label][-1]
                print(f"round {number + 1} {label}: {smtp:.0f} msg/s, {fetch:.0f} bodies/s, "
                      f"SMTP CPU ms/msg node {node_ms:.2f} S3 server {s3_ms:.2f} "
                      f"(load {during})", flush=True)  # fmt: skip
    base_smtp = sum(f[0] for f in figures["Maildir"]) / args.rounds
    base_fetch = sum(f[1] for f in figures["Maildir"]) / args.rounds
    rows = []
    for label, runs in figures.items():
        smtp = sum(f[0] for f in runs) / len(runs)
        fetch = sum(f[1] for f in runs) / len(runs)
        node_ms = sum(f[3] for f in runs) / len(runs)
        s3_ms = sum(f[4] for f in runs) / len(runs)
        rows.append(
            [label, round(smtp), f"{smtp / base_smtp:.2f}", f"{node_ms:.2f}", f"{s3_ms:.2f}",
             round(fetch), f"{fetch / base_fetch:.2f}"]
        )  # fmt: skip
    headers = ["bodies", "SMTP msg/s (4 KB)", "x Maildir", "node CPU ms/msg",
               "S3 server CPU ms/msg", "FETCH BODY[] /s", "x Maildir"]  # fmt: skip
    print(benchlib.table(headers, rows))


if __name__ == "__main__":
    main()

"""Benchmark: the first FETCH ENVELOPE after a burst of deliveries (issues #17, #18).

Delivery indexes a message with its small row only (``store.lazyparse``): the parse is
left for later. This measures what that costs the user's first look at the burst: the
real server runs in-process (``tests.pbserver``), ``--messages`` 4 KB messages are
delivered through the store's own delivery (``MailStore.deliver``, ``--concurrency`` at a
time, as SMTP sessions would), then, after ``--quiet`` seconds with no delivery and no
client, a TLS client logs in and times ``SELECT INBOX`` and ``FETCH 1:* (ENVELOPE)``.
Before lazy parsing (delivery parsed every message) that FETCH took 98-117 ms for 2,000
messages; with no quiet time it parses the messages still pending in the command.

    .venv/bin/python bench/imap_delivered.py [--messages 2000] [--quiet 0 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imap_bigbox import Client
from imap_compare import make_message

from pillarbox.store.index import INDEX_FILE
from pillarbox.store.maildir import user_maildir
from tests import pbserver

USER = "alice@example.test"


async def deliver_all(server: pbserver.RunningServer, messages: list[bytes], at_once: int) -> None:
    store = server.server.ctx.services.mail_store
    assert store is not None
    for start in range(0, len(messages), at_once):
        batch = messages[start : start + at_once]
        await asyncio.gather(*(store.deliver(USER, "INBOX", [m], sender="") for m in batch))


def pending(root: Path) -> int:
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM parse_pending").fetchone()[0])
    finally:
        conn.close()


class Run(NamedTuple):
    rate: float  # deliveries per second
    burst_cpu: float  # CPU seconds of the process per delivery, during the burst
    waited: float  # seconds between the last delivery and the LOGIN
    pending: int  # messages not parsed yet at the LOGIN
    select: float  # seconds
    fetch: float  # seconds, FETCH 1:* (ENVELOPE)
    fetch_cpu: float  # CPU seconds of the process (server and client) during that FETCH


def wait_parsed(root: Path, limit: float = 60.0) -> None:
    deadline = time.perf_counter() + limit
    while pending(root) and time.perf_counter() < deadline:
        time.sleep(0.02)


def one_run(count: int, at_once: int, quiet: str) -> Run:
    """``quiet``: seconds to wait after the burst, or "parsed" (until nothing is pending)."""
    rng = random.Random(11)
    messages = [make_message(i, rng) for i in range(count)]
    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-bench-"))
    try:
        settings = pbserver.make_settings(tmp / "data")
        pbserver.add_user(settings, USER)
        with pbserver.RunningServer(settings) as server:
            start, cpu = time.perf_counter(), time.process_time()
            server.call(deliver_all(server, messages, at_once), timeout=600)
            burst_end, burst_cpu = time.perf_counter(), time.process_time() - cpu
            rate = count / (burst_end - start)
            root = user_maildir(settings.mail_dir, USER)
            if quiet == "parsed":
                wait_parsed(root)
            else:
                time.sleep(float(quiet))
            waited = time.perf_counter() - burst_end
            left = pending(root)
            context = ssl.create_default_context(cafile=str(settings.tls.ca))
            client = Client(server.port("imaps"), context)
            try:
                client.cmd(f'LOGIN {USER} "{pbserver.PASSWORD}"')
                select, _, tagged = client.cmd("SELECT INBOX")
                assert b" OK" in tagged, tagged
                cpu = time.process_time()
                fetch, lines, tagged = client.cmd("FETCH 1:* (ENVELOPE)")
                cpu = time.process_time() - cpu
                assert b" OK" in tagged and lines == count + 1, (tagged, lines)
            finally:
                client.close()
        return Run(rate, burst_cpu / count, waited, left, select, fetch, cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--quiet", nargs="+", default=["0", "parsed"],
        help='seconds between the burst and the LOGIN, or "parsed": until nothing is pending',
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.messages} deliveries, {args.concurrency} at a time; then LOGIN, SELECT, FETCH")
    print("waited s | deliveries/s (CPU ms each) | pending at login | SELECT ms"
          " | FETCH 1:* ENVELOPE ms (CPU ms)")  # fmt: skip
    for _ in range(args.runs):
        for quiet in args.quiet:
            r = one_run(args.messages, args.concurrency, quiet)
            print(f"{r.waited:8.2f} | {r.rate:6.0f} ({r.burst_cpu * 1000:.2f}) |"
                  f" {r.pending:16d} | {r.select * 1000:9.1f} |"
                  f" {r.fetch * 1000:8.1f} ({r.fetch_cpu * 1000:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()

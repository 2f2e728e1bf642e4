"""Benchmark: a big Maildir over IMAP (SELECT, UID FETCH FLAGS, header SEARCH, memory).

Builds a Maildir of N messages (default 50,000) for alice@example.test in a fresh dev data
dir, indexes it once (timed: that is what a migration from Dovecot costs), starts the real
server in-process and times, with a raw TLS client, the commands the issue names:

    SELECT INBOX                       (Dovecot: ~0.10 s on 50,000 messages)
    UID FETCH 1:* (FLAGS)              (Dovecot: ~0.03 s)
    UID SEARCH SUBJECT / FROM          (Dovecot: ~0.1 s)

and the memory per idle connection (the server's RSS growth over many plaintext
connections waiting for a command, over many logged-in TLS connections, and what SELECT of
the big INBOX adds to them). A TLS connection costs asyncio's 256 KiB SSLProtocol read
buffer on top of the session.

    .venv/bin/python bench/imap_bigbox.py [--messages 50000] [--connections 200]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pillarbox.store.index import UserIndex
from pillarbox.store.maildir import user_maildir
from tests import pbserver

USER = "alice@example.test"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "invoice",
    "meeting",
    "report",
    "lunch",
    "update",
    "project",
    "release",
]


def build_maildir(root: Path, count: int) -> None:
    rng = random.Random(42)
    cur = root / "cur"
    cur.mkdir(parents=True, exist_ok=True)
    for sub in ("new", "tmp"):
        (root / sub).mkdir(exist_ok=True)
    base_time = 1_600_000_000
    for i in range(count):
        subject = " ".join(rng.choice(WORDS) for _ in range(4)) + f" #{i}"
        if i % 1000 == 7:
            subject += " needle"
        sender = f"user{rng.randrange(500)}@example.org"
        body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 12).encode()
        msg = (
            f"Return-Path: <{sender}>\r\n"
            "Received: from mx.example.org by mail.example.test;"
            " Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            f"From: Person {i % 500} <{sender}>\r\n"
            f"To: Alice <{USER}>\r\n"
            f"Subject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <{i}.bench@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode() + body
        flags = "S" if i % 3 else ""
        name = f"{base_time + i}.M{i}P1.bench,S={len(msg)}:2,{flags}"
        path = cur / name
        path.write_bytes(msg)
        os.utime(path, (base_time + i, base_time + i))


class Client:
    def __init__(self, port: int, context: ssl.SSLContext):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock = context.wrap_socket(sock, server_hostname=pbserver.HOSTNAME)
        self.file = self.sock.makefile("rb", buffering=1 << 14)
        self.file.readline()
        self.n = 0

    def cmd(self, text: str) -> tuple[float, int, bytes]:
        """(seconds, response lines, tagged line) for one command."""
        self.n += 1
        tag = f"t{self.n}".encode()
        start = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = 0
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                self.file.read(int(m.group(1)))
            lines += 1
            if line.startswith(tag + b" "):
                return time.perf_counter() - start, lines, line

    def close(self) -> None:
        self.sock.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def best(client: Client, command: str, runs: int = 5) -> tuple[float, int, bytes]:
    results = [client.cmd(command) for _ in range(runs)]
    return min(results, key=lambda r: r[0])


def measure_engine(root: Path) -> None:
    """The same work without sockets or client: the server's CPU cost per command."""
    from pillarbox.imap.fetch import _render_fast
    from pillarbox.imap.selected import SelectedMailbox

    index = UserIndex(root)

    def show(name: str, fn: Callable[[], object]) -> None:
        print(f"  {name:28s} {timed(fn):7.1f} ms")

    def timed(fn: Callable[[], object]) -> float:
        return min(_once(fn) for _ in range(5)) * 1000

    def _once(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    info = index.select("INBOX", True)
    view = SelectedMailbox("INBOX", True, info)
    template = "* {0} FETCH (UID {1} FLAGS ({2}))\r\n"

    def fetch_flags() -> None:
        lo = 1
        while True:
            batch = index.fetch_flags("INBOX", [(lo, 0xFFFFFFFF)], 5000)
            if not batch[4]:
                return
            _render_fast(template, batch, view)
            lo = batch[4] + 1

    print("engine only (store + rendering, no sockets):")
    show("SELECT INBOX", lambda: index.select("INBOX", True))
    show("UID FETCH 1:* (FLAGS)", fetch_flags)
    show(
        "SEARCH SUBJECT needle", lambda: index.search_uids("INBOX", ("header", "subject", "needle"))
    )
    show("SEARCH UNSEEN", lambda: index.search_uids("INBOX", ("mask", 1, False)))
    index.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-bench-"))
    settings = pbserver.make_settings(
        tmp / "data", {"limits": {"max_connections_per_ip": args.connections * 2 + 10}}
    )
    pbserver.add_user(settings, USER)
    root = user_maildir(settings.mail_dir, USER)
    t0 = time.perf_counter()
    build_maildir(root, args.messages)
    print(f"wrote {args.messages} messages in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    index = UserIndex(root)
    index.select("INBOX", True)
    index.close()
    print(f"initial index build (one-time, like a migration): {time.perf_counter() - t0:.1f} s")
    measure_engine(root)

    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    # The real `pillarbox serve` in its own process: clients never share its GIL or memory.
    with pbserver.SubprocessServer(settings) as server:
        pid = server.proc.pid
        port = server.port("imaps")
        c = Client(port, context)
        c.cmd(f'LOGIN {USER} "{pbserver.PASSWORD}"')
        first = c.cmd("SELECT INBOX")
        print(f"SELECT INBOX (first, opens the index): {first[0] * 1000:.1f} ms")
        for name, command in [
            ("SELECT INBOX", "SELECT INBOX"),
            ("EXAMINE INBOX", "EXAMINE INBOX"),
            ("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)"),
            ("FETCH 1:* (FLAGS)", "FETCH 1:* (FLAGS)"),
            ("UID SEARCH SUBJECT needle", "UID SEARCH SUBJECT needle"),
            ("UID SEARCH FROM user42@", "UID SEARCH FROM user42@"),
            ("UID SEARCH UNSEEN", "UID SEARCH UNSEEN"),
            ("STATUS INBOX (MESSAGES UNSEEN)", "STATUS INBOX (MESSAGES UNSEEN)"),
            ("FETCH 1:500 (ENVELOPE)", "FETCH 1:500 (ENVELOPE)"),
            (
                "FETCH 1:500 (BODY.PEEK[HEADER.FIELDS (From Subject Date)])",
                "FETCH 1:500 (BODY.PEEK[HEADER.FIELDS (From Subject Date)])",
            ),
            ("NOOP", "NOOP"),
        ]:
            seconds, lines, tagged = best(c, command)
            assert b" OK" in tagged, tagged
            print(f"{name:60s} {seconds * 1000:8.1f} ms  ({lines} lines)")

        # Memory per idle connection: the server process's RSS growth while N more clients
        # stay connected. Each kind is measured on its first round (a later round would reuse
        # the memory the allocator kept from the previous one and show almost nothing).
        plain = []
        before = rss_kib(pid)
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", server.port("imap")), timeout=60)
            sock.recv(1000)  # the greeting: a session waiting for its first command
            plain.append(sock)
        time.sleep(0.5)
        per_plain = (rss_kib(pid) - before) / args.connections
        print(f"server memory per idle plaintext connection (no TLS buffers): {per_plain:.1f} KiB")
        for sock in plain:
            sock.close()
        clients = []
        before = rss_kib(pid)
        for _ in range(args.connections):
            cl = Client(port, context)
            cl.cmd(f'LOGIN {USER} "{pbserver.PASSWORD}"')
            clients.append(cl)
        time.sleep(0.5)
        logged_in = rss_kib(pid)
        for cl in clients:
            cl.cmd("SELECT INBOX")
        time.sleep(0.5)
        selected = rss_kib(pid)
        n = args.connections
        print(
            f"server memory per idle TLS connection, logged in: {(logged_in - before) / n:.1f} KiB"
        )
        print(f"  ... plus SELECT INBOX ({args.messages} messages): "
              f"{(selected - logged_in) / n:.1f} KiB more")  # fmt: skip
        for cl in clients:
            cl.close()
        c.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

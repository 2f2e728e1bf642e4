"""IMAP side by side: Pillarbox next to Dovecot on the same 50,000-message Maildir.

1. A Maildir of ``--count`` messages (4 KB, varied headers: ~300 senders, subjects from a
   word list, a rare subject word "xyz", Received/List-Id/Cc on some, 70% \\Seen, some
   \\Flagged, the newest 500 still in new/) is generated once and cached under
   $BENCH_ROOT/bench-mailbox-COUNT.
2. It is copied, as a user migrating from another server would, into Dovecot's home for
   bench@bench.test (no Dovecot index files: Dovecot builds them) and into a fresh Pillarbox
   data dir (``init --dev``, ``user add``) before ``pillarbox serve`` starts, so Pillarbox
   must discover the Maildir and build its own index.
3. Timed (client wall clock, command written -> tagged OK read):
   - first open: server start (Pillarbox) and the first SELECT, then the first UID FETCH and
     SEARCHes (index and cache building);
   - warm: on fresh logged-in connections, median of ``--samples``: SELECT INBOX,
     ``UID FETCH 1:* (FLAGS)``, ``UID SEARCH HEADER Subject xyz``, ``UID SEARCH FROM "..."``,
     body searches ``UID SEARCH BODY "budget lunch schedule"`` and ``UID SEARCH TEXT xyz``,
     ``FETCH 1:* (ENVELOPE)``, ``UID SORT`` by DATE, ARRIVAL, FROM, SUBJECT and SIZE (the
     UID order checked equal), and ``STORE 1:* +FLAGS (\\Seen)`` after an untimed
     ``-FLAGS.SILENT (\\Seen)``, so that every sample renames every file (timed after all
     the read samples: a change makes the next SELECT of either server colder)
     (Pillarbox: after its full-text backfill of the copied-in Maildir has finished, which
     is timed from the end of the first-open commands; Debian's Dovecot has no fts plugin,
     so it reads every message);
   - idle connections: memory (PSS and RSS summed over the server's processes) before and
     after ``--idle`` logged-in connections, then after each also SELECTs INBOX and IDLEs;
     reported per connection;
   - mixed load (stand-in for imaptest, which Debian 12 does not package): ``--clients``
     sessions on a 1,000-message mailbox (user mixed@bench.test) for ``--seconds``, each
     looping over FETCH of flags/envelopes, body FETCH, STORE, SEARCH, APPEND,
     STORE \\Deleted + EXPUNGE and NOOP; ops/s and server CPU per op.
4. Responses are checked for agreement (EXISTS, FETCH count, SEARCH hits) between servers.

If Pillarbox advertises LOGINDISABLED on its plain port (STARTTLS required), both servers
are driven over STARTTLS (Dovecot then keeps an imap-login TLS proxy process per
connection, which its idle figure includes); ``--tls yes|no`` forces it.

Prerequisite: ``bench/setup_peers.sh`` (Dovecot on 127.0.0.1:12143).

    .venv/bin/python bench/imap_compare.py
    .venv/bin/python bench/imap_compare.py --targets dovecot --count 5000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imapclient_async import ImapClient, ImapError, client_tls_context, open_session

FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
LAST = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Thomas", "Roberts", "Walker"]
ORGS = ["example.org", "corp.test", "lists.test", "shop.test", "bank.test", "news.test"]
WORDS = [
    "invoice",
    "meeting",
    "report",
    "quarterly",
    "budget",
    "lunch",
    "schedule",
    "project",
    "deadline",
    "review",
    "draft",
    "release",
    "notes",
    "build",
    "failure",
    "success",
    "weekly",
    "summary",
    "holiday",
    "travel",
    "booking",
    "receipt",
    "order",
    "shipment",
    "delayed",
    "confirmed",
    "question",
    "answer",
    "update",
    "reminder",
    "agenda",
    "minutes",
    "proposal",
]
SEARCH_SUBJECT = "xyz"
SEARCH_FROM = "heidi.walker"
SEARCH_BODY = "budget lunch schedule"  # three body words in a row: in a few % of messages
MIXED_USER = f"mixed@{benchlib.DOMAIN}"
VMAIL = "benchmail"


# -- the mailbox ---------------------------------------------------------------------------------


def make_message(index: int, rng: random.Random, size: int = 4096) -> bytes:
    first, last, org = rng.choice(FIRST), rng.choice(LAST), rng.choice(ORGS)
    sender = f"{first.lower()}.{last.lower()}@{org}"
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
    if rng.random() < 0.002:
        words.insert(rng.randint(0, len(words)), SEARCH_SUBJECT)
    prefix = rng.choice(["", "", "", "Re: ", "Fwd: ", "[list] "])
    when = datetime.datetime.fromtimestamp(1_600_000_000 + index * 613)
    headers = []
    for hop in range(rng.randint(1, 3)):
        headers.append(
            f"Received: from mx{hop}.{org} (mx{hop}.{org} [192.0.2.{hop + 1}])\r\n"
            f"\tby mail.{benchlib.DOMAIN} with ESMTPS id {rng.getrandbits(40):010x}\r\n"
            f"\tfor <{benchlib.USER}>; {format_datetime(when.astimezone())}"
        )
    headers += [
        f'From: "{first} {last}" <{sender}>',
        f"To: Bench <{benchlib.USER}>",
        f"Subject: {prefix}{' '.join(words)}",
        f"Date: {format_datetime(when.astimezone())}",
        f"Message-ID: <{index}.{rng.getrandbits(40):x}@{org}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if rng.random() < 0.3:
        headers.append(f"Cc: {rng.choice(FIRST).lower()}@{rng.choice(ORGS)}")
    if org == "lists.test":
        headers.append(f"List-Id: <{rng.choice(WORDS)}.lists.test>")
    text = "\r\n".join(headers) + "\r\n\r\n"
    lines = []
    length = len(text)
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(line)
        length += len(line) + 2
    return (text + "\r\n".join(lines) + "\r\n").encode()[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"


def build_source(count: int, seed: int = 7) -> Path:
    """The cached source Maildir of ``count`` messages (generated on first use)."""
    root = benchlib.BENCH_ROOT / f"bench-mailbox-{count}"
    stamp = root / ".complete"
    if stamp.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    rng = random.Random(seed)
    print(f"generating {count} messages in {root}", file=sys.stderr)
    for index in range(count):
        data = make_message(index, rng)
        base = f"{1_600_000_000 + index * 613}.M{index}P1.migrated,S={len(data)}"
        if index >= count - 500:
            path = root / "new" / base
        else:
            flags = ("F" if rng.random() < 0.03 else "") + ("S" if rng.random() < 0.7 else "")
            path = root / "cur" / f"{base}:2,{flags}"
        path.write_bytes(data)
    stamp.touch()
    return root


def copy_maildir(source: Path, dest: Path, owner: str | None) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
    (dest / ".complete").unlink(missing_ok=True)
    if owner:
        subprocess.run(["chown", "-R", f"{owner}:{owner}", str(dest.parent)], check=True)


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    pids: Callable[[], list[int]]
    imaps_port: int = 0  # implicit TLS (the imaptest-like mixed load connects there)
    start_seconds: float | None = None  # Pillarbox: serve start -> greeting
    index_ready: Callable[[], bool] | None = None  # Pillarbox: full-text backfill done
    results: dict[str, Any] = field(default_factory=dict)


async def timed(coro: Awaitable[bytes]) -> tuple[float, bytes]:
    start = time.perf_counter()
    data = await coro
    return time.perf_counter() - start, data


def exists_of(data: bytes) -> int:
    match = re.search(rb"^\* (\d+) EXISTS", data, re.M)
    return int(match.group(1)) if match else -1


def search_hits(data: bytes) -> int:
    match = re.search(rb"^\* SEARCH([^\r]*)", data, re.M)
    return len(match.group(1).split()) if match else -1


def sort_order(data: bytes) -> int:
    """A checksum of the SORT answer's UID order: RFC 5256 §3 fixes the order, ties too
    (by sequence number), so two servers that agree give the same number."""
    match = re.search(rb"^\* SORT([^\r]*)", data, re.M)
    return zlib.crc32(b" ".join(match.group(1).split())) if match else -1


OPS = {
    "select": "SELECT INBOX",
    "fetch_flags": "UID FETCH 1:* (FLAGS)",
    "search_subject": f"UID SEARCH HEADER Subject {SEARCH_SUBJECT}",
    "search_from": f'UID SEARCH FROM "{SEARCH_FROM}"',
    "search_body": f'UID SEARCH BODY "{SEARCH_BODY}"',
    "search_text": f"UID SEARCH TEXT {SEARCH_SUBJECT}",
    "fetch_envelope": "FETCH 1:* (ENVELOPE)",
    "fetch_headers": "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])",
    "sort_date": "UID SORT (DATE) UTF-8 ALL",
    "sort_arrival": "UID SORT (ARRIVAL) UTF-8 ALL",
    "sort_from": "UID SORT (FROM) UTF-8 ALL",
    "sort_subject": "UID SORT (SUBJECT) UTF-8 ALL",
    "sort_size": "UID SORT (SIZE) UTF-8 ALL",
    # Last: it changes the mailbox. Every message is made unseen first (untimed), so each
    # sample renames the files of all of them, as the first one does.
    "store_seen": "STORE 1:* +FLAGS (\\Seen)",
}
# Untimed commands sent before an op, to give every sample the same starting state.
BEFORE: dict[str, str] = {"store_seen": "STORE 1:* -FLAGS.SILENT (\\Seen)"}


WRITES = ("store_seen",)  # timed after every read sample: a change makes the next SELECT cold


async def run_ops(
    client: ImapClient, names: tuple[str, ...] = tuple(OPS)
) -> dict[str, tuple[float, int]]:
    """Time each of OPS on one logged-in connection; (seconds, count check) per op."""
    out: dict[str, tuple[float, int]] = {}
    for name in names:
        command = OPS[name]
        if name in BEFORE:
            await client.command(BEFORE[name])
        seconds, data = await timed(client.command(command))
        if name == "select":
            check = exists_of(data)
        elif name in ("fetch_flags", "fetch_envelope", "fetch_headers", "store_seen"):
            check = data.count(b" FETCH (")
        elif name.startswith("sort_"):
            check = sort_order(data)
        else:
            check = search_hits(data)
        out[name] = (seconds, check)
    return out


async def first_and_warm(target: Target, args: argparse.Namespace, tls: Any) -> None:
    client = await open_session(target.port, benchlib.USER, benchlib.PASSWORD, tls=tls)
    target.results["first"] = await run_ops(client)
    await client.logout()
    if target.index_ready is not None:
        waited = time.perf_counter()
        await asyncio.to_thread(wait_until, target.index_ready)
        target.results["backfill"] = time.perf_counter() - waited
    samples: list[dict[str, tuple[float, int]]] = []
    # Fresh connections, logged in before the timing (and the profile) starts.
    clients = [
        await open_session(target.port, benchlib.USER, benchlib.PASSWORD, tls=tls)
        for _ in range(args.samples)
    ]
    reads = tuple(n for n in OPS if n not in WRITES)
    with profiler(target, args, "warm"):
        for client in clients:
            samples.append(await run_ops(client, reads))
        for client, sample in zip(clients, samples, strict=True):
            await client.command("SELECT INBOX")
            sample.update(await run_ops(client, WRITES))
    for client in clients:
        await client.logout()
    target.results["warm"] = {
        name: (statistics.median(s[name][0] for s in samples), samples[-1][name][1]) for name in OPS
    }


def profiler(target: Target, args: argparse.Namespace, phase: str) -> benchlib.Profiler:
    py_spy = args.py_spy if target.name == "pillarbox" else None
    return benchlib.Profiler(py_spy, target.pids()[0], args.profile_dir / f"imap-{phase}.txt")


async def idle_memory(
    target: Target, args: argparse.Namespace, tls: Any, key: str = "idle"
) -> None:
    # One connection first, so lazily started helpers (Dovecot's auth, config) are running.
    warm = await open_session(target.port, MIXED_USER, benchlib.PASSWORD, tls=tls)
    await warm.command("SELECT INBOX")
    await warm.logout()
    await asyncio.sleep(1)
    base = benchlib.tree_memory(target.pids())
    clients: list[ImapClient] = []
    semaphore = asyncio.Semaphore(10)

    async def one() -> ImapClient:
        async with semaphore:
            return await open_session(target.port, MIXED_USER, benchlib.PASSWORD, tls=tls)

    clients = list(await asyncio.gather(*(one() for _ in range(args.idle))))
    await asyncio.sleep(2)
    logged_in = benchlib.tree_memory(target.pids())
    tags = []
    for client in clients:
        await client.command("SELECT INBOX")
        tag = b"I%06d" % client.counter
        client.writer.write(tag + b" IDLE\r\n")
        line = await asyncio.wait_for(client.reader.readline(), 30)
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE refused: {line!r}")
        tags.append(tag)
    await asyncio.sleep(2)
    idling = benchlib.tree_memory(target.pids())
    for client in clients:
        client.writer.write(b"DONE\r\n")
        client.close()
    n = args.idle
    target.results[key] = {
        "base": base,
        "auth_pss": (logged_in.pss - base.pss) / n,
        "auth_rss": (logged_in.rss - base.rss) / n,
        "idle_pss": (idling.pss - base.pss) / n,
        "idle_rss": (idling.rss - base.rss) / n,
        "processes": idling.processes - base.processes,
    }


# -- mixed load (imaptest stand-in) ------------------------------------------------------------

# imaptest's default profile (its src/client-state.c state table): each session runs the
# states in this order, each with the given probability (%), some again with a second
# probability; LOGOUT at 100% means every session logs out after one round and a new one
# connects and logs in, so logins are part of the mix. COPY needs a destination mailbox
# (imaptest's copybox=, unset by default: 0 here); SEARCH, SORT, NOOP are 0 by default,
# IDLE is ours (imaptest has none). ``--state NAME=PERCENT`` changes one, as imaptest's
# command line does.
IMAPTEST_STATES: dict[str, tuple[int, int]] = {
    "list": (50, 0),
    "status": (50, 0),
    "select": (100, 0),
    "fetch": (100, 0),
    "fetch2": (100, 30),
    "search": (0, 0),
    "store": (50, 0),
    "delete": (100, 0),
    "expunge": (100, 0),
    "append": (100, 5),
    "noop": (0, 0),
    "idle": (0, 0),
}
# imaptest's FETCH picks 1-4 of these, a quarter of them a HEADER.FIELDS of 1-4 fields...
FETCH_FIELDS = ("UID", "FLAGS", "ENVELOPE", "INTERNALDATE", "BODY", "BODYSTRUCTURE", "RFC822.SIZE")
HEADER_FIELDS = ("From", "To", "Cc", "Subject", "References", "In-Reply-To", "Message-ID",
                 "Delivered-To")  # fmt: skip
# ...and its FETCH2 one message with one of these.
FETCH2_ITEMS = ("BODY.PEEK[HEADER]", "RFC822.HEADER", "BODY.PEEK[]", "BODY.PEEK[1]",
                "BODY.PEEK[TEXT]")  # fmt: skip
# Flags its STORE sets and clears (imaptest draws from the system flags and keywords).
STORE_FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Label1", "$Label2", "$Label3")
MIXED_EVENTS = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE)\r$", re.M)


@dataclass
class MixedCounts:
    ok: int = 0
    no: int = 0
    logins: int = 0
    connect_seconds: float = 0.0  # TCP + TLS handshake + greeting
    by_state: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # client wall time per state

    def add(self, state: str, status: bytes, seconds: float = 0.0) -> None:
        self.by_state[state] = self.by_state.get(state, 0) + 1
        self.seconds[state] = self.seconds.get(state, 0.0) + seconds
        if status == b"NO":  # a message another session expunged meanwhile, say
            self.no += 1
        else:
            self.ok += 1


def status_of(data: bytes) -> bytes:
    """OK, NO or BAD: the word after the tag on a response's last line."""
    return data.rsplit(b"\r\n", 2)[-2].split(b" ", 2)[1]


@dataclass
class MixedView:
    """What one imaptest client knows of the selected mailbox: its message count, kept up
    to date from the EXISTS and EXPUNGE responses (sequence numbers come from it)."""

    client: ImapClient
    messages: int = 0

    async def run(self, counts: MixedCounts, state: str, line: str) -> bytes:
        started = time.perf_counter()
        data = await self.client.command(line, check=False)
        status = status_of(data)
        if status == b"BAD":
            raise ImapError(f"{line[:60]!r}: {data[-300:]!r}")
        self.track(data)
        counts.add(state, status, time.perf_counter() - started)
        return data

    def track(self, data: bytes) -> None:
        for match in MIXED_EVENTS.finditer(data):
            if match.group(2) == b"EXISTS":
                self.messages = int(match.group(1))
            else:
                self.messages -= 1


def random_seqset(rng: random.Random, messages: int, count: int) -> str:
    """``count`` random sequence numbers of 1..messages as a sequence set (imaptest's
    client_get_random_seq_range: duplicates merge, runs become ranges)."""
    seqs = sorted({rng.randint(1, messages) for _ in range(count)})
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], 0]:
        if seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = seq
    return ",".join(parts)


def fetch_items(rng: random.Random) -> str:
    items = []
    for _ in range(rng.randint(1, 4)):
        if rng.randrange(4):
            items.append(rng.choice(FETCH_FIELDS))
        else:
            fields = " ".join(rng.choice(HEADER_FIELDS) for _ in range(rng.randint(1, 4)))
            items.append(f"BODY.PEEK[HEADER.FIELDS ({fields})]")
    return " ".join(items)


def random_flags(rng: random.Random) -> str:
    return " ".join(rng.sample(STORE_FLAGS, rng.randint(1, 3)))


def chance(rng: random.Random, percent: int) -> bool:
    return rng.randrange(100) < percent


async def imaptest_round(
    view: MixedView, rng: random.Random, counts: MixedCounts, states: dict[str, tuple[int, int]],
    keep: int,
) -> None:  # fmt: skip
    """One session's round of imaptest's default state machine after LOGIN, up to LOGOUT."""

    def wanted(state: str) -> bool:
        return chance(rng, states[state][0])

    def again(state: str) -> bool:
        return chance(rng, states[state][1])

    if wanted("list"):
        await view.run(counts, "list", 'LIST "" *')
    if wanted("status"):
        await view.run(counts, "status", 'STATUS "INBOX" (MESSAGES UNSEEN RECENT)')
    await view.run(counts, "select", 'SELECT "INBOX"')
    n = view.messages
    if n and wanted("fetch"):
        seqs = random_seqset(rng, n, min(n, 100))
        await view.run(counts, "fetch", f"FETCH {seqs} ({fetch_items(rng)})")
    if n and wanted("fetch2"):
        while True:
            item = rng.choice(FETCH2_ITEMS)
            await view.run(counts, "fetch2", f"FETCH {rng.randint(1, view.messages)} (UID {item})")
            if not again("fetch2") or not view.messages:
                break
    if view.messages and wanted("search"):
        await view.run(counts, "search", rng.choice(["SEARCH UNSEEN", 'SEARCH FROM "grace"']))
    n = view.messages
    if n and wanted("store"):
        count = rng.randrange(n if n < 10 else min(n // 5, 50)) if n > 1 else 0
        if count:
            sign = rng.choice(["+", "-", ""])
            silent = ".SILENT" if rng.randrange(2) else ""
            seqs = random_seqset(rng, n, count)
            line = f"STORE {seqs} {sign}FLAGS{silent} ({random_flags(rng)})"
            await view.run(counts, "store", line)
    n = view.messages
    if n and wanted("delete"):
        # imaptest keeps the mailbox near msgs= messages: it deletes a random share of
        # what is above that, and a few when it is near.
        count = rng.randrange(n - keep) if n > keep + 5 else rng.randrange(5)
        if count:
            silent = ".SILENT" if rng.randrange(2) else ""
            seqs = random_seqset(rng, n, count)
            await view.run(counts, "delete", f"STORE {seqs} +FLAGS{silent} (\\Deleted)")
    if wanted("expunge"):
        await view.run(counts, "expunge", "EXPUNGE")
    if wanted("noop"):
        await view.run(counts, "noop", "NOOP")
    if wanted("idle"):
        await idle_once(view, counts)
    while view.messages < keep and wanted("append"):
        message = make_message(rng.randint(0, 100_000), rng, 4096)
        flags = random_flags(rng) if rng.randrange(2) else ""
        started = time.perf_counter()
        data = await view.client.append("INBOX", message, flags)
        view.track(data)
        counts.add("append", status_of(data), time.perf_counter() - started)
        if not again("append"):
            break
    await view.run(counts, "logout", "LOGOUT")


async def idle_once(view: MixedView, counts: MixedCounts, seconds: float = 0.05) -> None:
    """IDLE (RFC 2177) for a moment, then DONE; the updates it brought are tracked."""
    client = view.client
    client.counter += 1
    tag = b"I%06d" % client.counter
    client.writer.write(tag + b" IDLE\r\n")
    line = await asyncio.wait_for(client.reader.readline(), 30)
    if not line.startswith(b"+"):
        raise ImapError(f"IDLE refused: {line!r}")
    await asyncio.sleep(seconds)
    client.writer.write(b"DONE\r\n")
    _, data = await client._read_until_tagged(tag)
    view.track(data)
    counts.add("idle", status_of(data))


async def imaptest_client(
    target: Target, tls: Any, stop_at: float, rng: random.Random, counts: MixedCounts,
    states: dict[str, tuple[int, int]], keep: int,
) -> None:  # fmt: skip
    """imaptest's loop for one of its clients: connect over implicit TLS, LOGIN, one round,
    LOGOUT; again until the time is up."""
    while time.perf_counter() < stop_at:
        port = target.imaps_port if tls is not None else target.port
        started = time.perf_counter()
        client = await ImapClient.connect(port, tls=tls)
        counts.connect_seconds += time.perf_counter() - started
        started = time.perf_counter()
        await client.login(MIXED_USER, benchlib.PASSWORD)
        counts.logins += 1
        counts.add("login", b"OK", time.perf_counter() - started)
        try:
            await imaptest_round(MixedView(client), rng, counts, states, keep)
        finally:
            client.close()


MIXED_WEIGHTS = {
    "fetch_env": 30,
    "fetch_body": 20,
    "store": 15,
    "search": 10,
    "append": 10,
    "expunge": 10,
    "noop": 5,
}


async def mixed_session(port: int, tls: Any) -> tuple[ImapClient, list[int]]:
    """Logged in, INBOX selected, its UIDs known: set up before the clock starts."""
    client = await open_session(port, MIXED_USER, benchlib.PASSWORD, tls=tls)
    await client.command("SELECT INBOX")
    data = await client.command("UID SEARCH ALL")
    match = re.search(rb"^\* SEARCH([^\r]*)", data, re.M)
    return client, [int(u) for u in match.group(1).split()] if match else [1]


async def mixed_client(
    client: ImapClient,
    uids: list[int],
    stop_at: float,
    rng: random.Random,
    counts: dict[str, int],
) -> None:
    """The earlier stand-in (``--mix session``): one long session per client."""
    ops, weights = list(MIXED_WEIGHTS), list(MIXED_WEIGHTS.values())
    while time.perf_counter() < stop_at:
        op = rng.choices(ops, weights)[0]
        uid = rng.choice(uids)
        if op == "fetch_env":
            low = rng.choice(uids)
            await client.command(f"UID FETCH {low}:{low + 10} (UID FLAGS RFC822.SIZE ENVELOPE)")
        elif op == "fetch_body":
            await client.command(f"UID FETCH {uid} (BODY.PEEK[])")
        elif op == "store":
            sign = rng.choice("+-")
            await client.command(f"UID STORE {uid} {sign}FLAGS (\\Seen \\Flagged)")
        elif op == "search":
            await client.command(rng.choice(["UID SEARCH UNSEEN", 'UID SEARCH FROM "grace"']))
        elif op == "append":
            reply = await client.append("INBOX", make_message(rng.randint(0, 100_000), rng, 4096))
            new = re.search(rb"APPENDUID \d+ (\d+)", reply)
            if new:
                uids.append(int(new.group(1)))
        elif op == "expunge":
            await client.command(f"UID STORE {uid} +FLAGS (\\Deleted)")
            await client.command("EXPUNGE")
            counts["total"] += 1  # two commands
        else:
            await client.command("NOOP")
        counts["total"] += 1
    await client.logout()


def mixed_states(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    states = dict(IMAPTEST_STATES)
    for item in args.state:
        name, _, percent = item.partition("=")
        if name not in states:
            raise SystemExit(f"--state: no state {name!r} (states: {', '.join(states)})")
        states[name] = (int(percent), states[name][1])
    return states


async def mixed_load(target: Target, args: argparse.Namespace, tls: Any) -> None:
    pids = target.pids()
    start = time.perf_counter()
    if args.mix == "imaptest":
        counts = MixedCounts()
        states = mixed_states(args)
        # Untimed: the first open of the copied-in mailbox (both servers build an index).
        first = await open_session(target.port, MIXED_USER, benchlib.PASSWORD, tls=tls)
        await first.command("SELECT INBOX")
        await first.command("FETCH 1:* (FLAGS ENVELOPE)")
        await first.logout()
        cpu0 = benchlib.tree_cpu_seconds(pids)
        client0 = sum(os.times()[:2])
        with profiler(target, args, "mixed"):
            start = time.perf_counter()
            stop_at = start + args.seconds
            await asyncio.gather(*(
                imaptest_client(target, tls, stop_at, random.Random(i), counts, states, args.msgs)
                for i in range(args.clients)
            ))  # fmt: skip
            elapsed = time.perf_counter() - start
        ops = counts.ok + counts.no
        extra = {
            "no": counts.no,
            "logins": counts.logins,
            "by_state": counts.by_state,
            "ms_by_state": {k: counts.seconds[k] * 1000 / n for k, n in counts.by_state.items()},
            "connect_ms": counts.connect_seconds * 1000 / max(counts.logins, 1),
        }
    else:
        total = {"total": 0}
        sessions = await asyncio.gather(
            *(mixed_session(target.port, tls) for _ in range(args.clients))
        )
        cpu0 = benchlib.tree_cpu_seconds(pids)
        client0 = sum(os.times()[:2])
        with profiler(target, args, "mixed"):
            start = time.perf_counter()
            stop_at = start + args.seconds
            await asyncio.gather(
                *(
                    mixed_client(client, uids, stop_at, random.Random(i), total)
                    for i, (client, uids) in enumerate(sessions)
                )
            )
            elapsed = time.perf_counter() - start
        ops = total["total"]
        extra = {}
    target.results["mixed"] = {
        "ops": ops,
        "rate": ops / elapsed,
        "cpu_ms": (benchlib.tree_cpu_seconds(pids) - cpu0) * 1000 / max(ops, 1),
        "client_ms": (sum(os.times()[:2]) - client0) * 1000 / max(ops, 1),
        **extra,
    }


# -- orchestration -----------------------------------------------------------------------------


def mixed_source(args: argparse.Namespace) -> Path:
    return build_source(args.mixed_count, seed=11)


def prepare_dovecot(args: argparse.Namespace, source: Path) -> Target:
    peers = benchlib.Peers()
    master = peers.dovecot_master_pid()
    home = peers.dovecot_dir / "home" / benchlib.DOMAIN
    # Dovecot caches nothing about a removed mailbox in its long-lived processes, but make
    # sure no imap process of a previous run still has the old one open.
    subprocess.run(
        ["doveadm", "-c", str(peers.dovecot_dir / "dovecot.conf"), "kick", "*"],
        capture_output=True,
        check=False,
    )
    copy_maildir(source, home / "bench" / "Maildir", VMAIL)
    copy_maildir(mixed_source(args), home / "mixed" / "Maildir", VMAIL)
    return Target("dovecot", peers.dovecot_port, lambda: [master], peers.dovecot_imaps_port)


def prepare_pillarbox(args: argparse.Namespace, source: Path) -> tuple[Target, benchlib.Pillarbox]:
    pb = benchlib.Pillarbox(
        benchlib.BENCH_ROOT / "bench-pillarbox" / "imap-data",
        users=(benchlib.USER, MIXED_USER),
        extra={} if args.full_text else {"store": {"full_text_index": "false"}},
    )
    copy_maildir(source, pb.user_maildir("bench"), None)
    copy_maildir(mixed_source(args), pb.user_maildir("mixed"), None)
    start = time.perf_counter()
    pb.start("imap", timeout=600)
    pid = pb.pid
    index = pb.user_maildir("bench") / "pillarbox-index.sqlite"
    target = Target("pillarbox", pb.ports["imap"], lambda: [pid], pb.ports["imaps"])
    target.start_seconds = time.perf_counter() - start
    if args.full_text:  # switched off, the pending list only grows: nothing to wait for
        target.index_ready = lambda: full_text_pending(index) == 0
    return target, pb


def wait_until(ready: Callable[[], bool], poll: float = 0.5) -> None:
    while not ready():
        time.sleep(poll)


def full_text_pending(index: Path) -> int:
    """Messages the server's full-text index has still to take (read from outside)."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM fts_pending").fetchone()[0])
    except sqlite3.OperationalError:  # no full-text index in this build: nothing to wait for
        return 0
    finally:
        conn.close()


async def needs_tls(port: int) -> bool:
    client = await ImapClient.connect(port)
    caps = await client.capability()
    await client.logout()
    return b"LOGINDISABLED" in caps


def run_target(target: Target, args: argparse.Namespace, tls: Any) -> None:
    benchlib.renice(target.pids(), args.nice)
    if not args.skip_warm:
        print(f"{target.name}: first open and warm timings", file=sys.stderr)
        asyncio.run(first_and_warm(target, args, tls))
    if args.idle <= 0:
        pass
    else:
        print(f"{target.name}: {args.idle} idle connections", file=sys.stderr)
        asyncio.run(idle_memory(target, args, tls))
    if args.idle > 0 and tls is not None and target.name == "dovecot":
        # For reference: without TLS Dovecot needs no imap-login proxy per connection.
        asyncio.run(idle_memory(target, args, None, key="idle_plain"))


def run_mixed(targets: list[Target], args: argparse.Namespace, tls: Any) -> None:
    """``--mixed-rounds`` of the mixed load, the targets taking turns (background load then
    hits them alike); the median round's figures, the spread kept for the report."""
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for round_no in range(args.mixed_rounds):
        for target in targets:
            print(
                f"{target.name}: mixed load ({args.mix}) round {round_no + 1}, "
                f"{args.clients} clients, {args.seconds}s",
                file=sys.stderr,
            )
            asyncio.run(mixed_load(target, args, tls))
            runs[target.name].append(target.results["mixed"])
    for target in targets:
        done = sorted(runs[target.name], key=lambda run: run["rate"])
        median = dict(done[len(done) // 2])
        median["cpu_ms"] = statistics.median(run["cpu_ms"] for run in done)
        median["rates"] = [run["rate"] for run in runs[target.name]]
        median["cpus"] = [run["cpu_ms"] for run in runs[target.name]]
        target.results["mixed"] = median


def print_profiles(args: argparse.Namespace) -> None:
    if args.py_spy:
        for phase in ("warm", "mixed"):
            path = args.profile_dir / f"imap-{phase}.txt"
            if path.exists():
                print(benchlib.summarize_profile(path), file=sys.stderr)


def _verdict(ours: float | None, theirs: float | None, lower_is_better: bool) -> list[str]:
    """[ratio pillarbox/dovecot, which is better] for one measure."""
    if not ours or not theirs:
        return ["-", ""]
    better = ours < theirs if lower_is_better else ours > theirs
    return [benchlib.ratio(ours, theirs), "pillarbox" if better else "dovecot"]


def report(targets: list[Target], args: argparse.Namespace, tls_used: bool) -> str:
    by_name = {t.name: t for t in targets}
    names = [t.name for t in targets]
    pair = names == ["dovecot", "pillarbox"]
    lines = [
        f"IMAP, {args.count}-message Maildir (4 KB messages), "
        f"{'STARTTLS' if tls_used else 'plaintext'} connections, warm = median of {args.samples}",
        f"machine: {benchlib.machine_summary()}; servers and client at nice {args.nice}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "",
    ]
    # (label, value per target, lower is better)
    measures: list[tuple[str, list[float | None], bool]] = []
    for phase in ("first", "warm"):
        for op in OPS:
            values = [by_name[n].results.get(phase, {}).get(op, (None,))[0] for n in names]
            measures.append((f"{phase} {op} (s)", values, True))
    for t in targets:
        if t.start_seconds is not None:
            values = [t.start_seconds if n == t.name else None for n in names]
            measures.append((f"{t.name} serve start to greeting (s)", values, True))
        if "backfill" in t.results:
            values = [t.results["backfill"] if n == t.name else None for n in names]
            measures.append((f"{t.name} full-text backfill after first open (s)", values, True))
    for label, key in (
        ("idle logged-in, PSS KB/conn", "auth_pss"),
        ("idle logged-in, RSS KB/conn", "auth_rss"),
        ("SELECT+IDLE, PSS KB/conn", "idle_pss"),
        ("SELECT+IDLE, RSS KB/conn", "idle_rss"),
    ):
        if not all("idle" in by_name[n].results for n in names):
            break
        values = [by_name[n].results["idle"][key] / 1024 for n in names]
        measures.append((label, values, True))
    for t in targets:
        plain = t.results.get("idle_plain")
        if plain:
            values = [plain["auth_pss"] / 1024 if n == t.name else None for n in names]
            measures.append((f"{t.name} plaintext idle logged-in, PSS KB/conn", values, True))
            values = [plain["idle_pss"] / 1024 if n == t.name else None for n in names]
            measures.append((f"{t.name} plaintext SELECT+IDLE, PSS KB/conn", values, True))
    mixed = [by_name[n].results.get("mixed") for n in names]
    if all(mixed):
        measures.append(("mixed ops/s", [m["rate"] for m in mixed if m], False))
        measures.append(("mixed server CPU ms/op", [m["cpu_ms"] for m in mixed if m], True))
        measures.append(("mixed client CPU ms/op", [m["client_ms"] for m in mixed if m], True))
    rows: list[list[object]] = []
    for label, values, lower in measures:
        if all(v is None for v in values):
            continue
        row: list[object] = [label, *["" if v is None else v for v in values]]
        if pair and "client" not in label and None not in values:
            row += _verdict(values[1], values[0], lower)
        rows.append(row)
    headers = ["measure", *names] + (["pillarbox/dovecot", "better"] if pair else [])
    rows = [r + [""] * (len(headers) - len(r)) for r in rows]
    lines.append(benchlib.table(headers, rows))
    checks = []
    for phase in ("first", "warm"):
        for op in OPS:
            seen = {
                n: by_name[n].results[phase][op][1] for n in names if phase in by_name[n].results
            }
            if len(set(seen.values())) > 1:
                checks.append(f"DISAGREE {phase} {op}: {seen}")
    for t in targets:
        mixed_run = t.results.get("mixed", {})
        if "by_state" in mixed_run:
            lines.append(
                f"{t.name} mixed ({args.mix}): {mixed_run['ops']} commands, "
                f"{mixed_run['logins']} logins, {mixed_run['no']} NO; by state "
                + ", ".join(f"{k} {v}" for k, v in sorted(mixed_run["by_state"].items()))
            )
            lines.append(
                f"{t.name} mixed rounds: ops/s "
                + ", ".join(f"{x:.0f}" for x in mixed_run["rates"])
                + "; server CPU ms/op "
                + ", ".join(f"{x:.2f}" for x in mixed_run["cpus"])
            )
            lines.append(
                f"{t.name} mixed, client ms per command: connect+TLS "
                f"{mixed_run['connect_ms']:.1f}, "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(mixed_run["ms_by_state"].items()))
            )
    if any("warm" not in by_name[n].results for n in names):
        return "\n".join(lines)
    warm = {n: by_name[n].results["warm"] for n in names}
    lines.append("")
    lines.append(
        "result checks: "
        + ("; ".join(checks) if checks else "all servers agree")
        + "; EXISTS "
        + str({n: w["select"][1] for n, w in warm.items()})
        + ", FETCH responses "
        + str({n: w["fetch_flags"][1] for n, w in warm.items()})
        + ", subject/from hits "
        + str({n: (w["search_subject"][1], w["search_from"][1]) for n, w in warm.items()})
        + ", body/text hits "
        + str({n: (w["search_body"][1], w["search_text"][1]) for n, w in warm.items()})
        + ", ENVELOPE/STORE responses "
        + str({n: (w["fetch_envelope"][1], w["store_seen"][1]) for n, w in warm.items()})
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--targets", nargs="+", default=["dovecot", "pillarbox"], choices=["dovecot", "pillarbox"]
    )
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--mixed-count", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="mixed load; 0 skips it")
    parser.add_argument(
        "--mix",
        choices=["imaptest", "session"],
        default="imaptest",
        help="mixed load: imaptest's default profile (a login per round, over implicit TLS "
        "when TLS is used) or the earlier one long session per client",
    )
    parser.add_argument("--mixed-rounds", type=int, default=3, help="interleaved mixed rounds")
    parser.add_argument("--msgs", type=int, default=30, help="imaptest's msgs= (mailbox size kept)")
    parser.add_argument(
        "--state", action="append", default=[], metavar="NAME=PERCENT",
        help="imaptest state probability, e.g. search=20 idle=10",
    )  # fmt: skip
    parser.add_argument(
        "--skip-warm", action="store_true",
        help="no first-open and warm timings on the big mailbox (idle and mixed only)",
    )  # fmt: skip
    parser.add_argument("--tls", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument(
        "--no-full-text",
        dest="full_text",
        action="store_false",
        help="Pillarbox with [store] full_text_index = false (body searches read every message)",
    )
    parser.add_argument(
        "--nice", type=int, default=-10, help="priority of servers and load generator (0: leave)"
    )
    parser.add_argument("--py-spy", metavar="PATH", help="profile Pillarbox with this py-spy")
    parser.add_argument("--profile-dir", type=Path, default=benchlib.BENCH_ROOT / "bench-profiles")
    args = parser.parse_args()
    benchlib.renice([os.getpid()], args.nice)

    source = build_source(args.count)
    targets: list[Target] = []
    pillarbox: benchlib.Pillarbox | None = None
    try:
        if "dovecot" in args.targets:
            targets.append(prepare_dovecot(args, source))
        if "pillarbox" in args.targets:
            if benchlib.has_component("imap"):
                target, pillarbox = prepare_pillarbox(args, source)
                targets.append(target)
            else:
                print("pillarbox: no imap component wired in app.py yet; skipped", file=sys.stderr)
        use_tls = args.tls == "yes"
        if args.tls == "auto" and pillarbox is not None:
            use_tls = asyncio.run(needs_tls(pillarbox.ports["imap"]))
        tls = client_tls_context() if use_tls else None
        for target in targets:
            run_target(target, args, tls)
        if args.seconds > 0:
            run_mixed(targets, args, tls)
        print_profiles(args)
    finally:
        if pillarbox is not None:
            pillarbox.close()
    print(report(targets, args, use_tls))


if __name__ == "__main__":
    main()

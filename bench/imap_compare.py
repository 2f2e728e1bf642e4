"""IMAP side by side, issue 17's figures: Pillarbox next to Dovecot 2.3, both over IMAPS.

``bench/imap_compare.py --all`` (the default: every phase) measures every figure issue 17
names, in one run, and prints one table of ratios (Pillarbox/Dovecot) with the run's date,
code commit and load averages. Each figure's rounds take turns between the two servers
(interleaved), so background load on the shared machine hits both alike; the table shows
medians. Every connection is implicit TLS (IMAPS, port 993's protocol) on both servers.

Phases (``--phases`` picks some; what is timed, and how):

- ``first``: a Maildir of ``--count`` messages (4 KB, varied headers: ~300 senders,
  subjects from a word list, a rare subject word "xyz", Received/List-Id/Cc on some, 70%
  \\Seen, some \\Flagged, the newest 500 still in new/; generated once, cached under
  $BENCH_ROOT/bench-mailbox-COUNT) is copied in fresh for **each** round, as a user
  migrating from another server would bring it: into Dovecot's home for bench@bench.test
  (no Dovecot index files: Dovecot builds them), and into Pillarbox's data dir with the
  server stopped, then ``pillarbox serve`` started (its start is reported, not counted).
  Pillarbox is stopped while Dovecot takes its turn, so no background parse of ours runs
  meanwhile. Timed, client wall clock from writing the command to reading its tagged OK:
  the first SELECT INBOX, then the first ``UID FETCH 1:* (FLAGS)`` and header SEARCHes.
  After the last round the script waits for Pillarbox's background parse and full-text
  backfill of the copied-in mailbox (reported, timed from the end of the first commands).
- ``warm``: ``--samples`` fresh logged-in connections per server, alternating: SELECT,
  ``UID FETCH 1:* (FLAGS)``, ``FETCH 1:* (ENVELOPE)``, ``FETCH 1:*
  (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])``, header ``SEARCH HEADER Subject`` and
  ``SEARCH FROM``, body ``SEARCH BODY`` and ``SEARCH TEXT`` (Debian's Dovecot has no fts
  plugin: it reads every message; Pillarbox answers from its FTS5 index), with ``--sort``
  the five ``UID SORT``s; then, after all read samples (a change makes the next SELECT of
  either server colder), ``STORE 1:* +FLAGS (\\Seen)`` after an untimed ``-FLAGS.SILENT``,
  so that every sample changes every message. Client wall clock, median.
- ``append``: APPEND rate as the mailbox grows: ``--appends`` 4 KB messages one after the
  other (each waits for its tagged OK) into a new empty mailbox, then as many into the
  ``--count``-message INBOX; messages per second of client wall clock, per round.
- ``login``: login cycles (connect, TLS handshake, LOGIN, LOGOUT) with 1 and 10 clients
  for ``--login-seconds`` per round (``bench/imap_login.py``'s loop), user
  mixed@bench.test; cycles per second of client wall clock, server CPU per cycle
  (user+system of the server's whole process tree, from /proc) reported beside.
- ``mixed``: imaptest's default profile, ``--clients`` clients for ``--seconds`` on a
  1,000-message mailbox (mixed@bench.test), ``--mixed-rounds`` rounds. imaptest itself is
  not packaged in Debian 12 and its source cannot be fetched from this machine (package
  registries only), so this is a stand-in reimplemented from imaptest's state table
  (src/client-state.c: LOGIN, LIST 50%, STATUS 50%, SELECT, FETCH, FETCH2, STORE 50%,
  STORE \\Deleted, EXPUNGE, APPEND below msgs=30, LOGOUT, a new TLS connection and LOGIN
  every round; not pipelined as imaptest is). Ops/s (client wall clock), server CPU per
  op, and the login cycles per second within it.
- ``idle``: memory per idle connection: PSS and RSS summed over each server's processes
  before and after ``--idle`` logged-in connections that SELECT INBOX and IDLE; then, for
  Pillarbox alone (Dovecot runs two processes per TLS connection), ``bench/imap_idle_mem.py``'s
  measure of ``--idle-many`` such connections on a fresh server, with and without
  COMPRESS=DEFLATE, against the absolute target (20 KB per connection).

Responses are checked for agreement (EXISTS, FETCH count, SEARCH hits) between servers.

Prerequisite: ``bench/setup_peers.sh`` (Dovecot on 127.0.0.1:12143, IMAPS :12993).

    .venv/bin/python bench/imap_compare.py --all
    .venv/bin/python bench/imap_compare.py --phases warm --count 5000 --samples 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import random
import re
import resource
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
import imap_idle_mem
import imap_login
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
    """A fresh copy of ``source`` at ``dest``: new directories, the message files hard
    links to the cached ones. Both servers treat a Maildir file as immutable (a flag
    change is a rename, an expunge an unlink of their own link), so each still sees a
    mailbox it has never indexed; linking takes seconds where copying 50,000 files took
    a minute a round on the shared machine (the files are in the page cache either way)."""
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(source), str(dest)], check=True)
    (dest / ".complete").unlink(missing_ok=True)
    if owner:
        subprocess.run(["chown", "-R", f"{owner}:{owner}", str(dest.parent)], check=True)


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    imaps_port: int  # every session of this script is implicit TLS (IMAPS)
    pids: Callable[[], list[int]]
    results: dict[str, Any] = field(default_factory=dict)


TLS = client_tls_context()


async def session(target: Target, user: str = benchlib.USER) -> ImapClient:
    """A logged-in IMAPS connection (TLS from the first byte, then LOGIN)."""
    return await open_session(target.imaps_port, user, benchlib.PASSWORD, tls=TLS, implicit=True)


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
    "fetch_envelope": "FETCH 1:* (ENVELOPE)",
    "fetch_headers": "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])",
    "search_subject": f"UID SEARCH HEADER Subject {SEARCH_SUBJECT}",
    "search_from": f'UID SEARCH FROM "{SEARCH_FROM}"',
    "search_body": f'UID SEARCH BODY "{SEARCH_BODY}"',
    "search_text": f"UID SEARCH TEXT {SEARCH_SUBJECT}",
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
FIRST_OPS = ("select", "fetch_flags", "search_subject", "search_from")
SORTS = tuple(name for name in OPS if name.startswith("sort_"))
WRITES = ("store_seen",)  # timed after every read sample: a change makes the next SELECT cold


async def run_ops(client: ImapClient, names: tuple[str, ...]) -> dict[str, tuple[float, int]]:
    """Time each of ``names`` on one logged-in connection; (seconds, count check) per op."""
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


def profiler(target: Target, args: argparse.Namespace, phase: str) -> benchlib.Profiler:
    py_spy = args.py_spy if target.name == "pillarbox" else None
    return benchlib.Profiler(py_spy, target.pids()[0], args.profile_dir / f"imap-{phase}.txt")


async def idle_memory(target: Target, count: int) -> dict[str, float]:
    """Memory per connection (bytes) of ``count`` logged-in IMAPS connections, then of the
    same after each SELECTs INBOX and IDLEs: PSS and RSS over the server's process tree."""
    # One connection first, so lazily started helpers (Dovecot's auth, config) are running.
    warm = await session(target, MIXED_USER)
    await warm.command("SELECT INBOX")
    await warm.logout()
    await asyncio.sleep(1)
    base = benchlib.tree_memory(target.pids())
    semaphore = asyncio.Semaphore(10)

    async def one() -> ImapClient:
        async with semaphore:
            return await session(target, MIXED_USER)

    clients = list(await asyncio.gather(*(one() for _ in range(count))))
    await asyncio.sleep(2)
    logged_in = benchlib.tree_memory(target.pids())
    for client in clients:
        await client.command("SELECT INBOX")
        tag = b"I%06d" % client.counter
        client.writer.write(tag + b" IDLE\r\n")
        line = await asyncio.wait_for(client.reader.readline(), 30)
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE refused: {line!r}")
    await asyncio.sleep(2)
    idling = benchlib.tree_memory(target.pids())
    for client in clients:
        client.writer.write(b"DONE\r\n")
        client.close()
    return {
        "auth_pss": (logged_in.pss - base.pss) / count,
        "auth_rss": (logged_in.rss - base.rss) / count,
        "idle_pss": (idling.pss - base.pss) / count,
        "idle_rss": (idling.rss - base.rss) / count,
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
    target: Target, stop_at: float, rng: random.Random, counts: MixedCounts,
    states: dict[str, tuple[int, int]], keep: int,
) -> None:  # fmt: skip
    """imaptest's loop for one of its clients: connect over implicit TLS, LOGIN, one round,
    LOGOUT; again until the time is up."""
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        client = await ImapClient.connect(target.imaps_port, tls=TLS)
        counts.connect_seconds += time.perf_counter() - started
        started = time.perf_counter()
        await client.login(MIXED_USER, benchlib.PASSWORD)
        counts.logins += 1
        counts.add("login", b"OK", time.perf_counter() - started)
        try:
            await imaptest_round(MixedView(client), rng, counts, states, keep)
        finally:
            client.close()


def mixed_states(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    states = dict(IMAPTEST_STATES)
    for item in args.state:
        name, _, percent = item.partition("=")
        if name not in states:
            raise SystemExit(f"--state: no state {name!r} (states: {', '.join(states)})")
        states[name] = (int(percent), states[name][1])
    return states


async def mixed_load(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """One round of the imaptest stand-in on ``target``: figures of the round."""
    pids = target.pids()
    counts = MixedCounts()
    states = mixed_states(args)
    # Untimed: the first open of the copied-in mailbox (both servers build an index).
    first = await session(target, MIXED_USER)
    await first.command("SELECT INBOX")
    await first.command("FETCH 1:* (FLAGS ENVELOPE)")
    await first.logout()
    cpu0 = benchlib.tree_cpu_seconds(pids)
    client0 = sum(os.times()[:2])
    with profiler(target, args, "mixed"):
        start = time.perf_counter()
        stop_at = start + args.seconds
        await asyncio.gather(*(
            imaptest_client(target, stop_at, random.Random(i), counts, states, args.msgs)
            for i in range(args.clients)
        ))  # fmt: skip
        elapsed = time.perf_counter() - start
    ops = counts.ok + counts.no
    return {
        "ops": ops,
        "rate": ops / elapsed,
        "logins_per_s": counts.logins / elapsed,
        "cpu_ms": (benchlib.tree_cpu_seconds(pids) - cpu0) * 1000 / max(ops, 1),
        "client_ms": (sum(os.times()[:2]) - client0) * 1000 / max(ops, 1),
        "no": counts.no,
        "logins": counts.logins,
        "by_state": counts.by_state,
        "ms_by_state": {k: counts.seconds[k] * 1000 / n for k, n in counts.by_state.items()},
        "connect_ms": counts.connect_seconds * 1000 / max(counts.logins, 1),
    }


# -- the figures ---------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table: samples per server, the load when each was taken."""

    label: str
    unit: str
    method: str
    target: str = ""  # what issue 17 asks of the ratio: "<= 1.0x", ">= 2x", "<= 20 KB"
    higher_is_better: bool = False
    values: dict[str, list[float]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def add(self, server: str, value: float) -> None:
        self.values.setdefault(server, []).append(value)
        self.loads.append(os.getloadavg()[0])

    def median(self, server: str) -> float | None:
        values = self.values.get(server)
        return statistics.median(values) if values else None

    def ratio(self) -> float | None:
        ours, theirs = self.median("pillarbox"), self.median("dovecot")
        return ours / theirs if ours is not None and theirs else None

    def met(self) -> str:
        """Whether the target holds: a ratio target is read as ">= N" or "<= N" times."""
        match = re.fullmatch(r"([<>]=) ([\d.]+)(x| KB)", self.target)
        if not match:
            return ""
        value = self.ratio() if match.group(3) == "x" else self.median("pillarbox")
        if value is None:
            return ""
        limit = float(match.group(2))
        ok = value >= limit if match.group(1) == ">=" else value <= limit
        return "yes" if ok else "**no**"


class Figures:
    def __init__(self) -> None:
        self.rows: dict[str, Figure] = {}
        self.checks: dict[str, dict[str, set[int]]] = {}  # answers that must agree

    def get(self, key: str, label: str, unit: str, method: str, target: str = "",
            higher_is_better: bool = False) -> Figure:  # fmt: skip
        if key not in self.rows:
            self.rows[key] = Figure(label, unit, method, target, higher_is_better)
        return self.rows[key]

    def check(self, key: str, server: str, value: int) -> None:
        self.checks.setdefault(key, {}).setdefault(server, set()).add(value)


WALL = "client wall time, command written to tagged OK"
OP_LABELS = {
    "select": ("SELECT INBOX", "<= 1.0x"),
    "fetch_flags": ("`UID FETCH 1:* (FLAGS)`", "<= 1.0x"),
    "fetch_envelope": ("`FETCH 1:* (ENVELOPE)`", "<= 1.0x"),
    "fetch_headers": ("`FETCH 1:* BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]`", "<= 1.0x"),
    "search_subject": ("header `SEARCH HEADER Subject xyz`", "<= 1.0x"),
    "search_from": ('header `SEARCH FROM "heidi.walker"`', "<= 1.0x"),
    "search_body": ('body `SEARCH BODY "budget lunch schedule"`', "<= 0.1x"),
    "search_text": ("body `SEARCH TEXT xyz`", "<= 0.1x"),
    "store_seen": ("`STORE 1:* +FLAGS (\\Seen)`", "<= 1.0x"),
}


def op_label(name: str) -> tuple[str, str]:
    return OP_LABELS.get(name, (f"`{OPS[name]}`", ""))


# -- the suite -------------------------------------------------------------------------------------

PHASES = ("first", "warm", "append", "login", "mixed", "idle")


def git_commit() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=benchlib.REPO, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


class Suite:
    """Dovecot (always running, bench/setup_peers.sh) and a ``pillarbox serve`` child, both
    holding the same mailboxes, and the figures measured on them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.figures = Figures()
        self.source = build_source(args.count)
        self.peers = benchlib.Peers()
        self.names = list(args.targets)
        self.dovecot: Target | None = None
        self.pb: benchlib.Pillarbox | None = None
        self.pillarbox: Target | None = None
        self.copied = False  # the big mailbox is in place on both (the first phase did it)
        self.profiled: set[str] = set()

    # -- servers

    def dovecot_home(self, local: str) -> Path:
        return self.peers.dovecot_dir / "home" / benchlib.DOMAIN / local / "Maildir"

    def kick_dovecot(self) -> None:
        """No imap process of Dovecot keeps a mailbox we are about to replace open."""
        conf = self.peers.dovecot_dir / "dovecot.conf"
        subprocess.run(["doveadm", "-c", str(conf), "kick", "*"], capture_output=True, check=False)

    def setup(self) -> None:
        mixed = build_source(self.args.mixed_count, seed=11)
        if "dovecot" in self.names:
            master = self.peers.dovecot_master_pid()
            self.kick_dovecot()
            copy_maildir(mixed, self.dovecot_home("mixed"), VMAIL)
            self.dovecot = Target("dovecot", self.peers.dovecot_imaps_port, lambda: [master])
            benchlib.renice([master], self.args.nice)
        if "pillarbox" in self.names:
            self.pb = benchlib.Pillarbox(
                benchlib.BENCH_ROOT / "bench-pillarbox" / "imap-data",
                users=(benchlib.USER, MIXED_USER),
                extra={} if self.args.full_text else {"store": {"full_text_index": "false"}},
            )
            copy_maildir(mixed, self.pb.user_maildir("mixed"), None)

    def targets(self, turn: int = 0) -> list[Target]:
        """The servers in the order of this turn (alternating from turn to turn)."""
        present = [t for t in (self.dovecot, self.pillarbox) if t is not None]
        return present if turn % 2 == 0 else present[::-1]

    def start_pillarbox(self) -> float:
        """Start ``pillarbox serve``; seconds from exec to its first IMAP greeting."""
        assert self.pb is not None
        started = time.perf_counter()
        self.pb.start("imap", timeout=600)
        seconds = time.perf_counter() - started
        pid = self.pb.pid
        self.pillarbox = Target("pillarbox", self.pb.ports["imaps"], lambda: [pid])
        benchlib.renice([pid], self.args.nice)
        return seconds

    def ensure_started(self) -> None:
        """Both servers up with the big mailbox opened once (a phase run without
        ``first``: an untimed first SELECT, so that what follows is warm)."""
        fresh = not self.copied
        if self.pb is not None and (self.pb.proc is None or self.pb.proc.poll() is not None):
            if fresh:
                copy_maildir(self.source, self.pb.user_maildir("bench"), None)
            self.start_pillarbox()
        if self.dovecot is not None and fresh:
            self.kick_dovecot()
            copy_maildir(self.source, self.dovecot_home("bench"), VMAIL)
        self.copied = True
        if fresh:
            for target in self.targets():
                asyncio.run(self.select_once(target))

    @staticmethod
    async def select_once(target: Target) -> None:
        client = await session(target)
        await client.command("SELECT INBOX")
        await client.logout()

    def index_pending(self) -> int:
        """Messages Pillarbox has still to parse or to put in its full-text index (read
        from outside, from its SQLite file); 0 when the tables do not exist."""
        assert self.pb is not None
        path = self.pb.user_maildir("bench") / "pillarbox-index.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            total = 0
            for table in ("parse_pending", "fts_pending"):
                with contextlib.suppress(sqlite3.OperationalError):
                    total += int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            return total
        finally:
            conn.close()

    def wait_for_index(self) -> float:
        started = time.perf_counter()
        while self.pb is not None and self.index_pending():
            time.sleep(0.5)
        return time.perf_counter() - started

    def close(self) -> None:
        if self.pb is not None:
            self.pb.close()

    def profile(self, target: Target, phase: str) -> contextlib.AbstractContextManager[object]:
        """py-spy on Pillarbox for its last turn of a phase (``--py-spy``)."""
        return profiler(target, self.args, phase)

    # -- phases

    def run(self) -> None:
        self.setup()
        for phase in PHASES:
            if phase in self.args.phases:
                print(f"== {phase} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
                getattr(self, f"phase_{phase}")()

    def phase_first(self) -> None:
        """First SELECT (and first FETCH, SEARCH) of a freshly copied-in Maildir, per round."""
        for round_no in range(self.args.rounds):
            if self.dovecot is not None:
                if self.pb is not None:
                    self.pb.stop()  # nothing of ours runs beside Dovecot's turn
                self.kick_dovecot()
                copy_maildir(self.source, self.dovecot_home("bench"), VMAIL)
                self.first_ops(self.dovecot)
            if self.pb is not None:
                self.pb.stop()
                copy_maildir(self.source, self.pb.user_maildir("bench"), None)
                seconds = self.start_pillarbox()
                self.figures.get(
                    "serve_start", "Pillarbox: `serve` start to first greeting", "s",
                    "client wall time, exec to the IMAP greeting (not in the first SELECT)",
                ).add("pillarbox", seconds)  # fmt: skip
                assert self.pillarbox is not None
                self.first_ops(self.pillarbox)
            print(f"   first round {round_no + 1} done", file=sys.stderr, flush=True)
        self.copied = True
        if self.pb is not None:
            self.figures.get(
                "backfill", "Pillarbox: background parse + full-text backfill after it", "s",
                "wall time from the end of the first commands until nothing is pending",
            ).add("pillarbox", self.wait_for_index())  # fmt: skip

    def first_ops(self, target: Target) -> None:
        async def go() -> dict[str, tuple[float, int]]:
            client = await session(target)
            try:
                return await run_ops(client, FIRST_OPS)
            finally:
                await client.logout()

        for name, (seconds, check) in asyncio.run(go()).items():
            label, target_ratio = op_label(name)
            if name == "select":
                target_ratio = "<= 2x"
            method = WALL + "; a fresh copy of the Maildir each round, no index files"
            self.figures.get(
                f"first_{name}", f"first {label} after copying in", "s", method,
                target_ratio if name == "select" else "",
            ).add(target.name, seconds)  # fmt: skip
            self.figures.check(f"first_{name}", target.name, check)

    def phase_warm(self) -> None:
        self.ensure_started()
        if self.pb is not None:
            self.wait_for_index()
        reads = tuple(n for n in OPS if n not in WRITES and (self.args.sort or n not in SORTS))
        for phase_ops, key in ((reads, "reads"), (WRITES, "writes")):
            for sample in range(self.args.samples):
                for target in self.targets(sample):
                    last = sample == self.args.samples - 1
                    self.warm_sample(target, phase_ops, f"warm-{key}" if last else "")

    def warm_sample(self, target: Target, names: tuple[str, ...], profile: str) -> None:
        async def go() -> dict[str, tuple[float, int]]:
            client = await session(target)  # logged in before the clock and profile start
            try:
                if names[0] != "select":
                    await client.command("SELECT INBOX")
                if not profile:
                    return await run_ops(client, names)
                with self.profile(target, profile):
                    return await run_ops(client, names)
            finally:
                await client.logout()

        for name, (seconds, check) in asyncio.run(go()).items():
            label, target_ratio = op_label(name)
            method = WALL + f"; fresh connection, median of {self.args.samples}"
            if name in ("search_body", "search_text"):
                method += "; Pillarbox's FTS5 index, Dovecot without fts (reads every message)"
            self.figures.get(f"warm_{name}", f"warm {label}", "s", method, target_ratio).add(
                target.name, seconds
            )
            self.figures.check(f"warm_{name}", target.name, check)

    def phase_append(self) -> None:
        """APPEND rate into an empty mailbox, then into the big INBOX."""
        self.ensure_started()
        rng = random.Random(5)
        messages = [make_message(100_000 + i, rng) for i in range(self.args.appends)]
        for round_no in range(self.args.rounds):
            for target in self.targets(round_no):
                empty, big = asyncio.run(self.append_rates(target, messages, round_no))
                method = (
                    f"client wall time of {len(messages)} 4 KB APPENDs one after the other "
                    "(each waits for its tagged OK)"
                )
                self.figures.get(
                    "append_empty", "APPEND rate into an empty mailbox", "msg/s", method,
                    ">= 1.0x", True,
                ).add(target.name, empty)  # fmt: skip
                self.figures.get(
                    "append_big", f"APPEND rate into the {self.args.count:,}-message INBOX",
                    "msg/s", method, ">= 1.0x", True,
                ).add(target.name, big)  # fmt: skip
                self.figures.get(
                    "append_drop", "APPEND rate at the big INBOX / into the empty mailbox",
                    "ratio", "the two rows above, per server", ">= 1.0x", True,
                ).add(target.name, big / empty)  # fmt: skip

    async def append_rates(
        self, target: Target, messages: list[bytes], round_no: int
    ) -> tuple[float, float]:
        client = await session(target)
        box = f"Grow{round_no}"
        try:
            await client.command(f'DELETE "{box}"', check=False)
            await client.command(f'CREATE "{box}"')
            rates = []
            for mailbox in (box, "INBOX"):
                started = time.perf_counter()
                for message in messages:
                    await client.append(mailbox, message)
                rates.append(len(messages) / (time.perf_counter() - started))
            await client.command(f'DELETE "{box}"', check=False)
            return rates[0], rates[1]
        finally:
            await client.logout()

    def phase_login(self) -> None:
        self.ensure_started()
        # One untimed cycle each first: Dovecot starts its auth process, Pillarbox its
        # credential cache.
        for target in self.targets():
            asyncio.run(imap_login._cycles(target.imaps_port, True, 1, 0.2, MIXED_USER))
        for clients in (1, 10):
            for round_no in range(self.args.rounds):
                for target in self.targets(round_no):
                    cpu0 = benchlib.tree_cpu_seconds(target.pids())
                    done, elapsed = asyncio.run(imap_login._cycles(
                        target.imaps_port, True, clients, self.args.login_seconds, MIXED_USER
                    ))  # fmt: skip
                    cpu = benchlib.tree_cpu_seconds(target.pids()) - cpu0
                    method = (
                        f"cycles (connect, TLS, LOGIN, LOGOUT) per second of client wall "
                        f"time, {self.args.login_seconds:g} s per round"
                    )
                    self.figures.get(
                        f"login_{clients}", f"login cycles/s, {clients} client(s)", "1/s",
                        method, ">= 1.0x", True,
                    ).add(target.name, done / elapsed)  # fmt: skip
                    self.figures.get(
                        f"login_{clients}_cpu", f"server CPU per login cycle, {clients} client(s)",
                        "ms", "user+system of the server's process tree (/proc) per cycle",
                    ).add(target.name, cpu * 1000 / max(done, 1))  # fmt: skip

    def phase_mixed(self) -> None:
        self.ensure_started()
        args = self.args
        for round_no in range(args.mixed_rounds):
            for target in self.targets(round_no):
                print(f"   mixed {target.name} round {round_no + 1}", file=sys.stderr, flush=True)
                result = asyncio.run(mixed_load(target, args))
                target.results.setdefault("mixed", []).append(result)
                how = f"imaptest stand-in, {args.clients} clients, {args.seconds:g} s"
                self.figures.get(
                    "mixed_ops", "mixed load: ops/s", "1/s",
                    f"{how}; commands answered per second of client wall time", ">= 1.0x", True,
                ).add(target.name, result["rate"])  # fmt: skip
                self.figures.get(
                    "mixed_cpu", "mixed load: server CPU per op", "ms",
                    f"{how}; user+system of the server's process tree (/proc) per command",
                    "<= 1.0x",
                ).add(target.name, result["cpu_ms"])  # fmt: skip
                self.figures.get(
                    "mixed_logins", "mixed load: login cycles/s", "1/s",
                    f"{how}; every round of a client is a new TLS connection and LOGIN",
                    ">= 2x", True,
                ).add(target.name, result["logins_per_s"])  # fmt: skip

    def phase_idle(self) -> None:
        self.ensure_started()
        args = self.args
        for target in self.targets():
            memory = asyncio.run(idle_memory(target, args.idle))
            method = (
                f"{args.idle} IMAPS connections, LOGIN, SELECT INBOX, IDLE; growth of the "
                "server's process tree (/proc smaps_rollup) per connection"
            )
            for key, label in (("idle_pss", "PSS"), ("idle_rss", "RSS")):
                self.figures.get(
                    f"idle_{label}", f"idle connection memory, {label}", "KB", method, "<= 1.0x"
                ).add(target.name, memory[key] / 1024)  # fmt: skip
        if self.pb is None or args.idle_many <= 0:
            return
        self.pb.stop()  # the measure starts a fresh server of its own
        for variant in ("tls-idle", "tls-idle-deflate"):
            print(f"   {args.idle_many} x {variant}", file=sys.stderr, flush=True)
            result = imap_idle_mem.measure(
                variant, args.idle_many, benchlib.BENCH_ROOT / "bench-idle-mem"
            )
            label = "TLS" + (" + COMPRESS=DEFLATE" if variant.endswith("deflate") else "")
            method = (
                f"bench/imap_idle_mem.py: {args.idle_many:,} connections (LOGIN, SELECT, "
                "IDLE) on one fresh server, its growth per connection"
            )
            for key, value in (("PSS", result.pss), ("RSS", result.rss)):
                self.figures.get(
                    f"many_{variant}_{key}",
                    f"Pillarbox: {args.idle_many:,} idle connections, {label}, {key}",
                    "KB", method, "<= 20 KB",
                ).add("pillarbox", value)  # fmt: skip


# -- the report ------------------------------------------------------------------------------------


def report(suite: Suite, started: str, load_start: tuple[float, float, float]) -> str:
    args = suite.args
    load_end = os.getloadavg()
    loads = [x for f in suite.figures.rows.values() for x in f.loads]
    lines = [
        f"IMAP, Pillarbox vs Dovecot over IMAPS, {args.count:,}-message Maildir (4 KB messages)",
        f"run {started} - {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"code {git_commit()}, load average (1 min) {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end, {min(loads, default=0):.1f}-{max(loads, default=0):.1f} "
        f"while measuring",
        f"machine: {benchlib.machine_summary()}; servers and client at nice {args.nice}",
        "",
    ]
    rows: list[list[object]] = []
    for fig in suite.figures.rows.values():
        dv, pb = fig.median("dovecot"), fig.median("pillarbox")
        ratio = fig.ratio()
        rows.append([
            fig.label, fig.unit,
            "" if dv is None else dv, "" if pb is None else pb,
            "" if ratio is None else f"{ratio:.2f}x", fig.target, fig.met(),
            f"{min(fig.loads):.1f}-{max(fig.loads):.1f}" if fig.loads else "",
            len(fig.values.get("pillarbox", fig.values.get("dovecot", []))),
        ])  # fmt: skip
    headers = ["figure", "unit", "dovecot", "pillarbox", "pillarbox/dovecot", "target", "met",
               "load", "n"]  # fmt: skip
    lines.append(benchlib.table(headers, rows))
    lines.append("")
    lines.append("methods:")
    seen = set()
    for fig in suite.figures.rows.values():
        if fig.method not in seen:
            seen.add(fig.method)
            lines.append(f"- {fig.label}: {fig.method}")
    lines.append("")
    disagree = [
        f"{key}: {answers}"
        for key, answers in suite.figures.checks.items()
        if len(set().union(*answers.values())) > 1
    ]
    agreed = {k: sorted(set().union(*a.values())) for k, a in suite.figures.checks.items()}
    lines.append(
        "answers: " + ("DISAGREE " + "; ".join(disagree) if disagree else "both servers agree")
        + " (" + ", ".join(f"{k} {v[0] if len(v) == 1 else v}" for k, v in agreed.items()) + ")"
    )  # fmt: skip
    for target in suite.targets():
        for result in target.results.get("mixed", [])[-1:]:
            lines.append(
                f"{target.name} mixed, last round: {result['ops']} commands, "
                f"{result['logins']} logins, {result['no']} NO; client ms per command: "
                f"connect+TLS {result['connect_ms']:.1f}, "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(result["ms_by_state"].items()))
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every phase (the default)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument(
        "--targets", nargs="+", default=["dovecot", "pillarbox"], choices=["dovecot", "pillarbox"]
    )
    parser.add_argument("--count", type=int, default=50_000, help="messages in the big INBOX")
    parser.add_argument("--rounds", type=int, default=2, help="first-open, APPEND, login rounds")
    parser.add_argument("--samples", type=int, default=3, help="warm samples per server")
    parser.add_argument("--sort", action="store_true", help="time the UID SORTs too (warm)")
    parser.add_argument("--appends", type=int, default=200, help="APPENDs per mailbox and round")
    parser.add_argument("--login-seconds", type=float, default=5.0)
    parser.add_argument("--mixed-count", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=10, help="mixed load clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="mixed load round length")
    parser.add_argument("--mixed-rounds", type=int, default=2, help="interleaved mixed rounds")
    parser.add_argument("--msgs", type=int, default=30, help="imaptest's msgs= (mailbox size kept)")
    parser.add_argument(
        "--state", action="append", default=[], metavar="NAME=PERCENT",
        help="imaptest state probability, e.g. search=20 idle=10",
    )  # fmt: skip
    parser.add_argument("--idle", type=int, default=100, help="idle connections per server")
    parser.add_argument(
        "--idle-many", type=int, default=2000, help="Pillarbox idle connections (0: skip)"
    )
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.idle, args.idle_many) + 512
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, want)), hard))
    started = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
    load_start = os.getloadavg()
    suite = Suite(args)
    try:
        suite.run()
    finally:
        suite.close()
    if args.py_spy:
        for path in sorted(args.profile_dir.glob("imap-*.txt")):
            print(benchlib.summarize_profile(path), file=sys.stderr)
    print(report(suite, started, load_start))


if __name__ == "__main__":
    main()

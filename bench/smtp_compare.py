"""Inbound SMTP, end to end: Pillarbox's port-25 listener next to Postfix, same load, same run.

One asyncio load generator (raw sockets, PIPELINING when offered, like a real MTA's client)
opens ``--sessions`` concurrent sessions, each sending ``--messages`` messages of ``--size``
bytes (varied headers, unique Message-ID) to bench@bench.test. Two variants:

- ``reuse``: ``--per-connection`` messages per connection (MAIL/RCPT/DATA repeated, then QUIT);
- ``single``: one message per connection (connect, EHLO, one transaction, QUIT).

A message counts when its file is in the recipient's Maildir (new/ or cur/): the clock stops
when the last one appears, not when the last 250 arrives. CPU per message is the server's
CPU time (user+system, from /proc) spent during the run divided by the messages: for Postfix
the whole tree under its master (smtpd, cleanup, trivial-rewrite, qmgr, virtual, postlogd,
anvil... including processes that exited during the run); for Pillarbox its process tree
(the main process and its intake workers).
The load generator's own CPU is printed too: it shares the 2 cores with the server.

Targets: ``postfix``; ``pillarbox`` with inbound SPF/DKIM/DMARC verification off (the same
work as a Postfix without milters); ``pillarbox-auth``, the default MX configuration, with
SPF and DMARC looked up for every message on a loopback DNS server (whose CPU is shown apart);
``postfix-auth``, the second Postfix of setup_peers.sh, which verifies like a Debian Postfix
MX (OpenDKIM milter, policyd-spf policy service) against its own loopback DNS server on
127.0.0.153:53, its CPU counted with OpenDKIM's.
Runs are interleaved between targets and repeated; the report shows the median and range.
Between rounds each Maildir is emptied by moving its files aside, not by deleting them
(see ``set_aside``). ``--baseline CHECKOUT`` also runs every Pillarbox target from another
checkout (``git worktree add --detach /tmp/base COMMIT``), as ``TARGET@base``, in the
same interleaved rounds: a change measured against the code before it under the same load.

Prerequisite: ``bench/setup_peers.sh`` (private Postfix on 127.0.0.1:12525). Pillarbox is
started here from a fresh ``pillarbox init --dev`` data dir on free ports. See
docs/BENCHMARKS.md for the method and the figures.

    .venv/bin/python bench/smtp_compare.py                 # both targets, both variants
    .venv/bin/python bench/smtp_compare.py --targets postfix --messages 50
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
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
]
IO_TIMEOUT = 30.0


# -- messages ----------------------------------------------------------------------------------


def make_message(index: int, size: int, rng: random.Random) -> bytes:
    """An RFC 5322 message of about ``size`` bytes, CRLF, dot-stuffed, ending in CRLF.CRLF."""
    sender = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@{benchlib.SENDER_DOMAIN}"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    date = format_datetime(datetime.datetime.fromtimestamp(1_700_000_000 + index * 37).astimezone())
    headers = [
        f"From: {rng.choice(WORDS).title()} <{sender}>",
        f"To: Bench <{benchlib.USER}>",
        f"Subject: {subject} #{index}",
        f"Date: {date}",
        f"Message-ID: <{index}.{rng.getrandbits(48):x}@{benchlib.SENDER_DOMAIN}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if rng.random() < 0.5:
        headers.append(f"X-Mailer: bench/{rng.randint(1, 9)}.{rng.randint(0, 9)}")
    if rng.random() < 0.3:
        headers.append(f"In-Reply-To: <{index - 1}.ref@{benchlib.SENDER_DOMAIN}>")
    text = "\r\n".join(headers) + "\r\n\r\n"
    lines = []
    length = len(text)
    while length < size - 5:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
        if rng.random() < 0.05:
            line = "." + line  # exercise dot-stuffing
        line = line[: max(1, size - 5 - length - 2)]
        lines.append(line)
        length += len(line) + 2
    body = text + "\r\n".join(lines) + "\r\n"
    stuffed = body.replace("\r\n.", "\r\n..")
    return stuffed.encode() + b".\r\n"


def envelope_sender(message: bytes) -> bytes:
    start = message.index(b"<") + 1
    return message[start : message.index(b">", start)]


# -- SMTP client -------------------------------------------------------------------------------


class SmtpError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
        if not line:
            raise SmtpError("connection closed")
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> list[bytes]:
    got, lines = await read_reply(reader)
    if got != code:
        raise SmtpError(f"{what}: expected {code}, got {b' / '.join(lines)!r}")
    return lines


async def smtp_connection(port: int, messages: list[bytes], pipelining: bool) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    try:
        await expect(reader, 220, "banner")
        writer.write(b"EHLO mx.client.test\r\n")
        ehlo = await expect(reader, 250, "EHLO")
        can_pipeline = pipelining and any(line[4:].upper() == b"PIPELINING" for line in ehlo)
        for message in messages:
            envelope = [
                b"MAIL FROM:<" + envelope_sender(message) + b">\r\n",
                b"RCPT TO:<" + benchlib.USER.encode() + b">\r\n",
                b"DATA\r\n",
            ]
            if can_pipeline:  # RFC 2920: send the group, then read the replies in order
                writer.write(b"".join(envelope))
                await expect(reader, 250, "MAIL")
                await expect(reader, 250, "RCPT")
                await expect(reader, 354, "DATA")
            else:
                for command, code in zip(envelope, (250, 250, 354), strict=True):
                    writer.write(command)
                    await expect(reader, code, command.decode().split()[0])
            writer.write(message)
            await expect(reader, 250, "end of data")
        writer.write(b"QUIT\r\n")
        await expect(reader, 221, "QUIT")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run_load(port: int, batches: list[list[list[bytes]]], pipelining: bool) -> float:
    """Each session sends its list of connections' messages in order; returns accept time."""
    start = time.perf_counter()

    async def session(connections: list[list[bytes]]) -> None:
        for messages in connections:
            await smtp_connection(port, messages, pipelining)

    await asyncio.gather(*(session(c) for c in batches))
    return time.perf_counter() - start


async def wait_for_files(maildir: Path, target: int, limit: float) -> float:
    """Seconds from now until ``target`` messages are in the Maildir."""
    deadline = time.perf_counter() + limit
    while benchlib.count_messages(maildir) < target:
        if time.perf_counter() > deadline:
            raise SmtpError(
                f"only {benchlib.count_messages(maildir)} of {target} messages in {maildir}"
            )
        await asyncio.sleep(0.005)
    return time.perf_counter()


# -- one measured run --------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    variant: str
    messages: int
    seconds: float
    accept_seconds: float
    server_cpu: float
    client_cpu: float
    extra_cpu: float  # e.g. Pillarbox's DNS server, not counted as the server's
    load: float  # 1-minute load average at the end: other work on the machine skews rates

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu * 1000 / self.messages


@dataclass
class Target:
    name: str
    port: int
    maildir: Path
    pids: Callable[[], list[int]]
    extra_cpu: Callable[[], float] = lambda: 0.0


def split(messages: list[bytes], sessions: int, per_connection: int) -> list[list[list[bytes]]]:
    batches: list[list[list[bytes]]] = [[] for _ in range(sessions)]
    per_session = [messages[i::sessions] for i in range(sessions)]
    for slot, mine in enumerate(per_session):
        batches[slot] = [mine[i : i + per_connection] for i in range(0, len(mine), per_connection)]
    return batches


TRASH = benchlib.BENCH_ROOT / "bench-smtp-trash"
_set_aside = itertools.count()


def set_aside(maildir: Path) -> None:
    """Empty ``maildir`` for the next round by moving its subdirectories into ``TRASH``
    (deleted once, after the last round), not by deleting the files.

    Deleting is not neutral on this machine's ext4 (no journal): the allocator skips an
    inode freed within the last minute (``recently_deleted`` in fs/ext4/ialloc.c) one by
    one, so 3,000 files deleted just before a round made every file the next round
    created scan past them, 19% of Pillarbox's main process CPU in ``perf``. An MX does
    not delete thousands of files just before a burst; both servers now start each round
    as they would in service. The new directories keep the old ones' owner and mode
    (Postfix's ``virtual`` writes as its own user).
    """
    TRASH.mkdir(parents=True, exist_ok=True)
    aside = TRASH / f"{maildir.name}-{os.getpid()}-{next(_set_aside)}"
    aside.mkdir()
    for sub in ("new", "cur", "tmp"):
        path = maildir / sub
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        path.rename(aside / sub)
        path.mkdir()
        os.chown(path, st.st_uid, st.st_gid)
        path.chmod(st.st_mode & 0o7777)


def measure(
    target: Target, variant: str, messages: list[bytes], args: argparse.Namespace
) -> Result:
    per_connection = args.per_connection if variant == "reuse" else 1
    batches = split(messages, args.sessions, per_connection)
    set_aside(target.maildir)
    pids = target.pids()
    benchlib.renice(pids, args.nice)
    cpu0, extra0 = benchlib.tree_cpu_seconds(pids), target.extra_cpu()
    client0 = sum(os.times()[:2])

    async def go() -> tuple[float, float, float]:
        start = time.perf_counter()
        accept = await run_load(target.port, batches, not args.no_pipelining)
        done = await wait_for_files(target.maildir, len(messages), args.timeout)
        return start, accept, done

    profile = args.profile_dir / f"{target.name}-{variant}.txt"
    py_spy = args.py_spy if "postfix" not in target.name and args.py_spy else None
    with benchlib.Profiler(py_spy, pids[0], profile):
        start, accept, done = asyncio.run(go())
    if py_spy:
        print(benchlib.summarize_profile(profile), file=sys.stderr)
    client = sum(os.times()[:2]) - client0
    cpu = benchlib.tree_cpu_seconds(pids) - cpu0
    return Result(
        target.name,
        variant,
        len(messages),
        done - start,
        accept,
        cpu,
        client,
        target.extra_cpu() - extra0,
        os.getloadavg()[0],
    )


def postfix_target(peers: benchlib.Peers) -> Target:
    master = peers.postfix_master_pid()
    return Target("postfix", peers.postfix_port, peers.postfix_maildir, lambda: [master])


POSTFIX_AUTH_PORT = int(os.environ.get("BENCH_POSTFIX_AUTH_PORT", "12526"))
POSTFIX_AUTH_DNS = "127.0.0.153"  # setup_peers.sh's resolv.conf for that instance names it


def postfix_auth_target() -> tuple[Target, benchlib.DnsServer]:
    """The verifying Postfix, and the DNS server it asks (port 53: its helpers read
    /etc/resolv.conf, which names no port)."""
    peers = benchlib.Peers(postfix_dir=benchlib.BENCH_ROOT / "bench-postfix-auth")
    master = peers.postfix_master_pid()
    opendkim = int((peers.postfix_dir / "opendkim.pid").read_text().split()[0])
    dns = benchlib.DnsServer(
        benchlib.BENCH_ROOT / "bench-postfix-auth-dns",
        {benchlib.SENDER_DOMAIN: benchlib.SENDER_ZONE},
        host=POSTFIX_AUTH_DNS,
        port=53,
    )
    target = Target(
        "postfix-auth", POSTFIX_AUTH_PORT, peers.postfix_maildir,
        lambda: [master, opendkim], dns.cpu_seconds,
    )  # fmt: skip
    return target, dns


# "pillarbox": inbound SPF/DKIM/DMARC verification off, the same work as a Postfix without
# milters; "pillarbox-auth": the default MX configuration, verifying every message (SPF and
# DMARC lookups against the loopback DNS server, DKIM: the messages are unsigned).
# Both run the spam filter ([spam] enabled is on by default); "pillarbox-nospam" is
# "pillarbox" with it off, to show what the filter costs.
PILLARBOX_VARIANTS = {
    "pillarbox": {"mailauth": {"verify_inbound": "false"}},
    "pillarbox-auth": {"mailauth": {"verify_inbound": "true"}},
    "pillarbox-nospam": {"mailauth": {"verify_inbound": "false"}, "spam": {"enabled": "false"}},
    # Port 25 in the main process, as before intake workers (the default is one per core).
    "pillarbox-auth-1proc": {
        "mailauth": {"verify_inbound": "true"},
        "smtp": {"intake_workers": "0"},
    },
}


BASELINE = "@base"  # suffix of a target run from the ``--baseline`` checkout


def pillarbox_target(name: str, baseline: Path | None) -> tuple[Target, benchlib.Pillarbox]:
    variant, base, _ = name.partition(BASELINE)
    server = benchlib.Pillarbox(
        benchlib.BENCH_ROOT / "bench-pillarbox" / f"smtp-{name}",
        extra=PILLARBOX_VARIANTS[variant],
        repo=baseline if base and baseline else benchlib.REPO,
    )
    server.start("smtp")
    pid = server.pid
    target = Target(
        name, server.ports["smtp"], server.maildir, lambda: [pid], server.dns.cpu_seconds
    )
    return target, server


def run_all(args: argparse.Namespace) -> list[Result]:
    rng = random.Random(args.seed)
    total = args.sessions * args.messages
    messages = [make_message(i, args.size, rng) for i in range(total)]
    warmup = [make_message(total + i, args.size, rng) for i in range(args.sessions * 5)]
    results: list[Result] = []
    servers: list[benchlib.Pillarbox | benchlib.DnsServer] = []
    targets: list[Target] = []
    try:
        for name in args.targets:
            if name == "postfix":
                targets.append(postfix_target(benchlib.Peers()))
            elif name == "postfix-auth":
                target, dns = postfix_auth_target()
                targets.append(target)
                servers.append(dns)
            elif not benchlib.has_component("smtp"):
                print(f"{name}: no smtp component wired in app.py yet; skipped", file=sys.stderr)
            else:
                target, server = pillarbox_target(name, args.baseline)
                targets.append(target)
                servers.append(server)
        for target in targets:
            print(f"{target.name}: warm-up ({len(warmup)} messages)", file=sys.stderr)
            measure(target, "reuse", warmup, args)
        for variant in args.variants:
            for _ in range(args.repeat):
                for target in targets:  # interleaved, so drift hits both alike
                    result = measure(target, variant, messages, args)
                    print(
                        f"{target.name} {variant}: {result.rate:.0f} msg/s, "
                        f"{result.cpu_ms:.2f} ms CPU/msg, load {result.load:.1f}",
                        file=sys.stderr,
                    )
                    results.append(result)
    finally:
        for running in servers:
            if isinstance(running, benchlib.DnsServer):
                running.stop()
            else:
                running.close()
        shutil.rmtree(TRASH, ignore_errors=True)
    return results


def median_result(results: list[Result], target: str, variant: str) -> Result | None:
    mine = [r for r in results if r.target == target and r.variant == variant]
    if not mine:
        return None
    return sorted(mine, key=lambda r: r.rate)[len(mine) // 2]


def report(results: list[Result], args: argparse.Namespace) -> str:
    rows = []
    for variant in args.variants:
        for target in args.targets:
            r = median_result(results, target, variant)
            if r is None:
                continue
            spread = [x.rate for x in results if x.target == target and x.variant == variant]
            rows.append(
                [
                    variant,
                    target,
                    r.messages,
                    r.rate,
                    f"{min(spread):.0f}-{max(spread):.0f}",
                    r.messages / r.accept_seconds,
                    r.cpu_ms,
                    r.client_cpu * 1000 / r.messages,
                    r.extra_cpu * 1000 / r.messages,
                    statistics.mean(
                        x.load for x in results if x.target == target and x.variant == variant
                    ),
                ]
            )
    lines = [
        f"SMTP inbound, {args.sessions} sessions, {args.size}-byte messages, "
        f"{args.per_connection} msg/connection (reuse) or 1 (single); median of {args.repeat}",
        f"machine: {benchlib.machine_summary()}; servers and client at nice {args.nice}",
        "",
        benchlib.table(
            [
                "variant",
                "server",
                "msgs",
                "msg/s on disk",
                "range",
                "msg/s accepted",
                "server CPU ms/msg",
                "client CPU ms/msg",
                "DNS CPU ms/msg",
                "load avg",
            ],
            rows,
        ),
    ]
    ratio_rows = []
    for variant in args.variants:
        for peer in ("postfix", "postfix-auth"):
            pf = median_result(results, peer, variant)
            for name in args.targets:
                pb = median_result(results, name, variant) if "postfix" not in name else None
                if pb and pf:
                    ratio_rows.append(
                        [
                            variant,
                            name,
                            peer,
                            benchlib.ratio(pb.rate, pf.rate),
                            benchlib.ratio(pb.cpu_ms, pf.cpu_ms),
                        ]
                    )
    if ratio_rows:
        lines += [
            "",
            benchlib.table(
                ["variant", "server", "peer", "throughput vs peer", "CPU per msg vs peer"],
                ratio_rows,
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["postfix", "pillarbox", "pillarbox-auth"],
        choices=["postfix", "postfix-auth", *PILLARBOX_VARIANTS],
    )
    parser.add_argument(
        "--variants", nargs="+", default=["reuse", "single"], choices=["reuse", "single"]
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=150, help="messages per session")
    parser.add_argument("--per-connection", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--py-spy", metavar="PATH", help="profile Pillarbox with this py-spy")
    parser.add_argument("--profile-dir", type=Path, default=benchlib.BENCH_ROOT / "bench-profiles")
    parser.add_argument(
        "--nice", type=int, default=-10, help="priority of servers and load generator (0: leave)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help=f"also run each Pillarbox target from this checkout (a git worktree of the code "
        f"before a change), named TARGET{BASELINE}, interleaved with the others",
    )
    args = parser.parse_args()
    if args.baseline:
        pillarbox = [t for t in args.targets if "postfix" not in t]
        args.targets += [t + BASELINE for t in pillarbox]
    benchlib.renice([os.getpid()], args.nice)
    results = run_all(args)
    print(report(results, args))


if __name__ == "__main__":
    main()

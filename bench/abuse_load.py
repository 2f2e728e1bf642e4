"""Hostile idle load against a real Pillarbox, and what a legitimate user sees meanwhile.

Starts ``pillarbox serve`` on a fresh dev data dir in a temp dir (free loopback ports; the
limits are the defaults, which is what this measures), then:

1. ``--rounds`` legitimate rounds with no other load: from 127.0.0.1, connect to
   submission, STARTTLS, AUTH, send a message to oneself; then IMAPS, LOGIN, SELECT INBOX,
   find and FETCH that message. Each step is timed.
2. A flood, in a separate process so its event loop does not slow the legitimate client:
   ``--connections`` hostile connections from ``--addresses`` source addresses
   (127.0.1.1, 127.0.1.2, ..., each bound before connecting), spread over the smtp,
   submission, imap, imaps and pop3 listeners, each of one kind:

   - ``silent``: reads the greeting, then says nothing;
   - ``slowloris``: one byte every 2-4 s of a line that never ends;
   - ``tls-idle``: a TLS handshake (STARTTLS first on the plaintext ports), then nothing;
   - ``wrong-pw`` (port 25: ``bad-cmds``): wrong passwords for an existing account as fast
     as the server answers (an unknown command a second on port 25).

   A connection the server ends is counted with the last line it sent, and opened again
   half a second later, to keep up the pressure. The same legitimate rounds run during the
   flood, spread over ``--duration``.
3. The flood ends; the server's RSS is read again a few seconds later.

Printed: markdown tables of the legitimate steps' latency (p50/p95/max, failures) without
and with the flood, the server's RSS (baseline, peak during the flood, after) and open fds,
how many hostile connections were held over time, and how the server ended them.

The one config change: ``limits.ban_exempt`` keeps only 127.0.0.1 (the legitimate client,
like webmail on the same host) instead of all of 127.0.0.0/8, so the hostile addresses are
treated as the internet hosts they stand for (per-address throttling and bans apply).
Nothing is raised. Loopback only, bounded in connections and time (~2 minutes by default).

    .venv/bin/python bench/abuse_load.py [--connections 500] [--addresses 50]
                                         [--rounds 20] [--duration 75]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import imaplib
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import smtplib
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import table
from tests import pbserver

LEGIT = "alice@example.test"
VICTIM = "victim@example.test"  # the account the password guessers aim at
PASSWORD = pbserver.PASSWORD
HOSTNAME = pbserver.HOSTNAME
HOSTILE_LISTENERS = ("smtp", "submission", "imap", "imaps", "pop3")
KINDS = ("silent", "slowloris", "tls-idle", "wrong-pw")
STEP_TIMEOUT = 30.0
STEPS = (
    "submission connect",
    "STARTTLS",
    "AUTH",
    "send",
    "IMAPS connect",
    "LOGIN",
    "SELECT",
    "FETCH",
    "round total",
)


# -- the server's footprint --------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sampler(threading.Thread):
    """RSS and fds of the server every 0.25 s; ``mark`` starts a new peak window."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.peak_fds = 0
        self.done = threading.Event()

    def mark(self) -> None:
        self.peak_rss = self.peak_fds = 0

    def run(self) -> None:
        while not self.done.wait(0.25):
            with contextlib.suppress(OSError):
                self.peak_rss = max(self.peak_rss, rss_kib(self.pid))
                self.peak_fds = max(self.peak_fds, fd_count(self.pid))


# -- the legitimate client ---------------------------------------------------------------


@dataclass
class Rounds:
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    failures: Counter[str] = field(default_factory=Counter)
    done: int = 0


def legit_round(ports: dict[str, int], tls: ssl.SSLContext, results: Rounds) -> None:
    token = uuid.uuid4().hex
    step = STEPS[0]
    start = mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark, step
        now = time.perf_counter()
        results.times[name].append(now - mark)
        mark = now
        step = STEPS[STEPS.index(name) + 1]

    try:
        msg = EmailMessage()
        msg["From"] = msg["To"] = LEGIT
        msg["Subject"] = f"round {token}"
        msg["Message-ID"] = f"<{token}@example.test>"
        msg.set_content(f"legitimate round {token}\n")
        with smtplib.SMTP(
            "127.0.0.1", ports["submission"], timeout=STEP_TIMEOUT, source_address=("127.0.0.1", 0)
        ) as smtp:
            lap("submission connect")
            smtp.starttls(context=tls)
            smtp.ehlo()
            lap("STARTTLS")
            smtp.login(LEGIT, PASSWORD)
            lap("AUTH")
            if smtp.send_message(msg):
                raise RuntimeError("recipient refused")
            lap("send")
        with imaplib.IMAP4_SSL(
            "127.0.0.1", ports["imaps"], ssl_context=tls, timeout=STEP_TIMEOUT
        ) as imap:
            lap("IMAPS connect")
            imap.login(LEGIT, PASSWORD)
            lap("LOGIN")
            if imap.select("INBOX")[0] != "OK":
                raise RuntimeError("SELECT failed")
            lap("SELECT")
            deadline = time.monotonic() + STEP_TIMEOUT
            found: list[bytes] = []
            while not found:
                found = imap.search(None, "HEADER", "Message-ID", token)[1][0].split()
                if not found:
                    if time.monotonic() > deadline:
                        raise RuntimeError("message never appeared")
                    time.sleep(0.05)
                    imap.noop()
            body = imap.fetch(found[-1].decode(), "(BODY.PEEK[])")[1][0]
            if not isinstance(body, tuple) or token.encode() not in body[1]:
                raise RuntimeError("FETCH returned the wrong message")
            lap("FETCH")
            imap.logout()
        results.times["round total"].append(time.perf_counter() - start)
        results.done += 1
    except Exception as exc:
        results.failures[f"{step}: {type(exc).__name__}: {str(exc)[:60]}"] += 1


def run_rounds(
    ports: dict[str, int], tls: ssl.SSLContext, count: int, until: float | None = None
) -> Rounds:
    """``count`` rounds back to back, or spread evenly until ``until`` (monotonic)."""
    results = Rounds()
    begin = time.monotonic()
    for i in range(count):
        if until is not None:
            slot = begin + (until - begin) * i / count
            if slot > until - 2:
                break
            time.sleep(max(0.0, slot - time.monotonic()))
        legit_round(ports, tls, results)
    return results


# -- the flood (its own process) ---------------------------------------------------------


@dataclass
class FloodStats:
    opened: Counter[str] = field(default_factory=Counter)  # listener/kind -> connections
    cut: Counter[str] = field(default_factory=Counter)  # "listener/kind | last line"
    failed: Counter[str] = field(default_factory=Counter)  # connect/handshake failures
    attempts: Counter[str] = field(default_factory=Counter)  # wrong passwords tried
    held: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)


class Lines:
    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.buf = b""
        self.last = b""

    async def line(self, wait: float | None = None) -> bytes | None:
        """The next line (None at EOF); TimeoutError if none within ``wait`` s."""
        while b"\n" not in self.buf:
            data = await asyncio.wait_for(self.reader.read(4096), wait)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        self.last = line.strip()
        return line

    async def until(self, prefix: bytes, wait: float = 30) -> bool:
        """Read lines until one starts with ``prefix``: False at EOF."""
        while (line := await self.line(wait)) is not None:
            if line.startswith(prefix):
                return True
        return False

    async def idle(self, wait: float | None = None) -> bool:
        """Read whatever comes for ``wait`` seconds (for ever if None): False at EOF."""
        try:
            while await self.line(wait) is not None:
                pass
        except TimeoutError:
            return True
        return False


def describe(line: bytes) -> str:
    text = line.decode(errors="replace").replace(HOSTNAME, "HOST")
    return text[:56] if text else "(closed without a word)"


class Hostile:
    def __init__(
        self, listener: str, port: int, kind: str, source: str, tls: ssl.SSLContext, seed: int
    ):
        self.listener = listener
        self.port = port
        self.kind = "bad-cmds" if kind == "wrong-pw" and listener == "smtp" else kind
        self.source = source
        self.tls = tls
        self.rng = random.Random(seed)
        self.key = f"{listener}/{self.kind}"

    async def run(self, stats: FloodStats) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        self.port,
                        local_addr=(self.source, 0),
                        ssl=self.tls if self.listener == "imaps" else None,
                        server_hostname=HOSTNAME if self.listener == "imaps" else None,
                    ),
                    30,
                )
            except (OSError, TimeoutError) as exc:
                stats.failed[f"{self.key} connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            stats.opened[self.key] += 1
            stats.held += 1
            lines = Lines(reader)
            try:
                await self.behave(lines, writer, stats)
                reason = describe(lines.last)
            except (TimeoutError, ssl.SSLError, OSError) as exc:
                reason = f"{type(exc).__name__} after {describe(lines.last)!r}"
            finally:
                stats.held -= 1
                writer.transport.abort()
            stats.cut[f"{self.key} | {reason}"] += 1
            await asyncio.sleep(0.5)

    async def starttls(self, lines: Lines, writer: asyncio.StreamWriter) -> bool:
        if self.listener in ("smtp", "submission"):
            writer.write(b"EHLO hostile.example\r\n")
            if not await lines.until(b"250 "):
                return False
            writer.write(b"STARTTLS\r\n")
            if not await lines.until(b"220 "):
                return False
        elif self.listener == "imap":
            writer.write(b"s STARTTLS\r\n")
            if not await lines.until(b"s OK"):
                return False
        elif self.listener == "pop3":
            writer.write(b"STLS\r\n")
            if not await lines.until(b"+OK"):
                return False
        else:
            return True  # imaps: already TLS
        await writer.start_tls(self.tls, server_hostname=HOSTNAME, ssl_handshake_timeout=30)
        if self.listener in ("smtp", "submission"):
            writer.write(b"EHLO hostile.example\r\n")
            return await lines.until(b"250 ")
        return True

    async def behave(self, lines: Lines, writer: asyncio.StreamWriter, stats: FloodStats) -> None:
        """Returns when the server ends the connection."""
        if await lines.line(60) is None:  # the greeting
            return
        if self.kind == "silent":
            await lines.idle()
        elif self.kind == "slowloris":
            start = {"imap": b"a1 LOGIN ", "imaps": b"a1 LOGIN ", "pop3": b"USER "}
            pending = start.get(self.listener, b"EHLO ")
            while True:
                byte, pending = (pending[:1], pending[1:]) if pending else (b"a", b"")
                writer.write(byte)
                if not await lines.idle(self.rng.uniform(2, 4)):
                    return
        elif self.kind == "tls-idle":
            if await self.starttls(lines, writer):
                await lines.idle()
        elif self.kind == "bad-cmds":
            while True:
                writer.write(b"XYZZY hostile\r\n")
                if await lines.line(60) is None or not await lines.idle(1):
                    return
        else:  # wrong-pw
            if not await self.starttls(lines, writer):
                return
            n = 0
            while True:
                n += 1
                wrong = f"guess-{n}-{self.rng.randrange(10**6)}"
                if self.listener == "submission":
                    cred = sasl_plain(VICTIM, wrong)
                    writer.write(b"AUTH PLAIN " + cred + b"\r\n")
                    ok = await lines.until(b"5", 60)
                elif self.listener == "pop3":
                    writer.write(f"USER {VICTIM}\r\nPASS {wrong}\r\n".encode())
                    ok = await lines.until(b"+OK", 60) and await lines.until(b"-ERR", 60)
                else:
                    writer.write(f'a{n} LOGIN {VICTIM} "{wrong}"\r\n'.encode())
                    ok = await lines.until(f"a{n} ".encode(), 60)
                if not ok:
                    return
                stats.attempts[self.listener] += 1


def sasl_plain(user: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())


async def flood_main(
    ports: dict[str, int],
    connections: int,
    addresses: int,
    duration: float,
    ca: str,
    pipe: multiprocessing.connection.Connection,
) -> FloodStats:
    tls = ssl.create_default_context(cafile=ca)
    tls.check_hostname = False  # the guessers do not care who they talk to
    stats = FloodStats()
    hostiles = []
    for i in range(connections):
        source = f"127.0.1.{i % addresses + 1}"
        listener = HOSTILE_LISTENERS[i % len(HOSTILE_LISTENERS)]
        kind = KINDS[(i // len(HOSTILE_LISTENERS)) % len(KINDS)]
        hostiles.append(Hostile(listener, ports[listener], kind, source, tls, i))
    start = time.monotonic()
    tasks = []
    for i, hostile in enumerate(hostiles):
        tasks.append(asyncio.create_task(hostile.run(stats)))
        if i % 25 == 24:
            await asyncio.sleep(0.05)  # do not overflow the listen backlogs
    # Ready when the crowd is in (or after 15 s, whichever first).
    while stats.held < connections * 0.95 and time.monotonic() - start < 15:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    pipe.send(("ready", time.monotonic() - start, stats.held))
    while (elapsed := time.monotonic() - start) < duration:
        stats.timeline.append((elapsed, stats.held))
        await asyncio.sleep(min(5.0, duration - elapsed))
    stats.timeline.append((time.monotonic() - start, stats.held))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def flood_process(
    ports: dict[str, int],
    connections: int,
    addresses: int,
    duration: float,
    ca: str,
    pipe: multiprocessing.connection.Connection,
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * connections + 256)), hard))
    stats = asyncio.run(flood_main(ports, connections, addresses, duration, ca, pipe))
    # Plain data across the pipe (this module is __mp_main__ here, __main__ there).
    plain = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    pipe.send(("stats", {k: dict(v) if isinstance(v, Counter) else v for k, v in plain.items()}))


# -- reporting -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def latency_table(quiet: Rounds, flood: Rounds) -> str:
    rows: list[list[object]] = []
    for step in STEPS:
        a, b = quiet.times[step], flood.times[step]
        row: list[object] = [step]
        for values in (a, b):
            row += [
                ms(statistics.median(values) if values else None),
                ms(percentile(values, 0.95) if values else None),
                ms(max(values) if values else None),
            ]
        ratio = f"{statistics.median(b) / statistics.median(a):.1f}x" if a and b else "-"
        rows.append([*row, ratio])
    headers = ["step (ms)", "quiet p50", "p95", "max", "flood p50", "p95", "max", "p50 ratio"]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--addresses", type=int, default=50, help="127.0.1.1 ... 127.0.1.N")
    parser.add_argument("--rounds", type=int, default=20, help="legitimate rounds per phase")
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of flood")
    parser.add_argument(
        "--ban-exempt",
        default="127.0.0.1/32",
        help="limits.ban_exempt (comma-separated); the default keeps the hostile addresses out",
    )
    args = parser.parse_args()
    if not 1 <= args.addresses <= 254:
        parser.error("--addresses must be 1..254")

    overall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pillarbox-abuse-") as tmp:
        overrides = {
            "listen": {"pop3": "127.0.0.1:0"},
            "limits": {"ban_exempt": [a.strip() for a in args.ban_exempt.split(",") if a]},
        }
        settings = pbserver.make_settings(Path(tmp) / "data", overrides)
        pbserver.add_user(settings, LEGIT)
        pbserver.add_user(settings, VICTIM)
        assert settings.tls.ca is not None
        tls = ssl.create_default_context(cafile=str(settings.tls.ca))
        with pbserver.SubprocessServer(settings) as server:
            pid = server.proc.pid
            ports = {name: server.port(name) for name in server.addresses}
            sampler = Sampler(pid)
            sampler.start()
            legit_round(ports, tls, Rounds())  # warm-up
            quiet = run_rounds(ports, tls, args.rounds)
            time.sleep(1)
            base_rss, base_fds = rss_kib(pid), fd_count(pid)
            log_mark = len(server.log())

            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            flood = ctx.Process(
                target=flood_process,
                args=(
                    {k: ports[k] for k in HOSTILE_LISTENERS},
                    args.connections,
                    args.addresses,
                    args.duration,
                    str(settings.tls.ca),
                    child,
                ),
            )
            sampler.mark()
            flood_start = time.monotonic()
            flood.start()
            if not parent.poll(60):
                flood.kill()
                raise SystemExit("the flood process did not start")
            _, ramp, held_at_ready = parent.recv()
            flood_end = flood_start + args.duration
            loaded = run_rounds(ports, tls, args.rounds, until=flood_end)
            if not parent.poll(args.duration + 60):
                flood.kill()
                raise SystemExit("the flood process did not report")
            _, raw_stats = parent.recv()
            stats = FloodStats(
                opened=Counter(raw_stats["opened"]),
                cut=Counter(raw_stats["cut"]),
                failed=Counter(raw_stats["failed"]),
                attempts=Counter(raw_stats["attempts"]),
                held=raw_stats["held"],
                timeline=raw_stats["timeline"],
            )
            flood.join(10)
            peak_rss, peak_fds = sampler.peak_rss, sampler.peak_fds
            flood_log = server.log()[log_mark:]
            time.sleep(5)
            after_rss, after_fds = rss_kib(pid), fd_count(pid)
            sampler.done.set()
            alive = server.proc.poll() is None

    print(f"# Pillarbox under hostile idle load ({time.monotonic() - overall:.0f} s)\n")
    print(
        f"{args.connections} hostile connections from {args.addresses} addresses over "
        f"{', '.join(HOSTILE_LISTENERS)} ({', '.join(KINDS)}; port 25: bad-cmds instead of "
        f"wrong-pw), {args.duration:.0f} s; ramp-up {ramp:.1f} s ({held_at_ready} held); "
        f"default limits, ban_exempt = {args.ban_exempt}; server alive at the end: {alive}\n"
    )
    print(f"## Legitimate rounds: {quiet.done} quiet, {loaded.done} during the flood\n")
    print(latency_table(quiet, loaded))
    failures = [("quiet", k, v) for k, v in quiet.failures.items()]
    failures += [("flood", k, v) for k, v in loaded.failures.items()]
    print("\nFailed rounds: " + ("none" if not failures else ""))
    for phase, what, count in failures:
        print(f"- {phase}: {count} x {what}")
    print("\n## Server footprint\n")
    print(
        table(
            ["", "baseline", "peak during flood", "5 s after"],
            [
                ["RSS (MiB)", base_rss / 1024, peak_rss / 1024, after_rss / 1024],
                ["open fds", base_fds, peak_fds, after_fds],
            ],
        )
    )
    print("\n## Hostile connections held over time\n")
    print(table(["t (s)", "held"], [[f"{t:.0f}", n] for t, n in stats.timeline]))
    print("\n## Hostile connections by kind\n")
    rows = []
    for key in sorted(stats.opened):
        cuts = {k.split(" | ", 1)[1]: v for k, v in stats.cut.items() if k.startswith(key + " |")}
        top = "; ".join(f"{v} x {k}" for k, v in Counter(cuts).most_common(2)) or "-"
        rows.append([key, stats.opened[key], sum(cuts.values()), top])
    print(table(["listener/kind", "opened", "cut by server", "last line before the cut"], rows))
    attempts = sum(stats.attempts.values())
    print(
        f"\nWrong passwords answered: {attempts} ({attempts / args.duration:.1f}/s; "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.attempts.items()))
        + ")"
    )
    if stats.failed:
        print(
            "Connect/handshake failures: "
            + ", ".join(f"{v} x {k}" for k, v in stats.failed.most_common(6))
        )
    events = Counter(
        f"{m[2]} ({m[1]} {m[0]})"
        for m in re.findall(r'^\S+ (\w+) (\w+) event=("[^"]*"|\S+)', flood_log, re.M)
    )
    print(
        "Server log events during the flood: "
        + ", ".join(f"{k} {v}" for k, v in events.most_common(10))
    )


if __name__ == "__main__":
    main()

"""Load on Pillarbox's port 25: N concurrent sessions sending 4 KB messages into Maildir.

Starts a real ``pillarbox serve`` process on a fresh dev data dir (free loopback ports,
inbound mail authentication off unless --mailauth, so the figure is the SMTP + Maildir
path, comparable with a Postfix without milters), then runs ``--sessions`` concurrent
clients (raw asyncio sockets, PIPELINING: MAIL+RCPT+DATA in one write) that each send
``--messages`` messages, ``--per-connection`` per connection. A message counts when its 250
arrives (which we only send after the Maildir file and directory are fsync'd); the script
checks at the end that every message is in the Maildir (new/ or cur/: delivery indexes
each message as it stores it, which moves it to cur/).

Reports msg/s and the server's CPU time (user+system from /proc) per message.

    .venv/bin/python bench/smtp_load.py --sessions 20 --messages 200 --per-connection 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pillarbox.config import Settings, default_intake_workers
from tests import pbserver

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def message(index: int, size: int) -> bytes:
    head = (
        f"From: sender{index}@remote.test\r\nTo: bench@example.test\r\n"
        f"Subject: load test {index}\r\nMessage-ID: <{index}.{time.time_ns()}@remote.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")
        if line[3:4] == b" ":
            return


async def session(port: int, first: int, count: int, per_conn: int, size: int) -> int:
    sent = 0
    while sent < count:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await expect(reader, b"220")
        writer.write(b"EHLO load.remote.test\r\n")
        await expect(reader, b"250")
        for _ in range(min(per_conn, count - sent)):
            writer.write(
                b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<bench@example.test>\r\nDATA\r\n"
            )
            await expect(reader, b"250")
            await expect(reader, b"250")
            await expect(reader, b"354")
            writer.write(message(first + sent, size) + b".\r\n")
            await expect(reader, b"250")
            sent += 1
        writer.write(b"QUIT\r\n")
        await expect(reader, b"221")
        writer.close()
        await writer.wait_closed()
    return sent


async def run_load(port: int, sessions: int, messages: int, per_conn: int, size: int) -> int:
    tasks = [session(port, i * messages, messages, per_conn, size) for i in range(sessions)]
    return sum(await asyncio.gather(*tasks))


# A typical user filter: a few header tests, flags, a fileinto that does not match.
SIEVE_SCRIPT = """require ["fileinto", "imap4flags", "envelope"];
if header :contains "list-id" "announce" { fileinto "Lists"; stop; }
if address :domain "from" "spam.example" { discard; stop; }
if envelope :is "from" "boss@example.test" { addflag "\\\\Flagged"; }
if header :matches "subject" "*invoice*" { fileinto "Invoices"; }
"""


def install_sieve(settings: Settings) -> None:
    from pillarbox.store.sieve_scripts import SieveScripts

    scripts = SieveScripts(settings.database_path)
    scripts.put("bench@example.test", "bench", SIEVE_SCRIPT)
    scripts.set_active("bench@example.test", "bench")
    scripts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200, help="per session")
    parser.add_argument("--per-connection", type=int, default=1)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--mailauth", action="store_true", help="verify inbound SPF/DKIM/DMARC")
    parser.add_argument(
        "--sieve", action="store_true", help="give the user an active Sieve script (headers)"
    )
    parser.add_argument(
        "--intake-workers", type=int, default=default_intake_workers(),
        help="[smtp] intake_workers (default: the config's default, one per core)",
    )  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pillarbox-load-") as tmp:
        overrides = {
            "mailauth": {"verify_inbound": args.mailauth},
            "limits": {"max_connections_per_ip": 1000},
            "smtp": {"intake_workers": args.intake_workers},
        }
        settings = pbserver.make_settings(Path(tmp) / "data", overrides)
        pbserver.add_user(settings, "bench@example.test")
        if args.sieve:
            install_sieve(settings)
        with pbserver.SubprocessServer(settings) as server:
            port = server.port("smtp")
            asyncio.run(run_load(port, 4, 5, 5, args.size))  # warm-up
            pids = [server.proc.pid, *children(server.proc.pid)]  # the intake workers
            before, t0 = [cpu_times(pid) for pid in pids], time.perf_counter()
            sent = asyncio.run(
                run_load(port, args.sessions, args.messages, args.per_connection, args.size)
            )
            elapsed = time.perf_counter() - t0
            after = [cpu_times(pid) for pid in pids]
            spent = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
            user, system = sum(u for u, _ in spent), sum(s for _, s in spent)
            cpu = user + system
            main_cpu = sum(spent[0])
        maildir = settings.mail_dir / "example.test" / "bench"
        stored = sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur"))
    print(
        f"{sent} messages of {args.size} bytes, {args.sessions} sessions, "
        f"{args.per_connection} per connection: {sent / elapsed:.0f} msg/s, "
        f"server CPU {cpu / sent * 1000:.3f} ms/msg (user {user / sent * 1000:.3f}, "
        f"system {system / sent * 1000:.3f}; {cpu / elapsed * 100:.0f}% of a core); "
        f"{stored} files in new/ and cur/ (incl. {4 * 5} warm-up); "
        f"{len(pids) - 1} intake workers, main process {main_cpu / sent * 1000:.3f} ms/msg"
    )


def children(pid: int) -> list[int]:
    """The pids of the direct children of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


if __name__ == "__main__":
    main()

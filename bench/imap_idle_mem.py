"""Memory per idle IMAP connection on a real ``pillarbox serve``: RSS and PSS of the server
process (``/proc/PID/smaps_rollup``) before and after ``--sessions`` connections, divided
by their number, and the growth from half of them to all of them (what one more idle
connection costs, without the first session's one-time costs). Each variant runs on a
freshly started server, so what one left behind in the allocator does not count for the
next:

- ``plain-greeting``: plaintext connections to the ``imap`` port that read the greeting
  and wait (the floor: a socket, a transport, a session not logged in);
- ``tls-greeting``: the same over implicit TLS (``imaps``): adds OpenSSL's state;
- ``tls-idle``: over TLS, LOGIN, SELECT INBOX (a few messages) and IDLE, the state a mail
  client leaves a connection in;
- ``tls-idle-deflate``: the same after ``COMPRESS DEFLATE`` (RFC 4978): adds the two
  zlib streams;
- ``tls-selected``: over TLS, LOGIN and SELECT INBOX, then waiting for the next command
  (a client that polls with NOOP instead of IDLE);
- ``tls-notify``: the same plus ``NOTIFY SET (selected ...) (personal ...)`` (RFC 5465),
  waiting for a command while the server may push news at any time.

A logged-in plaintext session cannot be had: the plain port says LOGINDISABLED until
STARTTLS (RFC 9051 §6.2.3), so the plaintext figure is of sessions before login.

    .venv/bin/python bench/imap_idle_mem.py --sessions 1000
    .venv/bin/python bench/imap_idle_mem.py --sessions 300 --variants tls-idle
    .venv/bin/python bench/imap_idle_mem.py --variants tls-idle tls-notify tls-selected
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import smtplib
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from benchlib import (
    BENCH_ROOT,
    DOMAIN,
    PASSWORD,
    USER,
    Memory,
    Pillarbox,
    free_port,
    table,
    tree_memory,
)

HOSTNAME = f"mail.{DOMAIN}"
OPENING_AT_ONCE = 100
SETTLE = 2.0  # seconds after the last connection before memory is read
MESSAGES = 5  # in INBOX, so SELECT builds a real view

Opener = Callable[["Target"], Awaitable[object]]


class Target:
    def __init__(self, server: Pillarbox, imaps_port: int):
        self.server = server
        self.imaps_port = imaps_port
        self.context = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "ca.pem"))


async def _lines_until(reader: asyncio.StreamReader, prefix: bytes) -> None:
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            raise ConnectionError("closed")
        if line.startswith(prefix):
            return
        if line[:2] in (b"a ", b"b ", b"c ") and b" OK " not in line:
            raise RuntimeError(f"server said {line!r}")


async def plain_greeting(t: Target) -> object:
    reader, writer = await asyncio.open_connection("127.0.0.1", t.server.ports["imap"])
    await reader.readline()
    return writer


async def tls_greeting(t: Target) -> object:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", t.imaps_port, ssl=t.context, server_hostname=HOSTNAME
    )
    await reader.readline()
    return writer


async def tls_idle(t: Target) -> object:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", t.imaps_port, ssl=t.context, server_hostname=HOSTNAME
    )
    await reader.readline()
    writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    await _lines_until(reader, b"+ ")
    return writer


async def tls_idle_deflate(t: Target) -> object:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", t.imaps_port, ssl=t.context, server_hostname=HOSTNAME
    )
    await reader.readline()
    writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    await _lines_until(reader, b"a OK")
    writer.write(b"z COMPRESS DEFLATE\r\n")
    await _lines_until(reader, b"z OK")
    # RFC 4978 §3: raw deflate both ways from here; a sync flush ends each write.
    out = zlib.compressobj(wbits=-15)
    writer.write(out.compress(b"b SELECT INBOX\r\nc IDLE\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
    inflate = zlib.decompressobj(wbits=-15)
    text = b""
    while b"\r\n+ " not in text and not text.startswith(b"+ "):
        chunk = await asyncio.wait_for(reader.read(4096), 30)
        if not chunk:
            raise ConnectionError("closed")
        text += inflate.decompress(chunk)
    return (writer, out, inflate)


async def tls_selected(t: Target) -> object:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", t.imaps_port, ssl=t.context, server_hostname=HOSTNAME
    )
    await reader.readline()
    writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
    await _lines_until(reader, b"b OK")
    return writer


NOTIFY = (
    b"c NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange))"
    b" (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))\r\n"
)


async def tls_notify(t: Target) -> object:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", t.imaps_port, ssl=t.context, server_hostname=HOSTNAME
    )
    await reader.readline()
    writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode() + NOTIFY)
    await _lines_until(reader, b"c OK")
    return writer


VARIANTS: dict[str, Opener] = {
    "plain-greeting": plain_greeting,
    "tls-greeting": tls_greeting,
    "tls-idle": tls_idle,
    "tls-idle-deflate": tls_idle_deflate,
    "tls-selected": tls_selected,
    "tls-notify": tls_notify,
}


async def _open(target: Target, opener: Opener, count: int) -> list[object]:
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one() -> object:
        async with gate:
            return await opener(target)

    first = await opener(target)  # the password hash once; the rest hit the cache
    return [first, *await asyncio.gather(*(one() for _ in range(count - 1)))]


def _fill_inbox(server: Pillarbox) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
        for i in range(MESSAGES):
            body = f"From: a@client.test\r\nTo: {USER}\r\nSubject: m{i}\r\n\r\nhello\r\n"
            smtp.sendmail("a@client.test", [USER], body)


class Figures(NamedTuple):
    rss: float  # KiB per connection: (all open - none open) / count
    pss: float
    marginal_rss: float  # KiB per connection of the second half: (all - half) / (count / 2)
    marginal_pss: float
    seconds: float  # to open them all


def measure(name: str, count: int, root: Path) -> Figures:
    """Memory per connection on a fresh server, two ways: everything the server grew by
    since before the first connection, divided by their number (one-time costs of the
    first session included: module imports, caches), and the growth from the first half
    of the connections to all of them (what one more idle connection costs)."""
    imaps_port = free_port()
    server = Pillarbox(
        root / f"idle-{name}",
        extra={
            "listen": {"imaps": f'"127.0.0.1:{imaps_port}"'},
            "limits": {"max_connections_per_listener": "5000"},
            "mailauth": {"verify_inbound": "false"},
        },
    )
    try:
        server.start()
        _fill_inbox(server)
        target = Target(server, imaps_port)
        time.sleep(SETTLE)
        before = tree_memory([server.pid])
        started = time.monotonic()
        opened, half, after = asyncio.run(_hold(target, VARIANTS[name], count, server.pid))
        second = count - count // 2
        return Figures(
            (after.rss - before.rss) / count / 1024,
            (after.pss - before.pss) / count / 1024,
            (after.rss - half.rss) / second / 1024,
            (after.pss - half.pss) / second / 1024,
            opened - started,
        )
    finally:
        server.close()


async def _hold(
    target: Target, opener: Opener, count: int, pid: int
) -> tuple[float, Memory, Memory]:
    """Open half the connections, measure, open the rest, measure; then close them all."""
    connections = await _open(target, opener, count // 2)
    await asyncio.sleep(SETTLE)
    half = tree_memory([pid])
    connections += await _open(target, opener, count - count // 2)
    opened = time.monotonic()
    await asyncio.sleep(SETTLE)
    after = tree_memory([pid])
    for connection in connections:
        writer = connection[0] if isinstance(connection, tuple) else connection
        writer.close()  # type: ignore[attr-defined]
    return opened, half, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sessions + 512)), hard))
    rows = []
    for name in args.variants:
        f = measure(name, args.sessions, BENCH_ROOT / "bench-idle-mem")
        figures = (f.rss, f.pss, f.marginal_rss, f.marginal_pss, f.seconds)
        rows.append((name, args.sessions, *(f"{x:.1f}" for x in figures)))
        print(f"{name}: {f.rss:.1f} KiB RSS, {f.pss:.1f} KiB PSS per connection; "
              f"second half {f.marginal_rss:.1f} / {f.marginal_pss:.1f}", flush=True)  # fmt: skip
    columns = ("variant", "connections", "RSS KiB/conn", "PSS KiB/conn",
               "2nd half RSS", "2nd half PSS", "open s")  # fmt: skip
    print(table(columns, rows))


if __name__ == "__main__":
    main()

"""2,000 IMAP sessions in IDLE on one ``pillarbox serve`` process, and one message by SMTP:
every session hears ``* 1 EXISTS`` within a second of the SMTP 250 (RFC 2177: IDLE
reports new mail "as it arrives").

The clients are one asyncio loop in the test process (streams over TLS, not 2,000
threads); the server is a separate process, so the two do not share a GIL. LOGIN needs
TLS (LOGINDISABLED on the plain port), so every session is on ``imaps``.
"""

from __future__ import annotations

import asyncio
import resource
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import ALICE, TIMEOUT, message, tls_context

pytestmark = pytest.mark.on_disk  # pillarbox serve in a child process

SESSIONS = 2000
OPENING_AT_ONCE = 100  # connections being set up at a time (the listen backlog is bounded)
NOTIFY_WITHIN = 1.0  # seconds from the SMTP 250 to the last session's EXISTS

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


async def _idle_session(port: int, context: ssl.SSLContext) -> Stream:
    """A session that logged in, SELECTed INBOX and is in IDLE (its "+" read)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=pbserver.HOSTNAME
    )
    assert (await reader.readline()).startswith(b"* OK ")
    writer.write(f'a LOGIN {ALICE} "{pbserver.PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert line, "the server closed the connection"
        assert not line.startswith((b"a NO", b"a BAD", b"b NO", b"b BAD")), line
        if line.startswith(b"+ "):
            return reader, writer


async def _open_sessions(port: int, context: ssl.SSLContext) -> list[Stream]:
    # The first login alone: it pays the password hash, the rest hit the credential cache.
    first = await _idle_session(port, context)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one() -> Stream:
        async with gate:
            return await _idle_session(port, context)

    return [first, *await asyncio.gather(*(one() for _ in range(SESSIONS - 1)))]


async def _exists_at(stream: Stream) -> float:
    """When this session read its ``* 1 EXISTS`` (the first line after the "+")."""
    line = await asyncio.wait_for(stream[0].readline(), 30)
    at = time.monotonic()
    assert line == b"* 1 EXISTS\r\n", line
    return at


def _deliver(port: int) -> float:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
        smtp.sendmail("bob@example.org", [ALICE], message("to everyone"))
        return time.monotonic()  # sendmail returned: the 250 after the final dot


async def _scenario(server: pbserver.SubprocessServer) -> tuple[float, list[float], float]:
    context = tls_context(server.settings)
    started = time.monotonic()
    streams = await _open_sessions(server.port("imaps"), context)
    opened = time.monotonic() - started
    waiting = [asyncio.ensure_future(_exists_at(stream)) for stream in streams]
    await asyncio.sleep(0.2)  # every reader is waiting before the mail comes
    accepted = await asyncio.to_thread(_deliver, server.port("smtp"))
    arrivals = await asyncio.gather(*waiting)
    for _, writer in streams:
        writer.close()
    return accepted, arrivals, opened


def test_two_thousand_idle_sessions_hear_of_new_mail_within_a_second(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    _raise_open_files(SESSIONS + 512)
    cap = SESSIONS + 100
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "mailauth": {"verify_inbound": False},
            "limits": {
                "max_connections": cap,
                "max_connections_per_listener": cap,
                "max_connections_per_ip": cap,
            },
        },
    )
    pbserver.add_user(settings, ALICE)
    with pbserver.SubprocessServer(settings) as server:
        accepted, arrivals, opened = asyncio.run(_scenario(server))
    assert len(arrivals) == SESSIONS
    latest = max(arrivals) - accepted
    print(f"{SESSIONS} sessions opened in {opened:.1f} s; last EXISTS {latest:.3f} s after 250")
    assert latest <= NOTIFY_WITHIN, (
        f"the last session heard of the mail {latest:.2f} s after the 250"
    )


def test_serve_lifts_its_open_file_limit_for_max_connections(tmp_path: Path) -> None:
    """`pillarbox serve` started with a soft RLIMIT_NOFILE of 256 (as a shell's 1024
    would be for 2,000 sessions) raises it to max_connections plus spare files."""
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"max_connections": 3000}})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the child inherits it
    try:
        server = pbserver.SubprocessServer(settings)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with server:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    [line] = [x for x in limits.splitlines() if x.startswith("Max open files")]
    ceiling = 3000 + 512 if hard == resource.RLIM_INFINITY else min(hard, 3000 + 512)
    assert int(line.split()[3]) >= ceiling, line

"""IMAP COMPRESS=DEFLATE (RFC 4978): a zlib client on the wire, hostile streams, and mbsync.

The wire client compresses with Python's zlib (raw DEFLATE, full 32 KiB window, as real
clients do); mbsync (isync, Debian's package) is the independent real client, which turns
compression on by itself when the server offers it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.net import deflate
from pillarbox.net.listener import STREAM_LIMIT
from tests import pbserver
from tests.imaphelp import ALICE, TIMEOUT, Raw, login, message, tls_context


class Deflated:
    """The client side of a compressed session, over a logged-in :class:`Raw`."""

    def __init__(self, raw: Raw):
        self.sock = raw.sock
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.decompressor = zlib.decompressobj(-15)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH))

    def until(self, marker: bytes) -> bytes:
        """Inflated input up to and including the first line that starts with ``marker``."""
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buffer += self.decompressor.decompress(chunk)
                continue
            if self.buffer.startswith(marker, start):
                out, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
                return out
            start = end + 2

    def cmd(self, tag: bytes, text: bytes) -> bytes:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag + b" ")


def _compressed(server: pbserver.RunningServer) -> tuple[Raw, Deflated]:
    raw = Raw(server)
    raw.login()
    assert raw.cmd(b"z", b"COMPRESS DEFLATE") == [b"z OK DEFLATE active\r\n"]
    return raw, Deflated(raw)


def test_capability_only_after_login(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        assert b"COMPRESS=DEFLATE" not in raw.greeting
        # Not valid before login (its state is authenticated, RFC 4978 §3's examples).
        assert raw.cmd(b"a", b"COMPRESS DEFLATE")[-1].startswith(b"a BAD")
        raw.login()
        caps = raw.cmd(b"c", b"CAPABILITY")[0]
        assert b" COMPRESS=DEFLATE" in caps
    finally:
        raw.close()


def test_a_compressed_session_reads_and_writes_mail(server: pbserver.RunningServer) -> None:
    raw, z = _compressed(server)
    try:
        assert b"s OK [READ-WRITE]" in z.cmd(b"s", b"SELECT INBOX")
        body = ("Line of a compressed message %d\r\n" * 2000) % tuple(range(2000))
        msg = message("compressed", body=body)
        z.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        assert b"a OK [APPENDUID" in z.until(b"a ")
        fetched = z.cmd(b"f", b"UID FETCH 1 (BODY.PEEK[])")
        assert b"{%d}\r\n" % len(msg) + msg + b")\r\n" in fetched
        # RFC 4978 §3: a second COMPRESS is NO [COMPRESSIONACTIVE], the session goes on.
        assert z.cmd(b"c", b"COMPRESS DEFLATE") == (
            b"c NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
        )
        assert z.cmd(b"n", b"NOOP") == b"n OK NOOP completed\r\n"
    finally:
        raw.close()
    # The message is really stored: an uncompressed session sees it whole.
    with login(server) as client:
        client.select("INBOX")
        typ, data = client.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == msg


def test_idle_over_compression_sees_new_mail(server: pbserver.RunningServer) -> None:
    raw, z = _compressed(server)
    try:
        z.cmd(b"s", b"SELECT INBOX")
        z.send(b"i IDLE\r\n")
        assert z.until(b"+").startswith(b"+")
        with login(server) as other:
            other.append("INBOX", None, None, message("while idling"))
        assert z.until(b"* 1 EXISTS").endswith(b"* 1 EXISTS\r\n")
        z.send(b"DONE\r\n")
        assert z.until(b"i ").endswith(b"i OK IDLE terminated\r\n")
    finally:
        raw.close()


def test_unknown_mechanism_and_pipelined_data_are_refused(
    server: pbserver.RunningServer,
) -> None:
    raw = Raw(server)
    try:
        raw.login()
        assert raw.cmd(b"a", b"COMPRESS LZ77")[-1].startswith(b"a BAD")
        # Sending before the reply is forbidden (§3): the server cannot know what it is.
        raw.send(b"b COMPRESS DEFLATE\r\nc NOOP\r\n")
        lines = raw.until(b"c")
        assert lines[0].startswith(b"b BAD"), lines
        assert lines[-1].startswith(b"c OK")  # still uncompressed, still served
    finally:
        raw.close()


def test_corrupt_stream_ends_only_that_session(server: pbserver.RunningServer) -> None:
    raw, _ = _compressed(server)
    try:
        raw.sock.sendall(b"\xff" * 64)  # not DEFLATE (block type 3 is reserved)
        raw.sock.settimeout(TIMEOUT)
        assert raw.sock.recv(4096) == b""  # closed
    finally:
        raw.close()
    with login(server) as client:  # the server goes on
        assert client.noop()[0] == "OK"


@pytest.mark.on_disk  # pillarbox serve in a child process
def test_a_decompression_bomb_ends_the_session_not_the_server(settings: Settings) -> None:
    """256 MiB of one byte compress to ~250 KiB; the over-long line is refused or the
    session ended, and the server goes on (the bound on memory: test_inflation_*)."""
    pbserver.add_user(settings, ALICE)
    with pbserver.SubprocessServer(settings) as proc:
        sock = socket.create_connection(("127.0.0.1", proc.port("imaps")), timeout=TIMEOUT)
        tls = tls_context(settings).wrap_socket(sock, server_hostname=pbserver.HOSTNAME)
        try:
            f = tls.makefile("rb")
            f.readline()
            tls.sendall(b'L LOGIN %s "%s"\r\n' % (ALICE.encode(), pbserver.PASSWORD.encode()))
            while not f.readline().startswith(b"L "):
                pass
            tls.sendall(b"z COMPRESS DEFLATE\r\n")
            assert f.readline() == b"z OK DEFLATE active\r\n"
            answer = _send_and_read(tls, b"x NOOP " + _bomb(256))
            assert answer == b"" or answer.startswith((b"* BAD", b"x BAD", b"* BYE")), answer
        finally:
            tls.close()
        assert proc.proc.poll() is None
        with login(_AddressOf(proc)) as client:  # type: ignore[arg-type]
            assert client.noop()[0] == "OK"


def _bomb(mebibytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"a" * (1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(mebibytes))
    return bomb + compressor.flush(zlib.Z_SYNC_FLUSH)


def test_inflation_stops_while_the_reader_is_full() -> None:
    """The layer on a real loopback connection, with a reader nobody reads from: what it
    holds stays within the reader's flow-control window, however much the input inflates to."""

    async def scenario() -> tuple[int, int]:
        ready: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ready = asyncio.get_running_loop().create_future()

        async def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ready.set_result((r, w))

        server = await asyncio.start_server(accepted, "127.0.0.1", 0, limit=STREAM_LIMIT)
        port = server.sockets[0].getsockname()[1]
        _, client = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await ready
        writer = deflate.start(reader, writer)  # (a dropped StreamWriter closes)
        bomb = _bomb(64)
        client.write(bomb)
        await asyncio.sleep(1.0)  # the layer inflates what it may; the socket fills up
        held = len(reader._buffer)  # type: ignore[attr-defined]
        # Reading resumes inflation: the whole 64 MiB arrives, intact, in bounded steps.
        total = 0
        while total < 64 << 20:
            total += len(await asyncio.wait_for(reader.read(1 << 20), TIMEOUT))
        client.close()
        writer.close()
        server.close()
        return held, total

    held, total = asyncio.run(scenario())
    assert held <= 2 * STREAM_LIMIT + deflate.CHUNK, held
    assert total == 64 << 20


def _send_and_read(tls: ssl.SSLSocket, data: bytes) -> bytes:
    """Send ``data`` and return what the server answers (inflated) until it closes or
    TIMEOUT passes; a server that stops reading and closes ends the sending early."""
    decompressor = zlib.decompressobj(-15)
    answer = b""
    try:
        tls.sendall(data)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += decompressor.decompress(chunk)
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    return answer


class _AddressOf:
    """What imaphelp.login needs of a server: its settings and the imaps port."""

    def __init__(self, proc: pbserver.SubprocessServer):
        self.settings = proc.settings
        self._proc = proc

    def port(self, listener: str) -> int:
        return self._proc.port(listener)


# -- mbsync --------------------------------------------------------------------------------------


def _mbsync_config(tmp: Path, server: pbserver.RunningServer) -> Path:
    local = tmp / "local"
    local.mkdir()
    rc = tmp / "mbsyncrc"
    # The server's own certificate in CertificateFile: mbsync then trusts it for 127.0.0.1.
    rc.write_text(
        f"""IMAPAccount pb
Host 127.0.0.1
Port {server.port("imaps")}
User {ALICE}
Pass "{pbserver.PASSWORD}"
SSLType IMAPS
CertificateFile {server.settings.tls.cert}

IMAPStore pb-remote
Account pb

MaildirStore pb-local
Path {local}/
Inbox {local}/INBOX

Channel pb
Far :pb-remote:
Near :pb-local:
Patterns INBOX
Create Near
Sync All
SyncState *
"""
    )
    return rc


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) not installed")
def test_mbsync_syncs_both_ways_over_compress(
    server: pbserver.RunningServer, tmp_path: Path
) -> None:
    sent = [message(f"sync {i}", body=f"body {i}\r\n" * (1 + i * 300)) for i in range(20)]
    with login(server) as client:
        for msg in sent:
            client.append("INBOX", None, None, msg)
    rc = _mbsync_config(tmp_path, server)
    run = subprocess.run(
        ["mbsync", "-D", "-c", str(rc), "pb"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    debug = run.stdout + run.stderr
    assert "COMPRESS DEFLATE" in debug and "OK DEFLATE active" in debug
    inbox = tmp_path / "local" / "INBOX"
    # mbsync stores LF line ends in a Maildir and adds its X-TUID field while it syncs.
    got = sorted(
        re.sub(rb"(?m)^X-TUID: .*\n", b"", p.read_bytes()) for p in inbox.glob("*/*") if p.is_file()
    )
    assert got == sorted(m.replace(b"\r\n", b"\n") for m in sent)

    # Upload: a message dropped into the local Maildir reaches the server by APPEND.
    upload = message("from mbsync", body="written locally\r\n").replace(b"\r\n", b"\n")
    (inbox / "new" / "1700000000.local.x").write_bytes(upload)
    run = subprocess.run(["mbsync", "-c", str(rc), "pb"], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with login(server) as client:
        client.select("INBOX", readonly=True)
        typ, data = client.search(None, "SUBJECT", '"from mbsync"')
        assert typ == "OK" and len(data[0].split()) == 1
        typ, fetched = client.fetch(data[0].split()[0], "(BODY.PEEK[TEXT])")
        assert fetched[0][1] == b"written locally\r\n"


def test_imaplib_sessions_without_compress_are_unchanged(server: pbserver.RunningServer) -> None:
    # Offering COMPRESS changes nothing for a client that does not ask for it.
    with login(server) as client:
        typ, caps = client.capability()
        assert typ == "OK" and b"COMPRESS=DEFLATE" in caps[0].split()
        assert client.select("INBOX")[0] == "OK"
        client.append("INBOX", None, None, message("plain"))
        assert client.search(None, "ALL")[1] == [b"1"]

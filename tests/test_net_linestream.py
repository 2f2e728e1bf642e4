"""net/stream.py's LineStream on a real SocketTransport over loopback TCP, driven by an
independent client (asyncio's own streams, ssl, zlib): lines, literals, limits, flow
control both ways, deadlines, EOF, STARTTLS and COMPRESS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from pillarbox.config import Settings
from pillarbox.net import deflate
from pillarbox.net.stream import LineStream
from pillarbox.net.transport import SocketTransport
from pillarbox.tls.context import server_context
from tests import pbserver

LIMIT = 1024
Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return pbserver.make_settings(tmp_path_factory.mktemp("linestream") / "data")


@asynccontextmanager
async def pair(limit: int = LIMIT) -> AsyncIterator[tuple[LineStream, Client]]:
    """A LineStream on an accepted loopback socket, and the client connected to it."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        connecting = asyncio.ensure_future(asyncio.open_connection(*listener.getsockname()))
        accepted, _ = await loop.sock_accept(listener)
        client = await connecting
    transport = SocketTransport(loop, accepted)
    stream = LineStream(loop, limit)
    transport.attach(stream)
    try:
        yield stream, client
    finally:
        client[1].close()
        transport.abort()
        await asyncio.sleep(0)  # connection_lost


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_pipelined_lines_and_literals_come_out_in_order() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            literal = bytes(range(256)) * 3  # CR, LF and NUL inside a literal are data
            writer.write(b"a LOGIN {5}\r\nalice x\r\nb APPEND {768+}\r\n" + literal + b"\r\n")
            writer.write(b"c NOOP\r\n")
            assert await stream.read_line(5) == b"a LOGIN {5}\r\n"
            assert await stream.read_exactly(5, 5) == b"alice"
            assert await stream.read_line(5) == b" x\r\n"
            assert await stream.read_line(5) == b"b APPEND {768+}\r\n"
            assert await stream.read_exactly(768, 5) == literal
            assert await stream.read_line(5) == b"\r\n"
            assert await stream.read_line(5) == b"c NOOP\r\n"
            assert stream.buffered() == 0

    run(scenario)


def test_a_line_arriving_byte_by_byte_is_one_line() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            reading = asyncio.ensure_future(stream.read_line(5))
            for byte in b"a NOOP\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.005)
            assert await reading == b"a NOOP\r\n"

    run(scenario)


def test_a_line_beyond_the_limit_is_refused_and_the_buffer_stays_bounded() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            writer.write(b"x" * (20 * LIMIT))  # no LF at all
            await writer.drain()
            with pytest.raises(asyncio.LimitOverrunError):
                await stream.read_line(5)
            await asyncio.sleep(0.1)  # whatever else the socket holds is not read now
            assert not stream.transport.is_reading()
            assert stream.buffered() <= 2 * LIMIT + 64 * 1024  # at most one read past it

    run(scenario)


def test_reading_pauses_while_the_session_is_busy_and_resumes_when_it_reads() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            lines = [b"a%d NOOP\r\n" % i for i in range(2000)]  # ~18 KB, > 2 * LIMIT
            writer.write(b"".join(lines))
            await writer.drain()
            await asyncio.sleep(0.1)
            assert not stream.transport.is_reading()  # the session has read nothing yet
            for line in lines:
                assert await stream.read_line(5) == line
            assert stream.transport.is_reading()

    run(scenario)


def test_a_literal_larger_than_the_read_limit_is_read_whole() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            literal = b"0123456789abcdef" * (200 * LIMIT // 16)  # 200 times the limit
            writer.write(literal + b"\r\nz NOOP\r\n")
            assert await stream.read_exactly(len(literal), 5) == literal
            assert await stream.read_line(5) == b"\r\n"
            assert await stream.read_line(5) == b"z NOOP\r\n"

    run(scenario)


def test_a_timed_out_line_stays_buffered_for_the_next_read() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            writer.write(b"a NO")
            with pytest.raises(TimeoutError):
                await stream.read_line(0.1)
            writer.write(b"OP\r\n")
            assert await stream.read_line(5) == b"a NOOP\r\n"

    run(scenario)


def test_interrupt_ends_the_waiting_read_at_once() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            loop = asyncio.get_running_loop()
            reading = asyncio.ensure_future(stream.read_line(60))
            await asyncio.sleep(0.05)
            started = loop.time()
            stream.interrupt()
            with pytest.raises(TimeoutError):
                await reading
            assert loop.time() - started < 1
            stream.interrupt()  # nothing waits: nothing happens to the next read
            writer.write(b"a NOOP\r\n")
            assert await stream.read_line(5) == b"a NOOP\r\n"

    run(scenario)


def test_one_timer_per_stream_however_many_reads() -> None:
    """Reads do not leave a cancelled timer each in the loop's heap; a read with a later
    deadline than the running timer still times out at its own deadline."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with pair() as (stream, (_, writer)):
            for i in range(300):
                reading = asyncio.ensure_future(stream.read_line(30))
                await asyncio.sleep(0)
                writer.write(b"a%d NOOP\r\n" % i)
                assert await reading == b"a%d NOOP\r\n" % i
            scheduled = loop._scheduled  # type: ignore[attr-defined]
            ours = [h for h in scheduled if h._callback == stream._on_timer]
            assert len(ours) == 1
            assert len(scheduled) < 10  # and no pile of cancelled ones
            with pytest.raises(TimeoutError):
                await stream.read_line(0.1)  # shorter than the running timer's
            started = loop.time()
            with pytest.raises(TimeoutError):
                await stream.read_line(0.3)
            assert 0.25 < loop.time() - started < 2
        await asyncio.sleep(0)
        assert not [h for h in loop._scheduled if h._callback == stream._on_timer]  # type: ignore[attr-defined]

    run(scenario)


def test_eof_in_a_line_and_at_a_line_boundary() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            writer.write(b"a NOOP\r\nb NO")
            writer.write_eof()
            assert await stream.read_line(5) == b"a NOOP\r\n"
            with pytest.raises(asyncio.IncompleteReadError) as partial:
                await stream.read_line(5)
            assert partial.value.partial == b"b NO"
            with pytest.raises(asyncio.IncompleteReadError) as empty:
                await stream.read_exactly(3, 5)
            assert empty.value.partial == b""
            # Half-closed: the answer still reaches the client.
            stream.write(b"* BYE\r\n")
            await stream.drain(5)

        async with pair() as (stream, (_, writer)):
            writer.write(b"a {10}\r\nabc")
            writer.write_eof()
            await stream.read_line(5)
            with pytest.raises(asyncio.IncompleteReadError) as literal:
                await stream.read_exactly(10, 5)
            assert (literal.value.partial, literal.value.expected) == (b"abc", 10)

    run(scenario)


def test_drain_waits_for_a_client_that_does_not_read_and_gives_up_in_time() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (reader, _)):
            sock = stream.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            chunk = b"* 1 FETCH (BODY[] {65536}\r\n" + b"x" * 65536 + b")\r\n"
            for _ in range(40):  # far more than the socket buffers and the high-water mark
                stream.write(chunk)
            assert stream.write_backlog() > 64 * 1024
            with pytest.raises(TimeoutError):
                await stream.drain(0.2)
            total = 40 * len(chunk)
            draining = asyncio.ensure_future(stream.drain(10))
            received = 0
            while received < total:
                received += len(await reader.read(1 << 20))
            await draining
            assert stream.write_backlog() == 0

    run(scenario)


def test_drain_after_the_connection_is_gone_raises() -> None:
    async def scenario() -> None:
        async with pair() as (stream, _):
            stream.abort()
            await asyncio.sleep(0)  # connection_lost
            with pytest.raises(asyncio.IncompleteReadError):
                await stream.read_line(5)
            with pytest.raises(ConnectionResetError):
                await stream.drain(5)

    run(scenario)


def test_close_sends_what_is_queued_then_closes() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (reader, _)):
            stream.write(b"* BYE\r\n" * 1000)
            await stream.close(5)
            data = await reader.read()
            assert data == b"* BYE\r\n" * 1000

    run(scenario)


def test_starttls_drops_the_plaintext_then_reads_under_tls(settings: Settings) -> None:
    async def scenario() -> None:
        async with pair() as (stream, (reader, writer)):
            # Plaintext pipelined after the command must not count as sent under TLS.
            writer.write(b"a STARTTLS\r\nb LOGIN injected\r\n")
            assert await stream.read_line(5) == b"a STARTTLS\r\n"
            await asyncio.sleep(0.05)
            stream.pause_reading()
            assert stream.drop_buffered() == len(b"b LOGIN injected\r\n")
            stream.write(b"a OK begin TLS\r\n")
            assert await reader.readline() == b"a OK begin TLS\r\n"
            client = ssl.create_default_context(cafile=str(settings.tls.ca))
            context = server_context(settings.tls.cert, settings.tls.key)
            await asyncio.gather(
                stream.start_tls(context, 5),
                writer.start_tls(client, server_hostname=pbserver.HOSTNAME),
            )
            assert stream.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            writer.write(b"c CAPABILITY\r\n")
            assert await stream.read_line(5) == b"c CAPABILITY\r\n"
            stream.write(b"c OK\r\n")
            assert await reader.readline() == b"c OK\r\n"

    run(scenario)


def test_compress_inflates_reads_and_deflates_writes() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (reader, writer)):
            stream.start_deflate()
            out = zlib.compressobj(wbits=-15)
            literal = b"Subject: hello\r\n\r\n" + b"compressible " * 5000 + b"\r\n"
            commands = b"a APPEND INBOX {%d+}\r\n" % len(literal) + literal + b"\r\nb NOOP\r\n"
            writer.write(out.compress(commands) + out.flush(zlib.Z_SYNC_FLUSH))
            assert await stream.read_line(5) == b"a APPEND INBOX {%d+}\r\n" % len(literal)
            assert await stream.read_exactly(len(literal), 5) == literal
            assert await stream.read_line(5) == b"\r\n"
            assert await stream.read_line(5) == b"b NOOP\r\n"
            stream.write(b"* OK " + b"y" * 10000 + b"\r\n")
            inflate = zlib.decompressobj(wbits=-15)
            text = b""
            while not text.endswith(b"\r\n"):
                text += inflate.decompress(await reader.read(4096))
            assert text == b"* OK " + b"y" * 10000 + b"\r\n"

    run(scenario)


def test_compress_drops_the_idle_inflater_and_replays_it_exactly() -> None:
    """Between commands the inflater is dropped and made again from the client's input;
    the stream goes on intact across many such rests, with matches reaching back into
    earlier commands (one compressor for the whole stream, as clients do), until the input
    is too long to replay and the inflater stays."""

    async def scenario() -> None:
        async with pair(limit=64 * 1024) as (stream, (_, writer)):
            stream.start_deflate()
            inflating = stream._transport._inflating
            out = zlib.compressobj(wbits=-15)
            sent = 0
            for i in range(300):
                line = b"a%d UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)])\r\n" % i
                writer.write(out.compress(line) + out.flush(zlib.Z_SYNC_FLUSH))
                assert await stream.read_line(5) == line
                sent += len(line)
                reading = asyncio.ensure_future(stream.read_line(5))
                await asyncio.sleep(0)  # the read waits: the layer rests
                replayable = sent <= deflate.REPLAY_LIMIT
                assert (inflating._inflater is None) == replayable, (i, sent)
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            assert sent > deflate.REPLAY_LIMIT  # both regimes were gone through
            # A literal whose inflated form is far larger than a step (long matches).
            literal = b"x" * 300_000
            writer.write(out.compress(b"b {300000+}\r\n" + literal) + out.flush(zlib.Z_SYNC_FLUSH))
            assert await stream.read_line(5) == b"b {300000+}\r\n"
            assert await stream.read_exactly(len(literal), 5) == literal

    run(scenario)


def test_compress_replay_keeps_a_long_match_split_across_steps() -> None:
    """Input whose inflation fills a step exactly while zlib still holds output: after a
    rest, the replayed inflater is where the dropped one was (nothing lost, nothing twice)."""

    async def scenario() -> None:
        async with pair(limit=64 * 1024) as (stream, (_, writer)):
            stream.start_deflate()
            out = zlib.compressobj(wbits=-15)
            first = b"c APPEND {%d+}\r\n" % deflate.CHUNK + b"y" * deflate.CHUNK
            writer.write(out.compress(first) + out.flush(zlib.Z_SYNC_FLUSH))
            assert await stream.read_line(5) == b"c APPEND {%d+}\r\n" % deflate.CHUNK
            assert await stream.read_exactly(deflate.CHUNK, 5) == b"y" * deflate.CHUNK
            reading = asyncio.ensure_future(stream.read_line(5))
            await asyncio.sleep(0.05)
            writer.write(out.compress(b"\r\nd NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
            assert await reading == b"\r\n"
            assert await stream.read_line(5) == b"d NOOP\r\n"

    run(scenario)


def test_a_read_cancelled_by_its_caller_loses_nothing() -> None:
    async def scenario() -> None:
        async with pair() as (stream, (_, writer)):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # the caller's deadline, not the stream's
                    await stream.read_line(30)
            writer.write(b"a NOOP\r\n")
            await asyncio.sleep(0.05)  # arrives while no read waits
            assert await stream.read_line(5) == b"a NOOP\r\n"
            assert stream._deadline == 0.0  # the cancelled read's deadline is gone

    run(scenario)

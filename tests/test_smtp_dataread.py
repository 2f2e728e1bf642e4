"""DATA/BDAT reading: end marker, dot-unstuffing across chunk boundaries, bare CR/LF,
size and line limits, bytes after the end marker kept for the next command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.smtp.dataread import (
    MEMORY_LIMIT,
    DataOutcome,
    InputStream,
    LineTooLong,
    MessageSpool,
    has_long_line,
    read_bdat_chunk,
    read_dot_data,
)


def stream_of(chunks: list[bytes], eof: bool = True) -> InputStream:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return InputStream(reader, timeout=2)


def files_in(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def settled_files(directory: Path) -> list[Path]:
    """The files left once background unlinks (dataread.remove_later) are done."""
    for _ in range(100):
        if not files_in(directory):
            break
        await asyncio.sleep(0.02)
    return files_in(directory)


def dot_stuff(message: bytes) -> bytes:
    stuffed = b"\r\n" + message
    return stuffed.replace(b"\r\n.", b"\r\n..")[2:]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def read(chunks: list[bytes], tmp: Path, max_size: int = 10**8, max_line: int = 1000):
    stream = stream_of(chunks)
    spool = MessageSpool(tmp, "msg", max_size)
    outcome = await read_dot_data(stream, spool, max_line)
    message = await spool.finish() if outcome is DataOutcome.OK else None
    return outcome, message, stream


@given(
    lines=st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        max_size=30,
    ),
    chunk=st.integers(min_value=1, max_value=17),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_unstuffing_roundtrip_in_any_chunking(
    lines: list[bytes], chunk: int, tmp_path: Path
) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = dot_stuff(message) + b".\r\nQUIT\r\n"
    outcome, stored, stream = asyncio.run(read(split_every(wire, chunk), tmp_path))
    assert outcome is DataOutcome.OK
    assert stored is not None and stored.read_all() == message
    assert asyncio.run(stream.readline(100)) == b"QUIT\r\n"


async def test_empty_message(tmp_path: Path) -> None:
    outcome, stored, _ = await read([b".\r\n"], tmp_path)
    assert outcome is DataOutcome.OK and stored is not None and stored.read_all() == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"Subject: x\r\n\r\nhidden\n.\nMAIL FROM:<evil@x>\r\n.\r\n",  # LF.LF smuggling
        b"Subject: x\r\n\r\nhidden\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n",
        b"Subject: x\r\n\r\nhidden\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
        b"Subject: x\r\n\r\nbare\rcr\r\n.\r\n",
    ],
)
async def test_bare_line_endings_are_refused(wire: bytes, tmp_path: Path) -> None:
    outcome, _, _ = await read(split_every(wire, 7), tmp_path)
    assert outcome is DataOutcome.BARE_LINE_ENDING
    assert await settled_files(tmp_path) == []


async def test_only_crlf_dot_crlf_ends_data(tmp_path: Path) -> None:
    stream = stream_of([b"line\r\n.x\r\n..\r\n"], eof=False)
    spool = MessageSpool(tmp_path, "m", 10**6)
    task = asyncio.create_task(read_dot_data(stream, spool, 1000))
    await asyncio.sleep(0.05)
    assert not task.done()  # ".x" and ".." lines are content, not the end
    stream._reader.feed_data(b".\r\n")
    assert await task is DataOutcome.OK
    assert (await spool.finish()).read_all() == b"line\r\nx\r\n.\r\n"


async def test_too_big_is_read_to_the_end_and_discarded(tmp_path: Path) -> None:
    body = b"x" * 70 + b"\r\n"
    wire = body * 5000 + b".\r\nNOOP\r\n"
    outcome, _, stream = await read(split_every(wire, 65536), tmp_path, max_size=MEMORY_LIMIT)
    assert outcome is DataOutcome.TOO_BIG
    assert await settled_files(tmp_path) == []
    assert await stream.readline(100) == b"NOOP\r\n"


async def test_long_line(tmp_path: Path) -> None:
    wire = b"a" * 2000 + b"\r\n.\r\nNOOP\r\n"
    outcome, _, stream = await read(split_every(wire, 300), tmp_path, max_line=1000)
    assert outcome is DataOutcome.LINE_TOO_LONG
    assert await stream.readline(100) == b"NOOP\r\n"
    ok, _, _ = await read([b"a" * 998 + b"\r\n.\r\n"], tmp_path, max_line=1000)
    assert ok is DataOutcome.OK


async def test_big_message_spools_to_a_file(tmp_path: Path) -> None:
    message = (b"0123456789" * 7 + b"\r\n") * 40000  # 2.8 MB
    wire = dot_stuff(message) + b".\r\n"
    outcome, stored, _ = await read(split_every(wire, 65536), tmp_path)
    assert outcome is DataOutcome.OK and stored is not None
    assert stored.path is not None and stored.path.read_bytes() == message
    stored.release()
    assert await settled_files(tmp_path) == []


async def test_bdat_chunks(tmp_path: Path) -> None:
    stream = stream_of([b"abc\nde", b"fNOOP\r\n"])
    spool = MessageSpool(tmp_path, "m", 5)
    assert await read_bdat_chunk(stream, spool, 4)
    assert not await read_bdat_chunk(stream, spool, 3)  # over the 5-byte limit
    assert await stream.readline(100) == b"NOOP\r\n"


async def test_readline_limit(tmp_path: Path) -> None:
    stream = stream_of([b"A" * 5000 + b"\r\nNOOP\r\n"])
    with pytest.raises(LineTooLong):
        await stream.readline(512)
    assert await stream.readline(512) == b"NOOP\r\n"


async def test_read_timeout_and_recovery() -> None:
    reader = asyncio.StreamReader()
    stream = InputStream(reader, timeout=0.2)
    with pytest.raises(TimeoutError):
        await stream.readline(100)
    # The task was not left cancelled: later reads work, with a new deadline.
    stream.expect_line(0.2)
    reader.feed_data(b"NOOP\r\n")
    assert await stream.readline(100) == b"NOOP\r\n"
    stream.close()


@given(
    lines=st.lists(st.integers(min_value=0, max_value=60), max_size=40),
    max_line=st.integers(min_value=3, max_value=50),
)
def test_long_line_detection_matches_the_definition(lines: list[int], max_line: int) -> None:
    region = b"\r\n" + b"\r\n".join(b"x" * n for n in lines)
    expected = any(n > max_line - 2 for n in lines)
    assert has_long_line(region, max_line) is expected

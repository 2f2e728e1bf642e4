"""Reading from an SMTP client: bounded command lines, DATA and BDAT message content.

``InputStream`` is the session's only view of the socket: a buffer over the
``asyncio.StreamReader`` with bounded ``readline``, ``read_chunk``, ``unread`` (bytes that
followed the end of DATA belong to the next pipelined command) and ``discard`` (STARTTLS
throws away pipelined plaintext, RFC 3207 §4.2).

``read_dot_data`` implements DATA (RFC 5321 §4.1.1.4, §4.5.2) without a Python loop per
line: it reads 64 KiB chunks, finds the end marker ``CRLF.CRLF`` with ``bytes.find``, checks
for bare CR or LF by comparing ``count`` results (a bare one is the SMTP smuggling attack of
2023: servers that disagree on where DATA ends can be made to accept a hidden second
message), undoes dot-stuffing with one ``replace(b"\\r\\n.", b"\\r\\n")`` per chunk, and
hands the result to a :class:`MessageSpool`. Only ``CRLF.CRLF`` ends the data; a bare LF
anywhere ends the session with 521 (as Postfix's ``smtpd_forbid_bare_newline``).

Every chunk is cut after its last complete line (the partial line stays in the buffer), so
line-length checks and the ``CRLF.`` patterns never straddle two chunks.

``MessageSpool`` bounds memory: a message lives in memory up to 256 KiB (one write, done by
the delivery thread later) and beyond that goes to a spool file, written in 1 MiB batches
from a worker thread, so a 50 MB message costs about 1 MiB of RAM and never blocks the loop.
The spool file is not the durable copy (the Maildir or queue copy is, fsync'd before 250);
it is removed when the transaction ends, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 1 << 16
MEMORY_LIMIT = 256 * 1024
FILE_BATCH = 1 << 20
# The header section we keep in memory for inspection (From, Message-ID, forged headers).
HEAD_LIMIT = 256 * 1024
TERMINATOR = b"\r\n.\r\n"


class ClientGone(ConnectionError):
    """The client closed the connection."""


class Interrupted(Exception):
    """The wait for data was interrupted on purpose (the server is shutting down)."""


class LineTooLong(Exception):
    """A command line exceeded its limit (the rest of the line has been consumed)."""


class InputStream:
    """Buffered, bounded reads from one client; every wait for data has a deadline.

    Two kinds of deadline, set by the session before it reads (``expect_line`` /
    ``expect_transfer``). A *line* deadline is fixed when the wait for a command line
    starts: bytes that trickle in do not move it, so a client sending one byte every few
    seconds is cut when the whole line is late. A *transfer* deadline (DATA, BDAT) starts
    at ``read_timeout`` from now and moves later by one second per ``min_rate`` bytes
    received, so a transfer must keep that average rate, and no single read may wait more
    than ``read_timeout`` for data."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float):
        self._reader = reader
        self._buf = bytearray()
        # One watchdog timer per stream instead of a timeout context per read (which costs
        # a timer handle and two context switches per read on the hot path): the timer
        # fires at the earliest deadline and cancels the read if it is still waiting.
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout
        self._read_timeout: float | None = None
        self._min_rate = 0.0
        self._waiting_until: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._task: asyncio.Task[object] | None = None
        self._timed_out = False
        self._interrupted = False
        # Called before every wait for data (the session flushes the replies it owes).
        self.before_wait: Callable[[], Awaitable[None]] | None = None

    def expect_line(self, timeout: float) -> None:
        """The next line(s) must be complete within ``timeout`` seconds from now."""
        self._deadline = self._loop.time() + timeout
        self._read_timeout = None
        self._min_rate = 0.0

    def expect_transfer(self, read_timeout: float, min_rate: float) -> None:
        """Message content follows: see the class docstring."""
        self._deadline = self._loop.time() + read_timeout
        self._read_timeout = read_timeout
        self._min_rate = float(min_rate)

    @property
    def waiting(self) -> bool:
        return self._waiting_until is not None

    def interrupt(self) -> None:
        """Make a pending wait for data raise :class:`Interrupted`."""
        if self._waiting_until is not None and self._task is not None:
            self._interrupted = True
            self._task.cancel()

    def _wait_limit(self) -> float:
        now = self._loop.time()
        until = self._deadline
        if self._read_timeout is not None:
            until = min(until, now + self._read_timeout)
        if until <= now:
            raise TimeoutError("the client is too slow")
        return until

    async def _fill(self) -> None:
        if self.before_wait is not None:
            await self.before_wait()
        until = self._wait_limit()
        self._waiting_until = until
        if self._timer is None or self._timer_at > until:
            if self._timer is not None:
                self._timer.cancel()
            self._task = asyncio.current_task()
            self._arm(until)
        try:
            data = await self._reader.read(READ_CHUNK)
        except asyncio.CancelledError:
            if self._task is not None and (self._timed_out or self._interrupted):
                self._task.uncancel()
                if self._interrupted:
                    self._interrupted = False
                    raise Interrupted() from None
                self._timed_out = False
                raise TimeoutError("no data from the client in time") from None
            raise
        finally:
            self._waiting_until = None
        if not data:
            raise ClientGone("client closed the connection")
        if self._min_rate:
            self._deadline += len(data) / self._min_rate
        self._buf += data

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._watch)
        self._timer_at = when

    def _watch(self) -> None:
        self._timer = None
        until = self._waiting_until
        if until is None or self._task is None:
            return  # not waiting now: the next read re-arms the timer
        if self._loop.time() >= until:
            self._timed_out = True
            self._task.cancel()
        else:
            self._arm(until)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def has_line(self) -> bool:
        return b"\n" in self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def readline(self, limit: int) -> bytes:
        """One line including its LF; LineTooLong (after skipping it) when over ``limit``."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                if len(line) > limit:
                    raise LineTooLong()
                return line
            if len(self._buf) > limit:
                await self._skip_line()
                raise LineTooLong()
            await self._fill()

    async def _skip_line(self) -> None:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                del self._buf[: end + 1]
                return
            self._buf.clear()
            await self._fill()

    async def read_chunk(self) -> bytes:
        """Whatever is buffered, or the next chunk from the network."""
        if not self._buf:
            await self._fill()
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def unread(self, data: bytes | bytearray) -> None:
        if data:
            self._buf[:0] = data

    def discard(self) -> int:
        dropped = len(self._buf)
        self._buf.clear()
        return dropped


@dataclass(frozen=True)
class SpooledMessage:
    """A received message: ``parts`` concatenated are the bytes as received."""

    head: bytes  # the header section with its blank line (or the first HEAD_LIMIT bytes)
    parts: tuple[bytes | Path, ...]
    size: int
    path: Path | None = None

    def release(self) -> None:
        if self.path is not None:
            remove_later(self.path)

    def read_all(self) -> bytes:
        """The whole message in memory (blocking for spooled ones; use from a thread)."""
        if self.path is None:
            return b"".join(p for p in self.parts if isinstance(p, bytes))
        return self.path.read_bytes()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_later(path: Path) -> None:
    """Unlink a spool file from a worker thread: freeing the blocks of a 50 MB file takes
    milliseconds the event loop should not spend. Without a running loop, at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _remove(path)
        return
    loop.run_in_executor(None, _remove, path)


def header_section(data: bytes | bytearray) -> bytes:
    """The header block of ``data`` through the empty line (RFC 5322 §2.1), bounded."""
    if data[:2] == b"\r\n":
        return b"\r\n"
    end = data.find(b"\r\n\r\n", 0, HEAD_LIMIT)
    return bytes(data[: end + 4]) if end >= 0 else bytes(data[:HEAD_LIMIT])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create_and_write(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MessageSpool:
    """Collects one message (see the module docstring); ``write`` returns False once the
    message is over ``max_size``, after which bytes are only counted, never stored."""

    def __init__(self, directory: Path, name: str, max_size: int):
        self.path = directory / name
        self.max_size = max_size
        self.size = 0
        self._mem = bytearray()
        self._fd: int | None = None
        self._head: bytes | None = None
        self._flush_at = MEMORY_LIMIT
        self.dropped = False

    async def write(self, data: bytes | bytearray) -> bool:
        self.size += len(data)
        if self.dropped:
            return False
        if self.size > self.max_size:
            self.discard()
            return False
        self._mem += data
        if len(self._mem) >= self._flush_at:
            await self._spill()
        return True

    async def _spill(self) -> None:
        if self._head is None:
            self._head = header_section(self._mem)
        data = bytes(self._mem)
        self._mem.clear()
        if self._fd is None:
            self._fd = await asyncio.to_thread(_create_and_write, self.path, data)
            self._flush_at = FILE_BATCH
        else:
            await asyncio.to_thread(_write_all, self._fd, data)

    async def finish(self) -> SpooledMessage:
        if self._fd is None:
            data = bytes(self._mem)
            self._mem.clear()
            return SpooledMessage(header_section(data), (data,), self.size)
        if self._mem:
            await self._spill()
        fd, self._fd = self._fd, None
        os.close(fd)
        assert self._head is not None
        return SpooledMessage(self._head, (self.path,), self.size, self.path)

    def discard(self) -> None:
        """Drop what was stored (too big, client gone, transaction aborted)."""
        self.dropped = True
        self._mem = bytearray()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            remove_later(self.path)


class DataOutcome(enum.Enum):
    OK = "ok"
    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"
    BARE_LINE_ENDING = "bare CR or LF"


def has_long_line(region: bytes | bytearray, max_line: int) -> bool:
    """Whether a line of ``region`` has more than ``max_line - 2`` octets of text.

    Without a Python step per line and without a regex (``[^\n]{N}`` costs O(n * line
    length): 13 ms per 64 KiB). Probe windows of ``step`` octets: a line of at least
    ``2 * step - 1`` octets contains a whole window, so only a window without any LF needs
    the exact measure of the line around it. About 13 ``find`` calls per 64 KiB."""
    limit = max_line - 2
    step = max(1, (max_line - 1) // 2)
    size = len(region)
    position = 0
    while position + step <= size:
        end = position + step
        if region.find(b"\n", position, end) >= 0:
            position = end
            continue
        start = region.rfind(b"\n", 0, position) + 1
        stop = region.find(b"\n", end)
        stop = size if stop < 0 else stop
        text = stop - start - (1 if stop > start and region[stop - 1] == 13 else 0)
        if text > limit:
            return True
        position = stop
    return False


def _check_lines(region: bytes | bytearray, max_line: int) -> DataOutcome:
    crlf = region.count(b"\r\n")
    if region.count(b"\r") != crlf or region.count(b"\n") != crlf:
        return DataOutcome.BARE_LINE_ENDING
    if len(region) > max_line and has_long_line(region, max_line):
        return DataOutcome.LINE_TOO_LONG
    return DataOutcome.OK


async def read_dot_data(stream: InputStream, spool: MessageSpool, max_line: int) -> DataOutcome:
    """Read DATA content up to ``CRLF.CRLF`` into ``spool`` (see the module docstring).

    On BARE_LINE_ENDING the caller must close the connection: where the client thinks the
    data ends is unknown. On TOO_BIG and LINE_TOO_LONG the data was read to its end and
    discarded; the session continues."""
    # The data starts at a line start: a virtual CRLF makes the first line like the others.
    raw = bytearray(b"\r\n")
    strip = 2
    outcome = DataOutcome.OK
    while True:
        raw += await stream.read_chunk()
        end = raw.find(TERMINATOR)
        if end >= 0:
            stream.unread(raw[end + 5 :])
            if outcome is DataOutcome.OK:
                outcome = await _store(raw[: end + 2], strip, spool, max_line)
            return outcome
        if outcome is not DataOutcome.OK:
            del raw[:-4]  # discarding: keep just enough to see the end marker
            continue
        cut = raw.rfind(b"\r\n", 1)
        if cut < 1:
            if len(raw) > max_line + 2:
                outcome = DataOutcome.LINE_TOO_LONG
                spool.discard()
            continue
        outcome = await _store(raw[:cut], strip, spool, max_line)
        if outcome is DataOutcome.BARE_LINE_ENDING:
            spool.discard()
            return outcome
        del raw[:cut]
        strip = 0
        if outcome is not DataOutcome.OK:
            spool.discard()


async def _store(
    region: bytes | bytearray, strip: int, spool: MessageSpool, max_line: int
) -> DataOutcome:
    outcome = _check_lines(region, max_line)
    if outcome is not DataOutcome.OK:
        return outcome
    # RFC 5321 §4.5.2: a leading dot of any line is removed.
    data = region.replace(b"\r\n.", b"\r\n")
    if not await spool.write(data[strip:] if strip else data):
        return DataOutcome.TOO_BIG
    return DataOutcome.OK


async def read_bdat_chunk(stream: InputStream, spool: MessageSpool, size: int) -> bool:
    """Read exactly ``size`` octets of BDAT content (RFC 3030 §2) into ``spool``; returns
    False when the message went over its size limit (the chunk is still consumed)."""
    remaining = size
    ok = not spool.dropped
    while remaining:
        chunk = await stream.read_chunk()
        if len(chunk) > remaining:
            stream.unread(chunk[remaining:])
            chunk = chunk[:remaining]
        remaining -= len(chunk)
        ok = await spool.write(chunk) and ok
    return ok and not spool.dropped

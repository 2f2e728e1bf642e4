"""Requests and answers, both ways, between the main process and an SMTP intake worker.

One stream socket (a ``socketpair`` made by the main process before it starts the
worker) carries frames: a 4-byte big-endian length, then a pickled ``(kind, ident,
payload)``. Either side may ask (``ask``: wait for the answer), tell (``tell``: no answer)
or answer; several requests are in flight at once, and answers find their request by
``ident``. A request whose handler must wait (a commit: the store's fsync) is handled in
a task of its own; the quick ones (``immediate``: admitting or releasing a client, a
counter update) are answered as they are read, without a task.

Frames sent during one turn of the event loop leave together, in one ``write`` when the
turn ends (:meth:`Channel._flush`): under load the hand-overs of many sessions, their
answers and the admissions and releases of their connections then cost one system call
and one wake-up of the other process per turn, not one each (each is a frame of its own,
so one that cannot be encoded fails alone, in its ``ask``).

Why pickle: both ends are this program, started by the same user from the same
installation, over a socket no one else can reach (it is never in the file system), so
there is no trust boundary to defend, which is the case ``multiprocessing`` makes for its
own pipes; and the payloads are dataclasses of the delivery code (routes, targets, message
parts) that would otherwise need a codec of their own kept in step with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pillarbox import log

_log = log.get("intake")
_LENGTH = struct.Struct("!I")
MAX_FRAME = 1 << 30  # a message of max_message_size travels as a file path, not inline
ANSWER = "answer"
FAILED = "failed"

Handler = Callable[[str, Any], Awaitable[Any]]
Immediate = Mapping[str, Callable[[Any], Any]]


class ChannelClosed(ConnectionError):
    """The other process is gone (or closed the channel)."""


class Channel:
    """See the module docstring. ``handle(kind, payload)`` answers the other side's
    requests; its result is the answer (for ``tell`` it is dropped). ``immediate`` maps
    the kinds answered at once, by a plain function of the payload, to that function."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handle: Handler,
        immediate: Immediate | None = None,
    ):
        self._reader = reader
        self._writer = writer
        self._handle = handle
        self._immediate: Immediate = immediate or {}
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: list[bytes] = []  # encoded frames waiting for the end of the turn
        self.closed = False

    @classmethod
    async def open(
        cls, sock: socket.socket, handle: Handler, immediate: Immediate | None = None
    ) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer, handle, immediate)

    async def ask(self, kind: str, payload: Any = None) -> Any:
        """Send a request and wait for its answer; ChannelClosed if the peer is gone, the
        peer's exception (re-raised here as RuntimeError) if its handler failed."""
        if self.closed:
            raise ChannelClosed("channel closed")
        ident = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            self._send(kind, ident, payload)
            return await answer
        finally:
            self._waiting.pop(ident, None)

    def tell(self, kind: str, payload: Any = None) -> None:
        """Send a request that wants no answer (a notice); dropped if the peer is gone."""
        if not self.closed:
            self._send(kind, 0, payload)

    def _send(self, kind: str, ident: int, payload: Any) -> None:
        frame = pickle.dumps((kind, ident, payload), protocol=pickle.HIGHEST_PROTOCOL)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing += (_LENGTH.pack(len(frame)), frame)

    def _flush(self) -> None:
        """Write the frames of this turn of the loop at once (see the module docstring)."""
        frames, self._outgoing = self._outgoing, []
        if frames and not self.closed:
            self._writer.write(b"".join(frames))

    async def run(self) -> None:
        """Read frames until the peer closes; then fail every request still waiting."""
        try:
            while True:
                kind, ident, payload = await self._read_frame()
                if kind in (ANSWER, FAILED):
                    self._answered(kind, ident, payload)
                elif kind in self._immediate:
                    self._serve_now(kind, ident, payload)
                else:
                    task = asyncio.get_running_loop().create_task(self._serve(kind, ident, payload))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._close()

    async def _read_frame(self) -> tuple[str, int, Any]:
        (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise ChannelClosed(f"frame of {length} bytes")
        frame: tuple[str, int, Any] = pickle.loads(await self._reader.readexactly(length))
        return frame

    def _answered(self, kind: str, ident: int, payload: Any) -> None:
        waiting = self._waiting.get(ident)
        if waiting is None or waiting.done():
            return  # the asker gave up (cancelled)
        if kind == FAILED:
            waiting.set_exception(RuntimeError(f"the other process failed: {payload}"))
        else:
            waiting.set_result(payload)

    def _serve_now(self, kind: str, ident: int, payload: Any) -> None:
        try:
            result = self._immediate[kind](payload)
        except Exception as exc:
            _log.error("intake request failed", kind=kind, exc_info=True)
            if ident and not self.closed:
                self._send(FAILED, ident, f"{type(exc).__name__}: {exc}")
            return
        if ident and not self.closed:
            self._send(ANSWER, ident, result)

    async def _serve(self, kind: str, ident: int, payload: Any) -> None:
        try:
            result = await self._handle(kind, payload)
        except Exception as exc:
            _log.error("intake request failed", kind=kind, exc_info=True)
            if ident and not self.closed:
                self._send(FAILED, ident, f"{type(exc).__name__}: {exc}")
            return
        if ident and not self.closed:
            self._send(ANSWER, ident, result)

    def _close(self) -> None:
        self._flush()  # what this turn still said (the last answers) goes out first
        self.closed = True
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ChannelClosed("the other process is gone"))
        with contextlib.suppress(Exception):
            self._writer.close()

    async def finish(self, grace: float) -> None:
        """Let the requests being handled finish (for up to ``grace`` seconds)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

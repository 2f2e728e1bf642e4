"""Logging: one line per event, ``key=value`` fields, on stderr.

    2026-11-25T13:04:05.123Z info smtp event=delivered queue_id=4F2A9C1B3D msgid=<x@y> ...

Values with spaces or quotes are quoted, so every line splits cleanly with shlex. The first
fields are fixed (time, level, component); a mail admin can ``grep queue_id=ID`` to follow
one message across SMTP, queue and delivery, as with Postfix's queue ids.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import sys
import threading
import time
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any

_NEEDS_QUOTES = set(' "=\t')


def _format_value(value: Any) -> str:
    text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if not text or any(c in _NEEDS_QUOTES for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None)


class KeyValueFormatter(logging.Formatter):
    # The time up to the second, kept from the last line: a busy server writes many
    # lines a second, and one writer thread formats them all.
    _second = -1
    _second_text = ""

    def _stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return self._second_text

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._stamp(record.created)
        millis = int(record.msecs)
        fields: dict[str, Any] = {"event": record.getMessage()}
        fields.update(getattr(record, "fields", {}))
        line = (
            f"{stamp}.{millis:03d}Z {record.levelname.lower()} "
            f"{record.name.removeprefix('pillarbox.')} {format_fields(fields)}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RecentLines:
    """The last lines written, for the web admin's log page (searched by queue id or
    address). Filled by the writer thread as it writes; ``deque.append`` with a maxlen is
    atomic, so readers on the event loop need no lock."""

    def __init__(self, size: int = 10_000):
        self.lines: deque[str] = deque(maxlen=size)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def search(self, needle: str = "", limit: int = 200) -> list[str]:
        """Lines containing ``needle`` (case-insensitive), newest first."""
        folded = needle.casefold()
        found: list[str] = []
        for line in reversed(list(self.lines)):
            if not folded or folded in line.casefold():
                found.append(line)
                if len(found) >= limit:
                    break
        return found


RECENT = RecentLines()


class _Writer(logging.StreamHandler):
    """stderr, remembering each line it writes in :data:`RECENT`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        RECENT.add(line)
        return line

    def write_all(self, records: list[logging.LogRecord]) -> None:
        """Format ``records`` and write them with one write (a bad record is reported by
        ``handleError`` as ``emit`` would, and the others still go)."""
        lines = []
        for record in records:
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        if not lines:
            return
        try:
            with self.lock or contextlib.nullcontext():
                self.stream.write("".join(lines))
                self.flush()
        except Exception:
            self.handleError(records[-1])


# How long the writer thread lets lines gather once one arrived, when the previous write
# was less than BUSY_SECONDS ago (a busy server): each wake-up of the thread costs two GIL
# hand-overs with the event loop and a write, and one per burst instead of one per line
# takes CPU off every message (three lines each). A line after a quiet spell is written
# at once; under load one reaches stderr at most BATCH_SECONDS later.
BATCH_SECONDS = 0.005
BUSY_SECONDS = 0.02
_STOP = None


class _BatchWriter:
    """The writer thread (``logging.handlers.QueueListener``, in batches): it waits for
    a record, lets the ones of the next ``BATCH_SECONDS`` gather when it is busy, and
    writes them all."""

    def __init__(self, queue: SimpleQueue[logging.LogRecord | None], writer: _Writer):
        self.queue = queue
        self.writer = writer
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread (at exit)."""
        self.queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        written = 0.0  # monotonic time of the last write
        while True:
            batch = [self.queue.get()]
            if batch[0] is not _STOP and time.monotonic() - written < BUSY_SECONDS:
                time.sleep(BATCH_SECONDS)
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except Empty:
                    break
            records = [r for r in batch if r is not _STOP]
            if records:
                self.writer.write_all(records)
                written = time.monotonic()
            if len(records) < len(batch):
                return


def setup(level: str = "info") -> None:
    # What a record would otherwise collect on every event, on the event loop, and our
    # lines never print: the caller's file and line (a stack walk per record), thread
    # and process names (the "Optimization" section of the logging HOWTO).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = _Writer(sys.stderr)
    writer.setFormatter(KeyValueFormatter())
    # Lines are formatted and written by a thread of their own: a write to stderr (a pipe
    # to journald, a terminal) is a system call that would make the event loop give up
    # the GIL and wait for it again, and a slow reader would stall every session.
    queue: SimpleQueue[logging.LogRecord | None] = SimpleQueue()
    listener = _BatchWriter(queue, writer)
    root = logging.getLogger("pillarbox")
    root.handlers[:] = [_Enqueue(queue)]
    root.setLevel(level.upper())
    root.propagate = False
    listener.start()
    atexit.register(listener.stop)  # what is queued is written before the process ends


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over as it is: formatting is the writer thread's work. Field
    values are plain values (strings, numbers) that nothing changes after the event."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class EventLogger:
    """``log.info("delivered", queue_id=..., to=...)``: an event name plus fields."""

    def __init__(self, component: str):
        self._logger = logging.getLogger(f"pillarbox.{component}")

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get(component: str) -> EventLogger:
    return EventLogger(component)

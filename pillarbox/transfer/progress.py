"""Progress of a transfer: a bar per folder with an ETA on a terminal, a line otherwise.

On a TTY ``rich`` draws one bar per folder (count, bytes, rate, time left); when output goes
to a file or a pipe (cron, CI, ``| tee``) each folder gets one plain summary line instead,
so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class FolderProgress:
    """One folder's bar (or line); ``advance`` per stored batch, ``finish`` at the end."""

    def __init__(self, owner: TransferProgress, label: str, total: int, total_bytes: int):
        self.owner = owner
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self.done = 0
        self.task: TaskID | None = None
        if owner.bars is not None:
            self.task = owner.bars.add_task(label, total=total_bytes or None, count=0, of=total)

    def advance(self, count: int, nbytes: int) -> None:
        self.done += count
        if self.owner.bars is not None and self.task is not None:
            self.owner.bars.update(self.task, advance=nbytes, count=self.done)

    def finish(self, summary: str) -> None:
        seconds = time.monotonic() - self.started
        line = f"{self.label}: {summary} ({seconds:.1f} s)"
        if self.owner.bars is not None and self.task is not None:
            task = self.owner.bars.tasks[self.task]
            self.owner.bars.update(self.task, completed=task.total or 0)
            self.owner.bars.console.print(line)
        else:
            print(line, file=self.owner.stream, flush=True)


class TransferProgress:
    """Context manager owning the bars of one run."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None):
        self.stream = stream or sys.stdout
        is_tty = self.stream.isatty() if tty is None else tty
        self.bars: Progress | None = None
        if is_tty:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}/{task.fields[of]} msgs"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )

    def folder(self, label: str, total: int, total_bytes: int = 0) -> FolderProgress:
        return FolderProgress(self, label, total, total_bytes)

    def __enter__(self) -> TransferProgress:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bars is not None:
            self.bars.stop()

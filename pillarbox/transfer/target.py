"""Where imported mail goes: one user's mailboxes in the data dir, and the run's report.

Imports write the user's index directly (through ``pillarbox.store.imports``), the way the
server does, so they need the server stopped: two processes assigning UIDs in one index
would hand out the same UID twice. :func:`ensure_server_stopped` checks the control socket.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import control
from pillarbox.config import Settings
from pillarbox.store.accounts import open_accounts
from pillarbox.store.imports import ImportedMessage, MailboxImporter, ensure_mailbox
from pillarbox.store.index import UserIndex
from pillarbox.store.maildir import user_maildir
from pillarbox.store.types import MailboxError


class TransferError(Exception):
    """A failure that stops the whole run (the CLI prints it and exits 1)."""


def ensure_server_stopped(settings: Settings) -> None:
    try:
        control.call(settings.control_socket, "server.status", {})
    except control.ServerNotRunning:
        return
    except control.ControlError:
        pass
    raise TransferError(
        "the server is running: stop it for the import (imports write the mailbox index "
        "directly); a stopped import resumes where it left off"
    )


def user_root(settings: Settings, address: str) -> tuple[str, Path]:
    """The normalised address of an existing user and its Maildir++ root."""
    accounts = open_accounts(settings)
    try:
        try:
            user = str(accounts.parse_local(address))
        except Exception as exc:
            raise TransferError(str(exc)) from None
        if not accounts.user_exists(user):
            raise TransferError(f"no such user: {user} (add it with `pillarbox user add`)")
    finally:
        accounts.close()
    return user, user_maildir(settings.mail_dir, user)


@dataclass
class Report:
    """Counts of one run and every problem, each naming its item; problems are printed as
    they happen (``emit``) so a long run shows them at once."""

    emit: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr))
    copied: int = 0
    present: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, item: str, why: str) -> None:
        text = f"{item}: {why}"
        self.problems.append(text)
        self.emit(f"pillarbox: problem: {text}")

    def summary(self) -> str:
        text = f"{self.copied} message(s) copied, {self.present} already there"
        if self.problems:
            text += f", {len(self.problems)} problem(s) (re-run to retry the rest)"
        return text


class Destination:
    """A user's mailboxes opened for importing."""

    def __init__(self, root: Path):
        self.index = UserIndex(root)
        self._importers: dict[str, MailboxImporter] = {}

    def close(self) -> None:
        with self.index.lock:
            self.index.close()

    def add(self, mailbox: str, messages: Sequence[ImportedMessage]) -> list[int | None]:
        """Store ``messages`` in ``mailbox`` (created if needed); new UIDs, None = present."""
        with self.index.lock:
            importer = self._importers.get(mailbox)
            if importer is None:
                try:
                    ensure_mailbox(self.index, mailbox)
                except MailboxError as exc:
                    raise TransferError(f"mailbox {mailbox}: {exc.text}") from None
                importer = self._importers[mailbox] = MailboxImporter(self.index, mailbox)
            return importer.add(messages)

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_batch(
    dest: Destination, mailbox: str, batch: Sequence[ImportedMessage], report: Report
) -> list[int | None]:
    """``dest.add`` with the report's counts updated."""
    uids = dest.add(mailbox, batch)
    for message, uid in zip(batch, uids, strict=True):
        if uid is None:
            report.present += 1
        else:
            report.copied += 1
            report.bytes += len(message.data)
    return uids

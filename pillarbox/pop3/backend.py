"""What a POP3 session needs from the mail store: a small ``typing.Protocol``.

The pop3 package never imports ``pillarbox.store``; ``app.py`` hands the component the mail
store service (``ctx.services.mail_store``, the same object IMAP uses), whose per-user
handle already has these methods. POP3 uses only INBOX and only this subset:

* ``status`` syncs the Maildir into the index and gives UIDVALIDITY / UIDNEXT;
* ``fetch(..., data=False)`` :class:`~pillarbox.mailstore.rows.FetchRow` rows (``size`` is
  the CRLF size, which is what RFC 1939 LIST and STAT count);
* ``read_message`` the message with CRLF line ends (None when it vanished);
* ``store`` with mode ``add`` and ``expunge`` (which removes the ``\\Deleted`` messages among
  the given UID ranges) to apply the UPDATE state.

POP3 names no mailbox, so a store's ``MailboxError`` is the server's trouble, answered like
any failing store (``-ERR [SYS/TEMP]``, see ``session.Session._execute``).
"""

from __future__ import annotations

from typing import Protocol

from pillarbox.mailstore.api import StatusInfo, StoreResult
from pillarbox.mailstore.rows import FetchRow

INBOX = "INBOX"


class MailDrop(Protocol):
    """One authenticated user's mail, as the store hands it out: the subset of
    :class:`~pillarbox.mailstore.api.UserMail` POP3 uses."""

    async def release(self) -> None: ...
    async def status(self, name: str) -> StatusInfo: ...
    async def fetch(
        self, name: str, ranges: list[tuple[int, int]], data: bool, limit: int
    ) -> list[FetchRow]: ...
    async def read_message(self, name: str, uid: int) -> bytes | None: ...
    async def store(
        self,
        name: str,
        ranges: list[tuple[int, int]],
        mode: str,
        flags: tuple[str, ...],
        unchanged_since: int | None,
    ) -> StoreResult: ...
    async def expunge(self, name: str, ranges: list[tuple[int, int]] | None) -> list[int]: ...


class Pop3Backend(Protocol):
    async def open(self, user: str) -> MailDrop: ...

"""The per-user change hub: how IMAP sessions learn about mail changed elsewhere.

The store publishes ``(user, mailbox)`` after every committed change (commit first, then
publish), and SMTP delivery calls :meth:`ChangesHub.notify_new_mail` after writing a file
into ``new/``. Subscribers (IDLE and selected sessions) only get a nudge; they then ask the
store what changed since the state they know, so a missed or coalesced nudge loses nothing.
The hub is in-process; other writers (a Dovecot or mutt on the same Maildir) are picked up by
the periodic sync of idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Watcher = Callable[[str], None]


class ChangesHub:
    """Callbacks per user; thread-safe publishing onto the event loop that created it."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def watch(self, user: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(mailbox)`` on changes to ``user``'s mail; returns the unsubscriber."""
        self._watchers.setdefault(user, set()).add(callback)
        return _Unwatch(self, user, callback)

    def _unwatch(self, user: str, callback: Watcher) -> None:
        watchers = self._watchers.get(user)
        if watchers is not None:
            watchers.discard(callback)
            if not watchers:
                del self._watchers[user]

    def publish(self, user: str, mailbox: str) -> None:
        """Tell ``user``'s watchers that ``mailbox`` changed (from any thread)."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                loop.call_soon_threadsafe(self._deliver, user, mailbox)
            return
        self._deliver(user, mailbox)

    def _deliver(self, user: str, mailbox: str) -> None:
        for callback in list(self._watchers.get(user, ())):
            callback(mailbox)

    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None:
        """SMTP delivery's hook: a file was written into ``mailbox``'s ``new/``."""
        self.publish(user_address, mailbox)

    def watcher_count(self, user: str) -> int:
        return len(self._watchers.get(user, ()))


class _Unwatch:
    """The unsubscriber :meth:`ChangesHub.watch` returns: a slotted object, not a closure
    (a function and two cells), since every IDLE session keeps one."""

    __slots__ = ("_callback", "_hub", "_user")

    def __init__(self, hub: ChangesHub, user: str, callback: Watcher):
        self._hub = hub
        self._user = user
        self._callback = callback

    def __call__(self) -> None:
        self._hub._unwatch(self._user, self._callback)

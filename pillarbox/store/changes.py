"""The per-user change hub: how IMAP sessions learn about mail changed elsewhere.

The store publishes ``(user, mailbox)`` after every committed change (commit first, then
publish), and SMTP delivery calls :meth:`ChangesHub.notify_new_mail` after writing a file
into ``new/``. Subscribers (IDLE and selected sessions) only get a nudge; they then ask the
store what changed since the state they know, so a missed or coalesced nudge loses nothing.
Mailbox-list news (a CREATE, DELETE, RENAME, SUBSCRIBE: :class:`MailboxEvent`) goes to a
second set of watchers, the sessions that asked NOTIFY for MailboxName or
SubscriptionChange (RFC 5465 §5.4, §5.5); most sessions never register one.
The hub is in-process; other writers (a Dovecot or mutt on the same Maildir) are picked up by
the periodic sync of idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from pillarbox.mailstore.rows import MailboxEvent

Watcher = Callable[[str], None]
NameWatcher = Callable[[MailboxEvent], None]


class ChangesHub:
    """Callbacks per user; thread-safe publishing onto the event loop that created it."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = {}
        self._name_watchers: dict[str, set[NameWatcher]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def watch(self, user: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(mailbox)`` on changes to ``user``'s mail; returns the unsubscriber."""
        self._watchers.setdefault(user, set()).add(callback)
        return _Unwatch(self._watchers, user, callback)

    def watch_names(self, user: str, callback: NameWatcher) -> Callable[[], None]:
        """Call ``callback(event)`` at each change to ``user``'s mailbox list."""
        self._name_watchers.setdefault(user, set()).add(callback)
        return _Unwatch(self._name_watchers, user, callback)

    def publish(self, user: str, mailbox: str) -> None:
        """Tell ``user``'s watchers that ``mailbox`` changed (from any thread)."""
        self._on_loop(self._deliver, user, mailbox)

    def publish_name(self, user: str, event: MailboxEvent) -> None:
        """Tell ``user``'s name watchers of ``event`` (from any thread)."""
        if self._name_watchers.get(user):
            self._on_loop(self._deliver_name, user, event)

    def _on_loop(self, deliver: Callable[[str, Any], None], user: str, news: Any) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                loop.call_soon_threadsafe(deliver, user, news)
            return
        deliver(user, news)

    def _deliver(self, user: str, mailbox: str) -> None:
        for callback in list(self._watchers.get(user, ())):
            callback(mailbox)

    def _deliver_name(self, user: str, event: MailboxEvent) -> None:
        for callback in list(self._name_watchers.get(user, ())):
            callback(event)

    def notify_new_mail(self, user_address: str, mailbox: str = "INBOX") -> None:
        """SMTP delivery's hook: a file was written into ``mailbox``'s ``new/``."""
        self.publish(user_address, mailbox)

    def watcher_count(self, user: str) -> int:
        return len(self._watchers.get(user, ()))


class _Unwatch:
    """The unsubscriber :meth:`ChangesHub.watch` returns: a slotted object, not a closure
    (a function and two cells), since every IDLE session keeps one."""

    __slots__ = ("_callback", "_user", "_watchers")

    def __init__(self, watchers: dict[str, set[Any]], user: str, callback: Any):
        self._watchers = watchers
        self._user = user
        self._callback = callback

    def __call__(self) -> None:
        watchers = self._watchers.get(self._user)
        if watchers is not None:
            watchers.discard(self._callback)
            if not watchers:
                del self._watchers[self._user]

"""A user's index stays open after the last session (store/mailbox.py, "Open indexes outlive
their sessions"), so the next login finds it open; at most ``MAX_LINGERING`` stay open, the
least recently used closed first; and nothing of a login lingers with it: a password changed
with the CLI while the index is open counts at the next LOGIN, old password refused at once.

What is open is seen from outside the store: the server's file descriptors on the user's
index file (the server runs in this process)."""

from __future__ import annotations

import imaplib
import io
import os
import sys
import time

import pytest

from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.store import mailbox as store_mailbox
from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.imaphelp import ALICE, BOB, imaps, login, message

pytestmark = pytest.mark.on_disk


def index_fds(settings: Settings, user: str) -> set[str]:
    """This process's descriptors open on ``user``'s index (the database, WAL, shm)."""
    index = user_maildir(settings.data_dir / "mail", user) / "pillarbox-index.sqlite"
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(index)):
            found.add(fd)
    return found


def sessions_ended(server: pbserver.RunningServer) -> bool:
    """Every connection's task has ended, its session's release of the index with it."""
    return server.server.listeners.active_connections == 0


def wait_for(predicate: object, seconds: float = 5.0) -> bool:
    """The session ends on the server's loop after LOGOUT's reply: poll briefly."""
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_the_index_stays_open_after_logout_and_the_next_login_uses_it(
    server: pbserver.RunningServer,
) -> None:
    settings = server.settings
    with login(server) as client:
        client.append("INBOX", "", None, message("kept"))
        client.select("INBOX")
    assert wait_for(lambda: sessions_ended(server))
    held = index_fds(settings, ALICE)
    assert held, "the index was closed with its last session"
    with login(server) as client:
        _, data = client.select("INBOX")
        assert data == [b"1"]
        assert index_fds(settings, ALICE) == held  # the same connections, none opened anew
    # Without lingering the last session's logout closes the index, as before.
    server.server.ctx.services.mail_store.session_linger = 0.0
    pbserver.add_user(settings, BOB)
    with login(server, BOB) as client:
        client.select("INBOX")
        assert index_fds(settings, BOB)
    assert wait_for(lambda: not index_fds(settings, BOB))
    assert index_fds(settings, ALICE) == held


def test_lingering_indexes_are_bounded_least_recently_used_first(
    server: pbserver.RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pbserver.add_user(server.settings, BOB)
    monkeypatch.setattr(store_mailbox, "MAX_LINGERING", 1)
    with login(server, ALICE) as client:
        client.select("INBOX")
    assert wait_for(lambda: sessions_ended(server))
    assert index_fds(server.settings, ALICE)
    with login(server, BOB) as client:
        client.select("INBOX")
    assert wait_for(lambda: sessions_ended(server))
    # Bob's logout made his index the lingering one: Alice's, older, was closed.
    assert wait_for(lambda: not index_fds(server.settings, ALICE))
    assert index_fds(server.settings, BOB)


def test_a_password_changed_while_the_index_lingers_counts_at_the_next_login(
    server: pbserver.RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = server.settings
    with login(server) as client:
        client.append("INBOX", "", None, message("before the change"))
    assert wait_for(lambda: sessions_ended(server))
    assert index_fds(settings, ALICE)
    # The CLI, as an administrator would run it beside the server.
    monkeypatch.setattr(sys, "stdin", io.StringIO("a new secret phrase\n"))
    assert settings.source is not None
    argv = ["--config", str(settings.source), "user", "passwd", ALICE, "--password-stdin"]
    assert main(argv) == 0
    old = imaps(server)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            old.login(ALICE, pbserver.PASSWORD)  # verified minutes ago: no longer enough
    finally:
        old.shutdown()
    new = imaps(server)
    try:
        new.login(ALICE, "a new secret phrase")
        _, data = new.select("INBOX")
        assert data == [b"1"]  # the lingering index, the same mail
    finally:
        new.logout()

"""How IMAP sessions wait: news wakes IDLE at once, shutdown wakes every session with BYE,
and a line half-sent when a wait is interrupted is kept whole (Connection.read_line)."""

from __future__ import annotations

import threading
import time

from pillarbox.config import Settings
from tests import pbserver
from tests.imaphelp import Raw, login, message


def _idling(server: pbserver.RunningServer) -> Raw:
    raw = Raw(server)
    raw.login()
    raw.cmd(b"s", b"SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    return raw


def test_new_mail_reaches_an_idle_session_within_a_second(
    server: pbserver.RunningServer,
) -> None:
    raw = _idling(server)
    try:
        with login(server) as other:
            started = time.monotonic()
            other.append("INBOX", None, None, message("news"))
            assert raw.line() == b"* 1 EXISTS\r\n"
            assert time.monotonic() - started < 1.0
    finally:
        raw.close()


def test_a_line_half_sent_across_a_wakeup_is_read_whole(server: pbserver.RunningServer) -> None:
    raw = _idling(server)
    try:
        raw.send(b"DO")  # half of DONE, then news interrupts the wait for the rest
        with login(server) as other:
            other.append("INBOX", None, None, message("in between"))
        assert raw.line() == b"* 1 EXISTS\r\n"
        raw.send(b"NE\r\n")
        lines = raw.until(b"i")
        assert lines[-1] == b"i OK IDLE terminated\r\n", lines
    finally:
        raw.close()


def test_shutdown_says_bye_to_idle_and_waiting_sessions(settings: Settings) -> None:
    pbserver.add_user(settings, "alice@example.test")
    running = pbserver.RunningServer(settings)
    idle = _idling(running)
    waiting = Raw(running)
    waiting.login()
    try:
        stopper = threading.Thread(target=running.stop)
        started = time.monotonic()
        stopper.start()
        assert idle.line() == b"* BYE server shutting down\r\n"
        assert waiting.line() == b"* BYE server shutting down\r\n"
        # Both were told at once, not at the end of the grace period.
        assert time.monotonic() - started < 2.0
        stopper.join(15)
    finally:
        idle.close()
        waiting.close()
        running.stop()

"""IMAP NOTIFY (RFC 5465) over real sockets: what a session is told without asking, and when.

One session sets NOTIFY and only reads; another (imaplib, or the server's own delivery)
changes the mail. "Pushed" means the line arrives while the first session sends nothing:
between commands, not in the answer to one (§3). The parser's cases are in
test_imap_notify_parse.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.imaphelp import ALICE, Raw, login, message

STATUS_RE = re.compile(
    rb'^\* STATUS "(?P<name>[^"]+)" \(MESSAGES (\d+) UIDNEXT (\d+) UIDVALIDITY (\d+)\)\r\n$'
)
BADEVENT = b"[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"


@pytest.fixture(params=["maildir", "memory", "postgresql"])
def any_store(
    request: pytest.FixtureRequest, settings: Settings
) -> Iterator[pbserver.RunningServer]:
    """The server on each of the three mail stores: the news comes through the mail-store
    API (``UserMail.watch``, ``watch_names``), not from one store's internals."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_server")  # skips when PostgreSQL is not installed
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings, mail_store=request.param) as running:
        yield running


def _session(server: pbserver.RunningServer, *commands: bytes) -> Raw:
    raw = Raw(server)
    raw.login()
    for n, text in enumerate(commands):
        lines = raw.cmd(b"p%d" % n, text)
        assert lines[-1].startswith(b"p%d OK" % n), lines
    return raw


def _pushed(raw: Raw, count: int = 1) -> list[bytes]:
    """The next ``count`` lines, literals inlined, that the server sends on its own."""
    lines = []
    for _ in range(count):
        line = raw.line()
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        if m:
            line += raw.file.read(int(m.group(1))) + raw.line()
        lines.append(line)
    return lines


def test_new_mail_elsewhere_is_a_status_within_a_second(any_store: pbserver.RunningServer) -> None:
    raw = _session(
        any_store,
        b"CREATE Work",
        b"SELECT INBOX",
        b"NOTIFY SET (mailboxes Work (MessageNew MessageExpunge)) (inboxes NONE)",
    )
    try:
        with login(any_store) as other:
            started = time.monotonic()
            other.append("Work", None, None, message("for work"))
            (line,) = _pushed(raw)
            assert time.monotonic() - started < 1.0
            m = STATUS_RE.match(line)
            assert m is not None and m.group("name") == b"Work", line
            assert m.group(2, 3) == (b"1", b"2")
            # The selected mailbox is not a STATUS; a mailbox no group names is nothing.
            other.create("Elsewhere")
            other.append("Elsewhere", None, None, message("ignored"))
            other.append("Work", None, None, message("second"))
            (line,) = _pushed(raw)
            assert STATUS_RE.match(line) and b"MESSAGES 2 UIDNEXT 3" in line, line
    finally:
        raw.close()


def test_a_delivery_to_inbox_is_a_status(server: pbserver.RunningServer) -> None:
    raw = _session(
        server, b"CREATE Work", b"SELECT Work", b"NOTIFY SET (inboxes (MessageNew MessageExpunge))"
    )
    try:
        started = time.monotonic()
        server.deliver(ALICE, "INBOX", message("delivered"))
        (line,) = _pushed(raw)
        assert time.monotonic() - started < 1.0
        assert STATUS_RE.match(line) and line.startswith(b'* STATUS "INBOX" (MESSAGES 1 '), line
    finally:
        raw.close()


def test_condstore_adds_highestmodseq(server: pbserver.RunningServer) -> None:
    raw = _session(
        server, b"ENABLE CONDSTORE", b"NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))"
    )
    try:
        with login(server) as other:
            other.append("INBOX", None, None, message("one"))
            (line,) = _pushed(raw)
            assert re.match(
                rb'^\* STATUS "INBOX" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+'
                rb" HIGHESTMODSEQ \d+\)\r\n$",
                line,
            ), line
    finally:
        raw.close()


def test_new_mail_in_the_selected_mailbox_comes_with_its_fetch_atts(
    any_store: pbserver.RunningServer,
) -> None:
    raw = _session(
        any_store,
        b"SELECT INBOX",
        b"NOTIFY SET (selected (MessageNew (UID BODY[HEADER.FIELDS (Subject)]) MessageExpunge))",
    )
    try:
        with login(any_store) as other:
            started = time.monotonic()
            other.append("INBOX", None, None, message("pushed"))
            lines = _pushed(raw, 3)
            assert time.monotonic() - started < 1.0
            assert lines[:2] == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"], lines
            assert lines[2] == (
                b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (Subject)] {19}\r\n"
                b"Subject: pushed\r\n\r\n)\r\n"
            ), lines
            # §5.2: the notification's BODY[] is a peek: \Seen stays unset.
            answer = raw.cmd(b"f", b"FETCH 1 FLAGS")
            assert answer[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n", answer
            # Inside IDLE (§4): the same lines, as they happen.
            raw.send(b"i IDLE\r\n")
            assert raw.line().startswith(b"+ ")
            other.append("INBOX", None, None, message("while idle"))
            lines = _pushed(raw, 3)
            assert lines[0] == b"* 2 EXISTS\r\n", lines
            assert lines[2].startswith(b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (Subject)] {23}"), (
                lines
            )
            raw.send(b"DONE\r\n")
            assert raw.until(b"i")[-1] == b"i OK IDLE terminated\r\n"
    finally:
        raw.close()


def test_flag_changes_and_expunges_from_another_session_are_pushed(
    server: pbserver.RunningServer,
) -> None:
    with login(server) as setup:
        for n in range(3):
            setup.append("INBOX", None, None, message(f"m{n}"))
    raw = _session(
        server,
        b"SELECT INBOX",
        b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange))",
    )
    try:
        with login(server) as other:
            other.select("INBOX")
            other.store("2", "+FLAGS", "(\\Flagged)")
            (line,) = _pushed(raw)
            assert line == b"* 2 FETCH (FLAGS (\\Recent \\Flagged))\r\n", line
            other.store("1", "+FLAGS", "(\\Deleted)")
            other.expunge()
            # The flag change may be seen before the expunge, or the expunge alone.
            line = _pushed(raw)[0]
            if line != b"* 1 EXPUNGE\r\n":
                assert line == b"* 1 FETCH (FLAGS (\\Recent \\Deleted))\r\n", line
                assert _pushed(raw) == [b"* 1 EXPUNGE\r\n"]
            answer = raw.cmd(b"n", b"NOOP")
            assert answer == [b"n OK NOOP completed\r\n"], answer
    finally:
        raw.close()


def test_selected_delayed_keeps_expunges_for_a_command(server: pbserver.RunningServer) -> None:
    with login(server) as setup:
        for n in range(2):
            setup.append("INBOX", None, None, message(f"m{n}"))
    raw = _session(
        server, b"SELECT INBOX", b"NOTIFY SET (selected-delayed (MessageNew MessageExpunge))"
    )
    try:
        with login(server) as other:
            other.select("INBOX")
            other.store("1", "+FLAGS", "(\\Deleted)")
            assert _pushed(raw) == [b"* 1 FETCH (FLAGS (\\Recent \\Deleted))\r\n"]
            other.expunge()
            other.append("INBOX", None, None, message("new"))
            # The arrival is pushed; the expunged message keeps its number until a command.
            assert _pushed(raw) == [b"* 3 EXISTS\r\n"]
            fetched = raw.cmd(b"f", b"FETCH 1 (FLAGS)")
            assert not any(line.endswith(b"EXPUNGE\r\n") for line in fetched), fetched
            answer = raw.cmd(b"n", b"NOOP")
            assert answer[0] == b"* 1 EXPUNGE\r\n", answer
    finally:
        raw.close()


def test_mailbox_names_and_subscriptions_are_list_responses(
    any_store: pbserver.RunningServer,
) -> None:
    raw = _session(any_store, b"NOTIFY SET (personal (MailboxName SubscriptionChange))")
    try:
        with login(any_store) as other:
            other.create("Projects")
            assert _pushed(raw) == [b'* LIST () "/" "Projects"\r\n']
            other.create("Projects/Alpha")
            assert _pushed(raw) == [b'* LIST () "/" "Projects/Alpha"\r\n']
            other.rename("Projects", "Done")
            assert _pushed(raw, 2) == [
                b'* LIST () "/" "Done" ("OLDNAME" ("Projects"))\r\n',
                b'* LIST () "/" "Done/Alpha" ("OLDNAME" ("Projects/Alpha"))\r\n',
            ]
            other.subscribe("Done")
            assert _pushed(raw) == [b'* LIST (\\Subscribed) "/" "Done"\r\n']
            other.unsubscribe("Done")
            assert _pushed(raw) == [b'* LIST () "/" "Done"\r\n']
            other.delete("Done/Alpha")
            assert _pushed(raw) == [b'* LIST (\\NonExistent) "/" "Done/Alpha"\r\n']
    finally:
        raw.close()


def test_only_the_mailboxes_a_filter_names_are_told(server: pbserver.RunningServer) -> None:
    raw = _session(server, b"NOTIFY SET (subtree Lists (MailboxName))")
    try:
        with login(server) as other:
            other.create("Elsewhere")
            other.create("Lists/python")
            assert _pushed(raw) == [b'* LIST () "/" "Lists/python"\r\n']
    finally:
        raw.close()


def test_notify_set_status_sends_the_current_counts(server: pbserver.RunningServer) -> None:
    with login(server) as setup:
        setup.create("Work")
        setup.create("Work/Old")
        setup.append("Work", None, None, message("w"))
    raw = Raw(server)
    raw.login()
    try:
        lines = raw.cmd(b"s", b"SELECT INBOX")
        lines = raw.cmd(b"a", b"NOTIFY SET STATUS (subtree Work (MessageNew MessageExpunge))")
        assert lines[-1] == b"a OK NOTIFY completed\r\n", lines
        statuses = sorted(lines[:-1])
        assert len(statuses) == 2 and all(STATUS_RE.match(s) for s in statuses), lines
        assert statuses[0].startswith(b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 ')
        assert statuses[1].startswith(b'* STATUS "Work/Old" (MESSAGES 0 UIDNEXT 1 ')
        # personal: every mailbox but the selected one (INBOX here), the special-use ones too
        lines = raw.cmd(b"b", b"NOTIFY SET STATUS (personal (MessageNew MessageExpunge))")
        names = [STATUS_RE.match(line).group("name") for line in lines[:-1]]  # type: ignore[union-attr]
        assert b"INBOX" not in names and {b"Work", b"Work/Old", b"Trash"} <= set(names), lines
    finally:
        raw.close()


def test_notify_none_stops_the_news(server: pbserver.RunningServer) -> None:
    raw = _session(
        server, b"CREATE Work", b"NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))"
    )
    try:
        assert raw.cmd(b"n", b"NOTIFY NONE") == [b"n OK NOTIFY completed\r\n"]
        with login(server) as other:
            other.append("Work", None, None, message("unheard"))
            other.create("Unheard")
        # Had NOTIFY still been set, the news would be sent before this NOOP is read.
        assert raw.cmd(b"o", b"NOOP") == [b"o OK NOOP completed\r\n"]
    finally:
        raw.close()


def test_unsupported_events_and_bad_syntax(server: pbserver.RunningServer) -> None:
    raw = _session(server, b"SELECT INBOX")
    try:
        for events in (b"(MessageNew MessageExpunge AnnotationChange)", b"(MailboxMetadataChange)"):
            (line,) = raw.cmd(b"e", b"NOTIFY SET (personal " + events + b")")
            assert line.startswith(b"e NO " + BADEVENT), line
        for bad in (
            b"NOTIFY",
            b"NOTIFY SET",
            b"NOTIFY SET (personal (MessageNew))",
            b"NOTIFY SET (selected (MailboxName))",
            b"NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
            b"NOTIFY SET (selected NONE) (selected NONE)",
            b"NOTIFY SET (nowhere NONE)",
        ):
            (line,) = raw.cmd(b"b", bad)
            assert line.startswith(b"b BAD "), (bad, line)
    finally:
        raw.close()


def test_notify_needs_login(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        (line,) = raw.cmd(b"a", b"NOTIFY NONE")
        assert line.startswith(b"a BAD "), line
    finally:
        raw.close()


def test_notify_is_advertised(server: pbserver.RunningServer) -> None:
    raw = _session(server)
    try:
        lines = raw.cmd(b"c", b"CAPABILITY")
        assert b" NOTIFY" in lines[0], lines
    finally:
        raw.close()


def test_a_command_half_sent_across_news_is_read_whole(server: pbserver.RunningServer) -> None:
    raw = _session(server, b"NOTIFY SET (personal (MailboxName))")
    try:
        raw.send(b"n NO")  # half a command, then news interrupts the wait for the rest
        with login(server) as other:
            other.create("Between")
        assert _pushed(raw) == [b'* LIST () "/" "Between"\r\n']
        raw.send(b"OP\r\n")
        assert raw.until(b"n") == [b"n OK NOOP completed\r\n"]
    finally:
        raw.close()


def test_news_does_not_restart_the_autologout_clock(tmp_path: Path) -> None:
    """RFC 9051 §5.4's autologout counts from the last command, not from the last news:
    news until 2.5 s into a 3 s wait, the BYE at 3 s (5.5 s if each news restarted it)."""
    settings = pbserver.make_settings(tmp_path / "data", {"limits": {"imap_idle_timeout": 3}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server, login(server) as other:
        raw = _session(server, b"NOTIFY SET (personal (MailboxName))")
        try:
            started = time.monotonic()
            for n in range(5):
                time.sleep(0.5)
                other.create(f"Box{n}")
            assert _pushed(raw, 5)[-1] == b'* LIST () "/" "Box4"\r\n'
            assert raw.line() == b"* BYE autologout; idle for too long\r\n"
            assert 2.9 < time.monotonic() - started < 4.5
        finally:
            raw.close()

"""SORT and THREAD (RFC 5256) with DISPLAY sort (RFC 5957) over a real server session.

The fixture mailbox has known threading and the tricky cases of RFC 5256: a message without
Message-ID, a References loop, a reference to a missing message (a dummy), Re:/Fwd:/[blob]
and (fwd) subjects, the same subject in different threads, Date: headers in different zones
whose local times would order differently, and an unparseable Date: (falls back to
INTERNALDATE, §2.2).
"""

from __future__ import annotations

import time

from imapclient import IMAPClient

from pillarbox.imap.sort import base_subject
from tests import pbserver
from tests.imaphelp import ALICE, Raw, tls_context

# (From, Subject, Date, Message-ID, extra headers) of sequence numbers 1..8
FIXTURE: list[tuple[str, str, str, str | None, dict[str, str]]] = [
    ("Zed <zed@example.org>", "Meeting", "Thu, 01 Jan 2026 10:00:00 +0000", "a@x", {}),
    (
        "Bob <bob@example.org>",
        "Re: Meeting",
        "Thu, 01 Jan 2026 13:00:00 +0200",  # 11:00 UTC
        "b@x",
        {"References": "<a@x>"},
    ),
    ("Carol <alice@example.org>", "Lunch", "not a date", None, {}),
    (
        "Bob <bob@example.org>",
        "Re: [list] Re: Meeting",
        "Thu, 01 Jan 2026 06:30:00 -0500",  # 11:30 UTC, earlier local time than #2
        "c@x",
        {"In-Reply-To": "<b@x>"},
    ),
    (
        "Bob <bob@example.org>",
        "Fwd: Lunch (fwd)",
        "Fri, 02 Jan 2026 00:00:00 -0500",
        "d@x",
        {"References": "<missing@x>"},
    ),
    (
        "Bob <bob@example.org>",
        "Loop",
        "Sat, 03 Jan 2026 10:00:00 +0000",
        "e@x",
        {"References": "<f@x>"},
    ),
    (
        "Bob <bob@example.org>",
        "Loop",
        "Sun, 04 Jan 2026 10:00:00 +0000",
        "f@x",
        {"References": "<e@x>"},
    ),
    ("Bob <bob@example.org>", "Meeting", "Mon, 05 Jan 2026 10:00:00 +0000", "g@x", {}),
]


def fixture_messages() -> list[bytes]:
    out = []
    for i, (sender, subject, date, msgid, extra) in enumerate(FIXTURE, start=1):
        lines = [f"From: {sender}", "To: Alice <alice@example.test>", f"Subject: {subject}"]
        lines.append(f"Date: {date}")
        if msgid:
            lines.append(f"Message-ID: <{msgid}>")
        lines += [f"{k}: {v}" for k, v in extra.items()]
        body = "x" * (100 * i)  # sizes ascend with the sequence number
        out.append(("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode())
    return out


def _fill(raw: Raw, messages: list[bytes]) -> None:
    for n, msg in enumerate(messages):
        tag = b"a%d" % n
        raw.send(b"%s APPEND INBOX {%d+}\r\n" % (tag, len(msg)) + msg + b"\r\n")
        assert raw.until(tag)[-1].startswith(tag + b" OK")


def _session(server: pbserver.RunningServer) -> Raw:
    raw = Raw(server)
    raw.login()
    _fill(raw, fixture_messages())
    assert raw.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    return raw


def test_capabilities_advertised(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        caps = raw.cmd(b"c", b"CAPABILITY")[0].split()
        for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"):
            assert cap in caps
    finally:
        raw.close()


def test_sort_keys(server: pbserver.RunningServer) -> None:
    raw = _session(server)
    try:
        expect = {
            b"(DATE)": b"1 2 4 5 6 7 8 3",  # UTC order; #3's bad Date: is its arrival
            b"(SUBJECT)": b"6 7 3 5 1 2 4 8",  # LOOP, LUNCH, MEETING by base subject
            b"(SUBJECT REVERSE DATE)": b"7 6 3 5 8 4 2 1",
            b"(REVERSE SIZE)": b"8 7 6 5 4 3 2 1",
            b"(ARRIVAL)": b"1 2 3 4 5 6 7 8",
            b"(FROM)": b"3 2 4 5 6 7 8 1",  # ALICE < BOB < ZED (mailbox local-part)
            b"(DISPLAYFROM)": b"2 4 5 6 7 8 3 1",  # BOB < CAROL < ZED (RFC 5957)
            b"(TO SUBJECT)": b"6 7 3 5 1 2 4 8",
        }
        for criteria, numbers in expect.items():
            lines = raw.cmd(b"t", b"SORT " + criteria + b" UTF-8 ALL")
            assert lines == [b"* SORT " + numbers + b"\r\n", b"t OK SORT completed\r\n"] or (
                lines[0] == b"* SORT " + numbers + b"\r\n" and lines[-1].startswith(b"t OK")
            ), (criteria, lines)
        lines = raw.cmd(b"u", b"UID SORT (SUBJECT) US-ASCII SUBJECT meeting NOT 1")
        assert lines[0] == b"* SORT 2 4 8\r\n", lines
        lines = raw.cmd(b"e", b"SORT (SUBJECT) UTF-8 SUBJECT nothing-matches")
        assert lines[0] == b"* SORT\r\n"
        lines = raw.cmd(b"b", b"SORT (SUBJECT) KOI8-R ALL")
        assert lines[-1].startswith(b"b NO [BADCHARSET"), lines
        lines = raw.cmd(b"k", b"SORT (COLOUR) UTF-8 ALL")
        assert lines[-1].startswith(b"k BAD"), lines
        lines = raw.cmd(b"m", b"SORT (SUBJECT) UTF-8")
        assert lines[-1].startswith(b"m BAD"), lines
    finally:
        raw.close()


def test_thread_references_and_orderedsubject(server: pbserver.RunningServer) -> None:
    raw = _session(server)
    try:
        lines = raw.cmd(b"r", b"THREAD REFERENCES UTF-8 ALL")
        # 1-2-4 by References/In-Reply-To; 8 shares the base subject and both are non-replies
        # so a dummy holds them (§3 step 5C); 6/7 is a loop broken at 7; 5's missing parent is
        # a pruned dummy and 5 (a forward) goes under the non-reply 3 of the same subject.
        assert lines[0] == b"* THREAD ((1 2 4)(8))(7 6)(3 5)\r\n", lines
        lines = raw.cmd(b"o", b"THREAD ORDEREDSUBJECT UTF-8 ALL")
        assert lines[0] == b"* THREAD (1 (2)(4)(8))(5 3)(6 7)\r\n", lines
        lines = raw.cmd(b"u", b"UID THREAD REFERENCES UTF-8 SUBJECT lunch")
        assert lines[0] == b"* THREAD (3 5)\r\n", lines
        lines = raw.cmd(b"x", b"THREAD FANCY UTF-8 ALL")
        assert lines[-1].startswith(b"x BAD"), lines
        lines = raw.cmd(b"y", b"THREAD REFERENCES ISO-2022-JP ALL")
        assert lines[-1].startswith(b"y NO [BADCHARSET"), lines
    finally:
        raw.close()


def test_imapclient_sort_and_thread(server: pbserver.RunningServer) -> None:
    raw = _session(server)
    raw.close()
    client = IMAPClient(
        "127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=tls_context(server.settings)
    )
    try:
        client.login(ALICE, pbserver.PASSWORD)
        client.select_folder("INBOX")
        uids = client.search()
        assert client.sort(["SUBJECT", "REVERSE DATE"]) == [
            uids[i - 1] for i in (7, 6, 3, 5, 8, 4, 2, 1)
        ]
        threads = client.thread("REFERENCES")
        assert [tuple(t) for t in threads][1:] == [(uids[6], uids[5]), (uids[2], uids[4])]
    finally:
        client.logout()


def test_base_subject() -> None:
    # RFC 5256 §2.1 steps: leaders, blobs, (fwd) trailers, [fwd: ...] and RFC 2047 words
    assert base_subject("Re: [list] RE: Fwd: hello  world (fwd)") == ("HELLO WORLD", True)
    assert base_subject("[fwd: Re: Lunch]") == ("LUNCH", True)
    assert base_subject("[only a blob]") == ("[ONLY A BLOB]", False)
    assert base_subject("=?utf-8?q?Caf=C3=A9?= time") == ("CAFÉ TIME", False)
    assert base_subject("Re[2]: status") == ("STATUS", True)


def test_sort_timing_5000(server: pbserver.RunningServer) -> None:
    """5,000 messages: SORT and THREAD timings are printed, not asserted."""
    raw = Raw(server)
    try:
        raw.login()
        messages = []
        for i in range(5000):
            text = (
                f"From: u{i % 97}@example.org\r\n"
                f"Subject: {'Re: ' if i % 3 else ''}topic {i % 400}\r\n"
                f"Date: Thu, 01 Jan 2026 {i % 24:02d}:{i % 60:02d}:00 +0000\r\n"
                f"Message-ID: <m{i}@x>\r\nReferences: <m{i // 2}@x>\r\n\r\nbody {i}\r\n"
            )
            messages.append(text.encode())
        _fill(raw, messages)
        assert raw.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        for command in (
            b"SORT (ARRIVAL) UTF-8 ALL",
            b"SORT (SUBJECT) UTF-8 ALL",
            b"SORT (DATE) UTF-8 ALL",
            b"THREAD REFERENCES UTF-8 ALL",
        ):
            start = time.perf_counter()
            lines = raw.cmd(b"t", command)
            elapsed = time.perf_counter() - start
            assert lines[-1].startswith(b"t OK"), lines[-1]
            print(f"5000 messages: {command.decode()}: {elapsed * 1000:.0f} ms")
    finally:
        raw.close()

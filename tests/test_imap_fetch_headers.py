"""FETCH of header sections over many messages (the list view's
``BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]``): the header-only FETCH has its own
rendering loop, so its bytes are checked here against hand-written expectations, and
against the general path (the same sections fetched beside FLAGS), over a real session.

RFC 3501 §6.4.5: HEADER.FIELDS gives the named fields as they are in the message (folding
kept, names matched case-insensitively), then the blank line; HEADER.FIELDS.NOT the other
fields; HEADER the whole header block.
"""

from __future__ import annotations

import re

from tests import pbserver
from tests.imaphelp import login

FOLDED = (
    b"Received: from mx.example.org\r\n\tby mail.example.test; Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"from: Bob Sender\r\n <bob@example.org>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"SUBJECT : folded\r\n  subject line\r\n"
    b"X-Subject: not the subject\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"\r\n"
    b"Subject: in the body, not a field\r\n"
)
PLAIN = (
    b"Date: Tue, 8 Feb 1994 10:00:00 +0000\r\n"
    b"From: Carol <carol@example.org>\r\n"
    b"Subject: one\r\n"
    b"Subject: two\r\n"
    b"\r\n"
    b"body\r\n"
)
NO_FIELDS = b"To: Alice <alice@example.test>\r\n\r\nnothing asked for is here\r\n"

EXPECTED_FIELDS = [
    b"from: Bob Sender\r\n <bob@example.org>\r\n"
    b"SUBJECT : folded\r\n  subject line\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\n",
    b"Date: Tue, 8 Feb 1994 10:00:00 +0000\r\n"
    b"From: Carol <carol@example.org>\r\n"
    b"Subject: one\r\nSubject: two\r\n\r\n",
    b"\r\n",
]
EXPECTED_NOT_RECEIVED = [
    FOLDED.split(b"\r\n\r\n")[0].split(b"\r\n", 2)[2] + b"\r\n\r\n",
    PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    NO_FIELDS.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
]
EXPECTED_HEADER = [m.split(b"\r\n\r\n")[0] + b"\r\n\r\n" for m in (FOLDED, PLAIN, NO_FIELDS)]


def _literals(data: list[object]) -> dict[int, list[tuple[bytes, bytes]]]:
    """imaplib's FETCH answer as {seq: [(item name, literal)]}, in response order."""
    out: dict[int, list[tuple[bytes, bytes]]] = {}
    seq = 0
    for part in data:
        if not isinstance(part, tuple):
            continue
        head, literal = part
        start = re.match(rb"(\d+) \(", head)
        if start:
            seq = int(start.group(1))
            head = head[start.end() :]
        name = re.search(rb"(BODY\[[^\]]*\]) \{\d+\}$", head)
        assert name, head
        out.setdefault(seq, []).append((name.group(1), literal))
    return out


def test_header_sections_of_many_messages(server: pbserver.RunningServer) -> None:
    with login(server) as client:
        client.create("Headers")
        for raw in (FOLDED, PLAIN, NO_FIELDS):
            assert client.append("Headers", None, None, raw)[0] == "OK"
        client.select("Headers")
        query = (
            "(UID BODY.PEEK[HEADER.FIELDS (from SUBJECT Date)]"
            " BODY.PEEK[HEADER.FIELDS.NOT (Received)] BODY.PEEK[HEADER])"
        )
        typ, data = client.fetch("1:*", query)
        assert typ == "OK"
        answers = _literals(data)
        assert sorted(answers) == [1, 2, 3]
        for seq in (1, 2, 3):
            assert [literal for _, literal in answers[seq]] == [
                EXPECTED_FIELDS[seq - 1],
                EXPECTED_NOT_RECEIVED[seq - 1],
                EXPECTED_HEADER[seq - 1],
            ]
            assert answers[seq][0][0] == b"BODY[HEADER.FIELDS (from SUBJECT Date)]"
        firsts = [p[0] for p in data if isinstance(p, tuple) and re.match(rb"\d+ \(", p[0])]
        assert len(firsts) == 3 and all(re.match(rb"\d+ \(UID \d+ BODY\[", f) for f in firsts)

        # The same sections beside FLAGS take the general path: the same bytes.
        _, general = client.fetch("1:*", query[:-1] + " FLAGS)")
        again = _literals(general)
        assert {seq: [lit for _, lit in items] for seq, items in again.items()} == {
            seq: [lit for _, lit in items] for seq, items in answers.items()
        }
        # PEEK: nothing became \Seen.
        _, flags = client.fetch("1:*", "(FLAGS)")
        assert not any(b"\\Seen" in line for line in flags if isinstance(line, bytes))

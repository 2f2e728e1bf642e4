"""SORT's header-field cutter gives what the ``email`` package's parser gives.

``imap/sort.py`` cuts the few fields a SORT compares out of the stored header block by
hand (the parser costs most of a SORT of 50,000 messages); the parser stays the oracle.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser

import pytest

from pillarbox.imap.sort import header_fields

NAMES = frozenset(("subject", "from", "to", "cc", "date", "message-id", "references"))

HEADERS = [
    b"Subject: plain\r\nFrom: A <a@x>\r\n\r\n",
    b"Subject:  folded\r\n\tline two \r\n  three\r\nFrom: =?utf-8?q?J=C3=B6rg?= <j@x>\r\n"
    b"from: second <s@x>\r\nTo:\r\n\r\n",
    b"SUBJECT:\tx\r\nX-Odd:no-space\r\nReferences: <a@b>\r\n <c@d>\r\nCc: c@d\r\n\r\n",
    b"Subject: caf\xc3\xa9 8-bit\r\nFrom: b@c\r\n\r\n",
    b"From me@x Mon Jan  1 00:00:00 2024\r\nSubject: mbox line first\r\n\r\n",
    b"Subject: no blank line at the end\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n",
    b"Subject: a\r\nnot a header line\r\nFrom: after@x\r\n\r\n",
    b"Subject: trailing blanks   \r\nMessage-ID: <m@x>\r\n\r\nbody: not a field\r\n",
    b" leading continuation\r\nSubject: s\r\n\r\n",
    b"",
]


@pytest.mark.parametrize("header", HEADERS)
def test_fields_match_the_email_parser(header: bytes) -> None:
    parsed = BytesHeaderParser().parsebytes(header)
    expected = {n: str(parsed[n]) for n in NAMES if parsed.get(n) is not None}
    assert header_fields(header, NAMES) == expected

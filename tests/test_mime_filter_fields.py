"""HEADER.FIELDS by searching for the wanted names gives the spans of the full field split.

``mime.filter_fields`` finds only the wanted fields' starts (the fast path of a big
``FETCH 1:* BODY.PEEK[HEADER.FIELDS (...)]``); ``iter_field_spans`` splits every field and
stays the reference. Random header blocks with folded, misspelt, differently cased and
garbage lines, fields without a blank before the colon and blocks without their blank
line must give the same bytes for every choice of names.
"""

from __future__ import annotations

import random

from pillarbox.mime.headers import MAX_FIELDS, field_filter, filter_fields, iter_field_spans

LINES = [
    b"From: Bob <bob@x>",
    b"FROM:shouting@x",
    b"from :\tspaced@x",
    b"From-Address: not from",
    b"XFrom: not from either",
    b"Subject: hello",
    b"subject: second subject",
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800",
    b"Received: by x;",
    b"\tcontinued",
    b"  folded: looks like a field",
    b"garbage line without colon",
    b"To:",
    b":empty name",
    b"Message-ID: <a@b>",
    b"Subject\t: tabbed",
    b"caf\xc3\xa9: 8-bit name",
]
NAMES = ["From", "SUBJECT", "date", "to", "Message-ID", "X-Missing", "from-address"]


def _reference(block: bytes, names: list[str]) -> bytes:
    wanted = {n.lower() for n in names}
    spans = [block[s:e] for name, s, e in iter_field_spans(block) if name in wanted]
    return b"".join(spans) + b"\r\n"


def test_random_blocks() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        lines = rng.choices(LINES, k=rng.randint(0, 12))
        block = b"\r\n".join(lines) + rng.choice([b"\r\n\r\n", b"\r\n", b""])
        names = rng.sample(NAMES, rng.randint(0, 4))
        assert filter_fields(block, names) == _reference(block, names), (block, names)
        # The filter made once per FETCH gives the same bytes.
        assert field_filter(names)(block) == _reference(block, names), (block, names)


def test_hostile_block_keeps_the_field_bound() -> None:
    block = b"X: y\r\n" * (MAX_FIELDS + 5) + b"From: late@x\r\n\r\n"
    assert filter_fields(block, ["From"]) == _reference(block, ["From"]) == b"\r\n"
    assert field_filter(["From"])(block) == b"\r\n"


def test_not_fields() -> None:
    block = b"From: a\r\nSubject: s\r\n folded\r\nDate: d\r\n\r\n"
    assert filter_fields(block, ["subject"], exclude=True) == b"From: a\r\nDate: d\r\n\r\n"
    assert filter_fields(block, ["Subject"]) == b"Subject: s\r\n folded\r\n\r\n"

"""IMAP response encoding: exact bytes, framing safety, and round trips through the parser."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.imap import commands as c
from pillarbox.imap import response as R
from pillarbox.imap.fetchatts import Simple
from pillarbox.imap.grammar import Reader, SequenceSet, normalise_inbox

ENCODED = [
    (R.Atom("EXISTS"), b"EXISTS"),
    (R.Flag("\\Seen"), b"\\Seen"),
    (R.Flag("\\*"), b"\\*"),
    (R.Flag("$Forwarded"), b"$Forwarded"),
    (R.Number(0), b"0"),
    (42, b"42"),
    (None, b"NIL"),
    (R.NIL, b"NIL"),
    (R.String(""), b'""'),
    (R.String("a b"), b'"a b"'),
    (R.String('say "hi" \\o/'), b'"say \\"hi\\" \\\\o/"'),
    (R.String(b"two\r\nlines"), b"{10}\r\ntwo\r\nlines"),
    (R.String("caf\u00e9"), b"{5}\r\ncaf\xc3\xa9"),
    (R.String(b"x" * 1025), b"{1025}\r\n" + b"x" * 1025),
    ("plain str", b'"plain str"'),
    (b"plain bytes", b'"plain bytes"'),
    (R.Literal(b"abc"), b"{3}\r\nabc"),
    (R.Literal(b"a\x00c"), b"{3}\r\na\x80c"),
    (R.String(b"a\x00c"), b"{3}\r\na\x80c"),
    (R.Literal(b"a\x00c", binary=True), b"~{3}\r\na\x00c"),
    ((1, None, "x", (R.Atom("A"),)), b'(1 NIL "x" (A))'),
    (R.List(()), b"()"),
    (R.Flags(()), b"()"),
    (R.Flags(("\\Seen", "$Junk")), b"(\\Seen $Junk)"),
    (
        R.Multipart(
            (("TEXT", "PLAIN", ("CHARSET", "UTF-8"), None, None, "7BIT", 3, 1), ("A", "B")),
            ("MIXED", ("BOUNDARY", "x")),
        ),
        b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "7BIT" 3 1)("A" "B") "MIXED" '
        b'("BOUNDARY" "x"))',
    ),
    (R.Mailbox("INBOX"), b'"INBOX"'),
    (R.Mailbox("\u00e9t\u00e9"), b'"&AOk-t&AOk-"'),
    (R.Mailbox("a&b"), b'"a&-b"'),
    (
        R.DateTime(dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=dt.timezone(dt.timedelta(hours=-7)))),
        b'" 7-Jul-1996 02:44:25 -0700"',
    ),
    (R.DateTime(dt.datetime(2020, 12, 31, 23, 59, 59)), b'"31-Dec-2020 23:59:59 +0000"'),
    (R.Seq(SequenceSet.from_numbers([1, 2, 3, 7])), b"1:3,7"),
    (R.Code("UIDVALIDITY", 3857529045), b"[UIDVALIDITY 3857529045]"),
    (R.Code("READ-WRITE"), b"[READ-WRITE]"),
    (R.Code("PERMANENTFLAGS", R.flag_list(["\\Seen", "\\*"])), b"[PERMANENTFLAGS (\\Seen \\*)]"),
]


@pytest.mark.parametrize(("token", "wire"), ENCODED)
def test_encode(token: object, wire: bytes) -> None:
    assert R.encode(token) == wire


def test_utf8_mode() -> None:
    assert R.encode(R.String("caf\u00e9"), utf8=True) == '"caf\u00e9"'.encode()
    assert R.encode(R.Mailbox("\u00e9t\u00e9"), utf8=True) == '"\u00e9t\u00e9"'.encode()
    # CR/LF still force a literal.
    assert R.encode(R.String("a\nb"), utf8=True) == b"{3}\r\na\nb"


@pytest.mark.parametrize(
    "token",
    [
        R.Atom("two words"),
        R.Atom(""),
        R.Atom("a\r\nb"),
        R.Atom("x]"),
        R.Flag("\\"),
        R.Flag("(x)"),
        R.Flag("a b"),
        R.Flags(("\\Seen", "a b")),
        R.Number(-1),
        R.Number(True),
        R.Seq(SequenceSet((), saved=True)),
        R.Code("bad code"),
        R.Multipart((), ("MIXED",)),
    ],
)
def test_invalid_tokens_are_refused(token: object) -> None:
    with pytest.raises(ValueError):
        R.encode(token)


def test_unknown_types_are_refused() -> None:
    with pytest.raises(TypeError):
        R.encode(1.5)
    with pytest.raises(TypeError):
        R.encode({"a": 1})
    with pytest.raises(TypeError):
        R.encode(True)


def test_status_lines() -> None:
    assert R.tagged("a1", "OK", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert (
        R.tagged("a2", "NO", "no such mailbox", R.Code("TRYCREATE"))
        == b"a2 NO [TRYCREATE] no such mailbox\r\n"
    )
    assert R.tagged(None, "BAD", "missing tag") == b"* BAD missing tag\r\n"
    assert (
        R.untagged_status("OK", "UIDs valid", R.Code("UIDVALIDITY", 7))
        == b"* OK [UIDVALIDITY 7] UIDs valid\r\n"
    )
    assert R.untagged_status("BYE", "") == b"* BYE done\r\n"
    assert R.continuation() == b"+ go ahead\r\n"
    assert R.continuation("") == b"+ \r\n"
    assert R.continuation_data(b"\x00hi") == b"+ AGhp\r\n"
    with pytest.raises(ValueError):
        R.tagged("a1", "MAYBE", "x")
    with pytest.raises(ValueError):
        R.tagged("a b", "OK", "x")


def test_parse_error_answers() -> None:
    with pytest.raises(c.ParseError) as info:
        c.parse(b"a7 FETCH")
    assert R.parse_error(info.value) == b"a7 BAD missing arguments\r\n"
    with pytest.raises(c.ParseError) as info:
        c.parse(b"(bad")
    assert R.parse_error(info.value) == b"* BAD missing or invalid tag\r\n"
    with pytest.raises(c.ParseError) as info:
        c.parse(b"a8 SEARCH CHARSET X-UNKNOWN ALL")
    assert R.parse_error(info.value) == (
        b"a8 NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset X-UNKNOWN\r\n"
    )


def test_secrets_are_not_in_repr() -> None:
    assert "hunter2" not in repr(c.parse(b"a LOGIN bob hunter2"))
    assert "AGJvYgBwdw" not in repr(c.parse(b"a AUTHENTICATE PLAIN AGJvYgBwdw=="))
    assert "\\x00bob" not in repr(c.parse(b"a AUTHENTICATE PLAIN AGJvYgBwdw=="))


def test_text_cannot_inject_lines_or_codes() -> None:
    line = R.tagged("a", "NO", "bad\r\n* OK [ALERT] owned\x00")
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert b"\x00" not in line
    assert R.tagged("a", "NO", "[ALERT] not a code") == b"a NO  [ALERT] not a code\r\n"
    assert R.tagged("a", "NO", "caf\u00e9") == b"a NO caf?\r\n"


def test_untagged_and_helpers() -> None:
    assert R.untagged(23, R.Atom("EXISTS")) == b"* 23 EXISTS\r\n"
    assert R.capability(["IMAP4rev1", "AUTH=PLAIN", "LITERAL+"]) == (
        b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+\r\n"
    )
    assert R.list_response("LIST", ["\\HasNoChildren", "\\Drafts"], "/", "Drafts") == (
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
    )
    assert R.list_response("LIST", ["\\Noselect"], None, "") == b'* LIST (\\Noselect) NIL ""\r\n'
    assert R.status_response("INBOX", [("MESSAGES", 3), ("UIDNEXT", 9)]) == (
        b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 9)\r\n'
    )
    assert R.search_response([2, 3, 7]) == b"* SEARCH 2 3 7\r\n"
    assert R.search_response([]) == b"* SEARCH\r\n"
    assert R.search_response([1], modseq=9) == b"* SEARCH 1 (MODSEQ 9)\r\n"
    assert R.esearch_response("a", uid=True, minimum=2, count=0) == (
        b'* ESEARCH (TAG "a") UID MIN 2 COUNT 0\r\n'
    )
    assert R.esearch_response("b", uid=False, all_numbers=SequenceSet.from_numbers([1, 2, 5])) == (
        b'* ESEARCH (TAG "b") ALL 1:2,5\r\n'
    )
    assert R.literal_prefix(10) == b"{10}\r\n"
    assert R.literal_prefix(10, binary=True) == b"~{10}\r\n"


@pytest.mark.parametrize(
    ("request_items", "names"),
    [
        (b"(FLAGS UID RFC822.SIZE)", [b"FLAGS", b"UID", b"RFC822.SIZE"]),
        (b"BODY.PEEK[]", [b"BODY[]"]),
        (b"BODY[]<100.50>", [b"BODY[]<100>"]),
        (b"body.peek[header.fields (From To)]", [b"BODY[HEADER.FIELDS (From To)]"]),
        (b"BODY[1.2.HEADER.FIELDS.NOT (X-A)]<0.9>", [b"BODY[1.2.HEADER.FIELDS.NOT (X-A)]<0>"]),
        (b"BODY[2.MIME]", [b"BODY[2.MIME]"]),
        (b"BODY[3]", [b"BODY[3]"]),
        (b"(BODY BODYSTRUCTURE ENVELOPE)", [b"BODY", b"BODYSTRUCTURE", b"ENVELOPE"]),
        (b"(RFC822 RFC822.HEADER RFC822.TEXT)", [b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"]),
        (b"BINARY.PEEK[1]<0.10>", [b"BINARY[1]<0>"]),
        (b"BINARY.SIZE[1.2]", [b"BINARY.SIZE[1.2]"]),
        (b"BINARY[]", [b"BINARY[]"]),
    ],
)
def test_fetch_names_echo_request(request_items: bytes, names: list[bytes]) -> None:
    cmd = c.parse(b"t FETCH 1 " + request_items)
    assert isinstance(cmd, c.Fetch)
    assert [R.encode(R.FetchName(a)) for a in cmd.attributes] == names


def test_fetch_response() -> None:
    cmd = c.parse(b"t UID FETCH 4 (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert isinstance(cmd, c.Fetch)
    flags_att, header_att = cmd.attributes
    line = R.fetch(
        12,
        [
            ("UID", 4),
            (flags_att, R.flag_list(["\\Seen"])),
            (header_att, R.String(b"Subject: hi\r\n\r\n")),
            (Simple.INTERNALDATE, R.DateTime(dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC))),
        ],
    )
    assert line == (
        b"* 12 FETCH (UID 4 FLAGS (\\Seen) BODY[HEADER.FIELDS (Subject)] {15}\r\n"
        b'Subject: hi\r\n\r\n INTERNALDATE " 2-Jan-2020 03:04:05 +0000")\r\n'
    )
    with pytest.raises(ValueError):
        R.fetch(1, [("BAD NAME", 1)])


# --- round trips: what we encode, the parser reads back ----------------------------------------
def _reader(token: object, utf8: bool = False) -> Reader:
    return Reader(R.encode(token, utf8=utf8), utf8=utf8)


@given(st.binary(max_size=1100).filter(lambda b: b"\x00" not in b))
def test_string_round_trip(value: bytes) -> None:
    r = _reader(R.String(value))
    assert r.string() == value
    r.end()


@given(st.text(max_size=200).filter(lambda t: "\x00" not in t))
def test_string_round_trip_utf8(value: str) -> None:
    r = _reader(R.String(value), utf8=True)
    assert r.astring().decode("utf-8") == value
    r.end()


_names = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\x7f"), max_size=40
)


@given(_names, st.booleans())
def test_mailbox_round_trip(name: str, utf8: bool) -> None:
    r = _reader(R.Mailbox(name), utf8=utf8)
    assert r.mailbox() == normalise_inbox(name)
    r.end()


_flag = st.from_regex(r"\\?[A-Za-z0-9$_.\-]{1,12}", fullmatch=True)


@given(st.lists(_flag, max_size=8))
def test_flag_list_round_trip(flags: list[str]) -> None:
    r = _reader(R.flag_list(flags))
    parsed = r.flag_list()
    r.end()
    assert [f.upper() for f in parsed] == [f.upper() for f in flags]


@given(
    st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.integers(-12 * 60, 14 * 60),
)
def test_datetime_round_trip(value: dt.datetime, offset_minutes: int) -> None:
    aware = value.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    r = _reader(R.DateTime(aware))
    assert r.date_time() == aware
    r.end()


@given(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=30))
def test_sequence_set_round_trip(numbers: list[int]) -> None:
    s = SequenceSet.from_numbers(numbers)
    r = _reader(R.Seq(s))
    assert r.sequence_set() == s
    r.end()


_no_nul = st.binary(max_size=30).filter(lambda b: b"\x00" not in b)  # NUL is sent as 0x80


@given(st.lists(st.one_of(st.integers(0, 2**32 - 1), _no_nul), max_size=10))
def test_list_round_trip(items: list[int | bytes]) -> None:
    r = _reader(tuple(items))
    r.open()
    parsed: list[int | bytes] = []
    while not r.maybe_close():
        if parsed:
            r.sp()
        parsed.append(r.number() if isinstance(items[len(parsed)], int) else r.string())
    r.end()
    assert parsed == items

"""IMAP grammar primitives: table-driven good and bad inputs, literal assembly, sequence sets."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.imap.grammar import (
    STAR,
    CommandAssembler,
    Limits,
    LiteralSpec,
    LiteralTooBig,
    ParseError,
    Reader,
    SequenceSet,
    is_idle_done,
    literal_at_end,
    normalise_inbox,
    parse_sasl_response,
)


def read(method: Callable[[Reader], object], data: bytes, utf8: bool = False) -> object:
    r = Reader(data, utf8=utf8)
    value = method(r)
    r.end()
    return value


GOOD = [
    (Reader.atom, b"FOO.bar-1", b"FOO.bar-1"),
    (Reader.keyword, b"fetch", "FETCH"),
    (Reader.number, b"0", 0),
    (Reader.number, b"4294967295", 4294967295),
    (Reader.nz_number, b"17", 17),
    (Reader.quoted, b'""', b""),
    (Reader.quoted, b'"a b"', b"a b"),
    (Reader.quoted, b'"a\\"b\\\\c"', b'a"b\\c'),
    (Reader.quoted, '"caf\u00e9"'.encode(), "caf\u00e9".encode()),
    (Reader.literal, b"{0}\r\n", b""),
    (Reader.literal, b"{5}\r\nab\r\nc", b"ab\r\nc"),
    (Reader.literal, b"{3+}\r\nabc", b"abc"),
    (Reader.astring, b"foo]bar", b"foo]bar"),
    (Reader.astring, b'"x y"', b"x y"),
    (Reader.astring, b"{2}\r\n()", b"()"),
    (Reader.string, b'"s"', b"s"),
    (Reader.nstring, b"NIL", None),
    (Reader.nstring, b"nil", None),
    (Reader.nstring, b'"NIL"', b"NIL"),
    (Reader.mailbox, b"inbox", "INBOX"),
    (Reader.mailbox, b'"InBoX"', "INBOX"),
    (Reader.mailbox, b"Inbox/Sub", "INBOX/Sub"),
    (Reader.mailbox, b"INBOXES", "INBOXES"),
    (Reader.mailbox, b"&AOk-t&AOk-", "\u00e9t\u00e9"),
    (Reader.mailbox, b'"Sent Items"', "Sent Items"),
    (Reader.list_mailbox, b"*", "*"),
    (Reader.list_mailbox, b"INBOX/%", "INBOX/%"),
    (Reader.list_mailbox, b'""', ""),
    (Reader.list_mailbox, b"inbox", "inbox"),  # patterns are matched, not normalised
    (Reader.flag, b"\\seen", "\\Seen"),
    (Reader.flag, b"\\DELETED", "\\Deleted"),
    (Reader.flag, b"$Forwarded", "$Forwarded"),
    (Reader.flag, b"\\Custom", "\\Custom"),
    (Reader.flag_list, b"()", ()),
    (Reader.flag_list, b"(\\Seen $Junk)", ("\\Seen", "$Junk")),
    (Reader.flags_or_list, b"\\Seen \\Flagged", ("\\Seen", "\\Flagged")),
    (Reader.date, b"1-Feb-1994", dt.date(1994, 2, 1)),
    (Reader.date, b'"01-feb-1994"', dt.date(1994, 2, 1)),
    (Reader.date, b"29-Feb-2024", dt.date(2024, 2, 29)),
    (
        Reader.date_time,
        b'"17-Jul-1996 02:44:25 -0700"',
        dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    ),
    (
        Reader.date_time,
        b'" 7-jul-1996 02:44:25 +0130"',
        dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=dt.timezone(dt.timedelta(minutes=90))),
    ),
    (
        Reader.date_time,
        b'"7-Jul-1996 02:44:25 +0000"',
        dt.datetime(1996, 7, 7, 2, 44, 25, tzinfo=dt.UTC),
    ),
    (Reader.sequence_set, b"1", SequenceSet(((1, 1),))),
    (Reader.sequence_set, b"1:*", SequenceSet(((1, STAR),))),
    (Reader.sequence_set, b"*", SequenceSet(((STAR, STAR),))),
    (Reader.sequence_set, b"5:2,7,9:*", SequenceSet(((5, 2), (7, 7), (9, STAR)))),
    (Reader.sequence_set, b"$", SequenceSet((), saved=True)),
    (Reader.ext_value, b"(1 2 (3:4 foo))", (1, 2, (SequenceSet(((3, 4),)), b"foo"))),
]


@pytest.mark.parametrize(("method", "data", "expected"), GOOD)
def test_primitive_good(method: Callable[[Reader], object], data: bytes, expected: object) -> None:
    assert read(method, data) == expected


BAD = [
    (Reader.atom, b""),
    (Reader.atom, b"(x"),
    (Reader.atom, b"a]"),  # "]" is not an atom char
    (Reader.number, b"x"),
    (Reader.number, b"4294967296"),
    (Reader.nz_number, b"0"),
    (Reader.quoted, b'"abc'),
    (Reader.quoted, b'"a\rb"'),
    (Reader.quoted, b'"a\nb"'),
    (Reader.quoted, b'"a\x00b"'),
    (Reader.quoted, b'"a\\xb"'),  # only \" and \\ may be escaped
    (Reader.literal, b"{5}\r\nabc"),  # shorter than announced
    (Reader.literal, b"{5}abcde"),  # no CRLF
    (Reader.literal, b"~{1}\r\na"),  # literal8 only where allowed
    (Reader.astring, b"(x)"),
    (Reader.astring, b"a%b"),
    (Reader.string, b"atom"),
    (Reader.mailbox, b"caf\xc3\xa9"),  # 8-bit without UTF8=ACCEPT
    (Reader.mailbox, b"&AGE-"),
    (Reader.mailbox, b"{3}\r\na\tb"),
    (Reader.mailbox, b"&AAk-"),  # encoded control character
    (Reader.flag, b"\\"),
    (Reader.flag, b"(\\Seen)"),
    (Reader.flag_list, b"(\\Seen"),
    (Reader.flag_list, b"(\\Seen  \\Draft)"),
    (Reader.flag_list, b"\\Seen"),
    (Reader.date, b"1-Foo-1994"),
    (Reader.date, b"30-Feb-1994"),
    (Reader.date, b'"1-Feb-1994'),
    (Reader.date, b"1994-02-01"),
    (Reader.date_time, b'"17-Jul-1996 02:44:25"'),
    (Reader.date_time, b'"17-Jul-1996 25:44:25 -0700"'),
    (Reader.date_time, b"17-Jul-1996 02:44:25 -0700"),
    (Reader.date_time, b'"  7-Jul-1996 02:44:25 -0700"'),
    (Reader.date_time, b'"117-Jul-1996 02:44:25 -0700"'),
    (Reader.sequence_set, b"0"),
    (Reader.sequence_set, b"01"),
    (Reader.sequence_set, b"1:"),
    (Reader.sequence_set, b",1"),
    (Reader.sequence_set, b"1,,2"),
    (Reader.sequence_set, b"4294967296"),
    (Reader.sequence_set, b"$,1"),
    (Reader.sequence_set, b""),
]


@pytest.mark.parametrize(("method", "data"), BAD)
def test_primitive_bad(method: Callable[[Reader], object], data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        read(method, data)
    assert info.value.reason


def test_mailbox_utf8_accept() -> None:
    assert read(Reader.mailbox, "caf\u00e9".encode(), utf8=True) == "caf\u00e9"
    # After ENABLE UTF8=ACCEPT names are UTF-8: "&" is just a character.
    assert read(Reader.mailbox, b"&AOk-", utf8=True) == "&AOk-"
    with pytest.raises(ParseError):
        read(Reader.mailbox, b"\xff", utf8=True)


def test_error_carries_tag() -> None:
    r = Reader(b"x", tag="A1")
    with pytest.raises(ParseError) as info:
        r.number()
    assert info.value.tag == "A1"
    assert info.value.status == "BAD"


# --- sequence sets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "largest", "resolved"),
    [
        (b"1:*", 10, [(1, 10)]),
        (b"*", 10, [(10, 10)]),
        (b"*:4", 10, [(4, 10)]),
        (b"5:2,7,3", 10, [(2, 5), (7, 7)]),
        (b"1,2,3,5,6", 10, [(1, 3), (5, 6)]),
        (b"15:*", 10, [(10, 15)]),  # RFC 9051 §6.4.8 note: n:* with n > max is max:n
        (b"1:4,2:9", 10, [(1, 9)]),
    ],
)
def test_sequence_resolve(text: bytes, largest: int, resolved: list[tuple[int, int]]) -> None:
    seq = read(Reader.sequence_set, text)
    assert isinstance(seq, SequenceSet)
    assert seq.resolve(largest) == resolved
    assert seq.to_bytes() == text


def test_sequence_clip_and_iterate() -> None:
    seq = SequenceSet(((3, STAR), (20, 25)))
    assert seq.resolve(5, clip=True) == [(3, 5)]
    assert list(seq.iter(5)) == [3, 4, 5]
    assert seq.resolve(0, clip=True) == []
    assert seq.uses_star
    assert seq.max_number(5) == 25
    m = seq.matcher(5)
    assert [n for n in range(30) if n in m] == [3, 4, 5, *range(20, 26)]
    assert len(m) == 9


def test_sequence_saved_must_be_substituted() -> None:
    with pytest.raises(ValueError):
        SequenceSet((), saved=True).resolve(3)
    assert SequenceSet((), saved=True).to_bytes() == b"$"


@given(st.lists(st.integers(1, 2000), max_size=60))
def test_from_numbers_is_compact_and_exact(numbers: list[int]) -> None:
    seq = SequenceSet.from_numbers(numbers)
    assert sorted(set(numbers)) == list(seq.iter(2000))
    # Merged ranges never touch each other.
    for (_, hi), (lo, _) in zip(seq.ranges, seq.ranges[1:], strict=False):
        assert lo > hi + 1
    if numbers:
        assert read(Reader.sequence_set, seq.to_bytes()) == seq


# --- literal announcements and command assembly ----------------------------------------------
@pytest.mark.parametrize(
    ("line", "spec"),
    [
        (b"a LOGIN {3}\r\n", LiteralSpec(3, True)),
        (b"a LOGIN {3}", LiteralSpec(3, True)),
        (b"a APPEND x {310+}\r\n", LiteralSpec(310, False)),
        (b"a APPEND x ~{10}\r\n", LiteralSpec(10, True, binary=True)),
        (b"a LOGIN bob pw", None),
        (b"a LOGIN {3} x", None),
        (b'a LOGIN "{3}"', None),
    ],
)
def test_literal_at_end(line: bytes, spec: LiteralSpec | None) -> None:
    assert literal_at_end(line) == spec


def test_assembler_joins_lines_and_literals() -> None:
    asm = CommandAssembler()
    spec = asm.add_line(b"A1 LOGIN {3}\r\n")
    assert spec == LiteralSpec(3, True)
    assert asm.tag == "A1"
    assert asm.command_name == "LOGIN"
    asm.add_literal(b"bob")
    assert asm.add_line(b" {2+}\r\n") == LiteralSpec(2, False)
    asm.add_literal(b"pw")
    assert asm.add_line(b"\r\n") is None
    assert asm.finish() == b"A1 LOGIN {3}\r\nbob {2+}\r\npw"


def test_assembler_accepts_bare_lf() -> None:
    asm = CommandAssembler()
    assert asm.add_line(b"a NOOP\n") is None
    assert asm.finish() == b"a NOOP"
    assert asm.command_name == "NOOP"
    asm.reset()
    assert asm.command_name is None
    asm.add_line(b"a uid fetch 1 BODY[]")
    assert asm.command_name == "FETCH"


def test_assembler_limits() -> None:
    limits = Limits(max_line=20, max_literal=10, max_message_literal=100, max_literals=2)
    with pytest.raises(ParseError, match="line too long") as info:
        CommandAssembler(limits).add_line(b"t1 NOOP " + b"x" * 30)
    assert info.value.tag == "t1"

    with pytest.raises(LiteralTooBig) as big:
        CommandAssembler(limits).add_line(b"t2 LOGIN {11}")
    assert big.value.tag == "t2"
    assert big.value.code == "TOOBIG"
    assert big.value.status == "NO"
    assert big.value.spec == LiteralSpec(11, True)

    with pytest.raises(LiteralTooBig) as big:
        CommandAssembler(limits).add_line(b"t3 LOGIN {11+}")
    assert big.value.status == "BAD"
    assert not big.value.spec.synchronizing

    # APPEND gets the message limit.
    asm = CommandAssembler(limits)
    assert asm.add_line(b"t4 APPEND x {99}") == LiteralSpec(99, True)

    asm = CommandAssembler(limits)
    asm.add_line(b"t5 LOGIN {1}")
    asm.add_literal(b"a")
    asm.add_line(b" {1}")
    asm.add_literal(b"b")
    with pytest.raises(LiteralTooBig, match="too many"):
        asm.add_line(b" {1}")


def test_assembler_rejects_nul_outside_literal8() -> None:
    asm = CommandAssembler()
    asm.add_line(b"a APPEND x {1}")
    with pytest.raises(ParseError):
        asm.add_literal(b"\x00")
    asm = CommandAssembler()
    asm.add_line(b"a APPEND x ~{1}")
    asm.add_literal(b"\x00")
    assert asm.add_line(b"") is None


def test_assembler_rejects_out_of_order_use() -> None:
    asm = CommandAssembler()
    with pytest.raises(ParseError):
        asm.add_literal(b"x")
    with pytest.raises(ParseError):
        asm.finish()
    asm.add_line(b"a LOGIN {2}")
    with pytest.raises(ParseError):
        asm.add_literal(b"x")  # wrong size


def test_small_helpers() -> None:
    assert is_idle_done(b"DONE\r\n")
    assert is_idle_done(b"done")
    assert not is_idle_done(b"DONE now\r\n")
    assert parse_sasl_response(b"*\r\n") is None
    assert parse_sasl_response(b"AGJvYgBwdw==\r\n") == b"\x00bob\x00pw"
    assert parse_sasl_response(b"\r\n") == b""
    with pytest.raises(ParseError):
        parse_sasl_response(b"not base64!")
    assert normalise_inbox("iNbOx") == "INBOX"
    assert normalise_inbox("inbox/a") == "INBOX/a"
    assert normalise_inbox("inboxes") == "inboxes"


def _session_read(wire: bytes, limits: Limits | None = None) -> tuple[bytes, list[LiteralSpec]]:
    """Read one command from ``wire`` the way the session does: line, literal, line, ..."""
    asm = CommandAssembler(limits)
    pos = 0
    specs = []

    def readline() -> bytes:
        nonlocal pos
        end = wire.index(b"\n", pos) + 1
        line, pos = wire[pos:end], end
        return line

    spec = asm.add_line(readline())
    while spec is not None:
        specs.append(spec)
        asm.add_literal(wire[pos : pos + spec.size])
        pos += spec.size
        spec = asm.add_line(readline())
    assert pos == len(wire)
    return asm.finish(), specs


_secret = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50)


@given(_secret, _secret, st.booleans())
def test_assembler_round_trip_with_literals(user: str, password: str, sync: bool) -> None:
    from pillarbox.imap.commands import Login, parse

    u, p = user.encode(), password.encode()
    plus = b"" if sync else b"+"
    wire = b"t LOGIN {%d%s}\r\n%s {%d%s}\r\n%s\r\n" % (len(u), plus, u, len(p), plus, p)
    command, specs = _session_read(wire)
    assert specs == [LiteralSpec(len(u), sync), LiteralSpec(len(p), sync)]
    assert parse(command) == Login("t", user, password)

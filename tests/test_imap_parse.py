"""IMAP command parsing: every command, good and bad, table-driven, plus the no-crash property."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.imap import commands as c
from pillarbox.imap import dispatch
from pillarbox.imap.fetchatts import Binary, BinarySize, BodySection, Section, SectionText, Simple
from pillarbox.imap.grammar import STAR, ParseError, SequenceSet
from pillarbox.imap.searchkeys import (
    AllKey,
    AndKey,
    BodyKey,
    DateField,
    DateKey,
    DateOp,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SeqKey,
    SizeKey,
    TextKey,
    UidKey,
    WithinKey,
)


def seq(*ranges: tuple[int, int]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


UTC_PLUS_1 = dt.timezone(dt.timedelta(hours=1))

GOOD: list[tuple[bytes, c.Command]] = [
    (b"a CAPABILITY", c.Capability("a")),
    (b"a1 noop", c.Noop("a1")),
    (b"A LOGOUT", c.Logout("A")),
    (b"t STARTTLS", c.StartTLS("t")),
    (b"t AUTHENTICATE PLAIN", c.Authenticate("t", "PLAIN", None)),
    (b"t authenticate plain =", c.Authenticate("t", "PLAIN", b"")),
    (b"t AUTHENTICATE PLAIN AGJvYgBwdw==", c.Authenticate("t", "PLAIN", b"\x00bob\x00pw")),
    (b"t AUTHENTICATE XOAUTH2", c.Authenticate("t", "XOAUTH2", None)),
    (b"t LOGIN bob secret", c.Login("t", "bob", "secret")),
    (b't LOGIN "bob@x.example" "p w\\"q"', c.Login("t", "bob@x.example", 'p w"q')),
    (b"t LOGIN {3}\r\nbob {3+}\r\np\xc3\xa9", c.Login("t", "bob", "p\u00e9")),
    (b"t SELECT inbox", c.Select("t", "INBOX")),
    (b"t SELECT INBOX (CONDSTORE)", c.Select("t", "INBOX", condstore=True)),
    (
        b"t SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))",
        c.Select(
            "t",
            "INBOX",
            qresync=c.Qresync(67890007, 20050715194045000, seq((41, 41), (43, 211))),
        ),
    ),
    (  # RFC 7162 §3.2.5.2's example: known UIDs and seq-match-data
        b"t EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500 15000,22500)))",
        c.Examine(
            "t",
            "INBOX",
            qresync=c.Qresync(
                67890007,
                90060115194045000,
                seq((1, 29997)),
                (seq((5000, 5000), (7500, 7500)), seq((15000, 15000), (22500, 22500))),
            ),
        ),
    ),
    (
        b"t SELECT INBOX (CONDSTORE QRESYNC (1 2 (1 3)))",
        c.Select(
            "t", "INBOX", condstore=True, qresync=c.Qresync(1, 2, None, (seq((1, 1)), seq((3, 3))))
        ),
    ),
    (b'u EXAMINE "Sent Items"', c.Examine("u", "Sent Items")),
    (b"t CREATE Foo/Bar", c.Create("t", "Foo/Bar")),
    (b"t CREATE Drafts (USE (\\Drafts))", c.Create("t", "Drafts", ("\\Drafts",))),
    (b"t DELETE &AOk-t&AOk-", c.Delete("t", "\u00e9t\u00e9")),
    (b"t RENAME a b", c.Rename("t", "a", "b")),
    (b"t RENAME inbox Old", c.Rename("t", "INBOX", "Old")),
    (b"t SUBSCRIBE a", c.Subscribe("t", "a")),
    (b"t UNSUBSCRIBE a", c.Unsubscribe("t", "a")),
    (b't LIST "" *', c.List("t", "", ("*",))),
    (b't LIST "" ""', c.List("t", "", ("",))),
    (b"t LIST Foo/ %", c.List("t", "Foo/", ("%",))),
    (
        b't LIST (SUBSCRIBED RECURSIVEMATCH) "" (% "Other/*")',
        c.List(
            "t", "", ("%", "Other/*"), frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}), extended=True
        ),
    ),
    (
        b't LIST "" % RETURN (SPECIAL-USE CHILDREN STATUS (MESSAGES UIDNEXT))',
        c.List(
            "t",
            "",
            ("%",),
            return_options=frozenset({"SPECIAL-USE", "CHILDREN", "STATUS"}),
            return_status=("MESSAGES", "UIDNEXT"),
            extended=True,
        ),
    ),
    (b't LIST () "" % RETURN ()', c.List("t", "", ("%",), extended=True)),
    (b't LSUB "" *', c.Lsub("t", "", "*")),
    (
        b"t STATUS inbox (MESSAGES UNSEEN UIDVALIDITY)",
        c.Status("t", "INBOX", ("MESSAGES", "UNSEEN", "UIDVALIDITY")),
    ),
    (b"t APPEND x {2}\r\nhi", c.Append("t", "x", (c.AppendMessage((), None, b"hi"),))),
    (
        b't APPEND x (\\Seen $Junk) "01-Jan-2020 10:00:00 +0100" {2+}\r\nhi',
        c.Append(
            "t",
            "x",
            (
                c.AppendMessage(
                    ("\\Seen", "$Junk"), dt.datetime(2020, 1, 1, 10, 0, 0, tzinfo=UTC_PLUS_1), b"hi"
                ),
            ),
        ),
    ),
    (
        b"t APPEND x () ~{3}\r\na\x00b",
        c.Append("t", "x", (c.AppendMessage((), None, b"a\x00b", binary=True),)),
    ),
    (
        b"t APPEND x {1}\r\na (\\Draft) {1}\r\nb",
        c.Append(
            "t", "x", (c.AppendMessage((), None, b"a"), c.AppendMessage(("\\Draft",), None, b"b"))
        ),
    ),
    (
        b"t APPEND x UTF8 (~{2}\r\nhi)",
        c.Append("t", "x", (c.AppendMessage((), None, b"hi", binary=True, utf8=True),)),
    ),
    (b"t CHECK", c.Check("t")),
    (b"t CLOSE", c.Close("t")),
    (b"t UNSELECT", c.Unselect("t")),
    (b"t EXPUNGE", c.Expunge("t")),
    (b"t UID EXPUNGE 3:5,9", c.Expunge("t", seq((3, 5), (9, 9)))),
    (b"t SEARCH ALL", c.Search("t", AllKey())),
    (b"t UID SEARCH 1:*", c.Search("t", SeqKey(seq((1, STAR))), uid=True)),
    (
        b"t SEARCH CHARSET utf-8 SUBJECT {5}\r\n\xc3\xa9t\xc3\xa9",
        c.Search("t", HeaderKey("Subject", "\u00e9t\u00e9"), charset="UTF-8"),
    ),
    (
        b"t SEARCH RETURN (MIN COUNT) UNSEEN",
        c.Search("t", FlagKey("\\Seen", False), return_options=frozenset({"MIN", "COUNT"})),
    ),
    (
        b"t SEARCH RETURN () DELETED",
        c.Search("t", FlagKey("\\Deleted"), return_options=frozenset({"ALL"})),
    ),
    (
        b"t FETCH 1:4 (FLAGS UID)",
        c.Fetch("t", seq((1, 4)), (Simple.FLAGS, Simple.UID)),
    ),
    (
        b"t UID FETCH 1:* FAST",
        c.Fetch(
            "t", seq((1, STAR)), (Simple.FLAGS, Simple.INTERNALDATE, Simple.RFC822_SIZE), uid=True
        ),
    ),
    (
        b"t FETCH 2 body[]",
        c.Fetch("t", seq((2, 2)), (BodySection(Section()),)),
    ),
    (
        b"t FETCH $ (BODY.PEEK[1.2.MIME] BINARY[1]<0.10> BINARY.SIZE[2])",
        c.Fetch(
            "t",
            SequenceSet((), saved=True),
            (
                BodySection(Section((1, 2), SectionText.MIME), peek=True),
                Binary((1,), (0, 10)),
                BinarySize((2,)),
            ),
        ),
    ),
    (
        b"t UID FETCH 5 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        c.Fetch("t", seq((5, 5)), (Simple.FLAGS,), uid=True, changed_since=12345, vanished=True),
    ),
    (
        b"t STORE 1:3 +FLAGS (\\Deleted)",
        c.Store("t", seq((1, 3)), c.StoreMode.ADD, False, ("\\Deleted",)),
    ),
    (
        b"t UID STORE 7 -flags.silent \\Seen \\Flagged",
        c.Store("t", seq((7, 7)), c.StoreMode.REMOVE, True, ("\\Seen", "\\Flagged"), uid=True),
    ),
    (
        b"t STORE 1 FLAGS ()",
        c.Store("t", seq((1, 1)), c.StoreMode.REPLACE, False, ()),
    ),
    (
        b"t STORE 1 (UNCHANGEDSINCE 99) FLAGS.SILENT ($Important)",
        c.Store("t", seq((1, 1)), c.StoreMode.REPLACE, True, ("$Important",), unchanged_since=99),
    ),
    (b"t COPY 1:2 Trash", c.Copy("t", seq((1, 2)), "Trash")),
    (b"t UID COPY 9 inbox", c.Copy("t", seq((9, 9)), "INBOX", uid=True)),
    (b"t MOVE 1 Archive", c.Move("t", seq((1, 1)), "Archive")),
    (b"t UID MOVE 4:* Junk", c.Move("t", seq((4, STAR)), "Junk", uid=True)),
    (b"t NAMESPACE", c.Namespace("t")),
    (b"t ID NIL", c.Id("t", None)),
    (b"t ID ()", c.Id("t", ())),
    (b't ID ("name" "imaplib" "version" NIL)', c.Id("t", (("name", "imaplib"), ("version", None)))),
    (b"t ENABLE CONDSTORE utf8=accept", c.Enable("t", ("CONDSTORE", "UTF8=ACCEPT"))),
    (b"t IDLE", c.Idle("t")),
]


@pytest.mark.parametrize(
    ("line", "expected"), GOOD, ids=[g[0][:40].decode("latin-1") for g in GOOD]
)
def test_parse_good(line: bytes, expected: c.Command) -> None:
    assert c.parse(line) == expected


BAD: list[tuple[bytes, str | None]] = [
    (b"", None),
    (b" NOOP", None),
    (b"a+b NOOP", None),  # "+" is not allowed in a tag
    (b"(x) NOOP", None),
    (b"a", None),
    (b"a ", "a"),
    (b"a FROB", "a"),
    (b"a NOOP extra", "a"),
    (b"a NOOP ", "a"),
    (b"a UID NOOP", "a"),
    (b"a UID", "a"),
    (b"a LOGIN bob", "a"),
    (b"a LOGIN bob  pw", "a"),
    (b"a LOGIN bob pw x", "a"),
    (b"a LOGIN {5}\r\nbob pw", "a"),
    (b"a AUTHENTICATE PLAIN !!!", "a"),
    (b"a AUTHENTICATE", "a"),
    (b"a SELECT", "a"),
    (b"a SELECT caf\xc3\xa9", "a"),
    (b"a SELECT x (CONDSTORE", "a"),
    (b"a SELECT x (QRESYNC (0 1))", "a"),  # UIDVALIDITY is nz-number (RFC 7162 §7)
    (b"a SELECT x (QRESYNC (1))", "a"),
    (b"a SELECT x (QRESYNC (1 1 1:*))", "a"),  # no "*" in known-uids
    (b"a SELECT x (QRESYNC (1 1 1:4 (1:2 5)))", "a"),  # seq-match sets of unequal size
    (b"a SELECT x (QRESYNC (1 1 1:4 ))", "a"),
    (b"a CREATE x (FOO (\\Drafts))", "a"),
    (b"a RENAME a", "a"),
    (b"a LIST *", "a"),
    (b'a LIST (BOGUS) "" *', "a"),
    (b'a LIST (RECURSIVEMATCH) "" *', "a"),  # RFC 5258 §3
    (b'a LIST "" * RETURN (BOGUS)', "a"),
    (b'a LIST "" * RETURN (STATUS (BOGUS))', "a"),
    (b'a LIST "" * FOO (x)', "a"),
    (b"a STATUS x ()", "a"),
    (b"a STATUS x (MESSAGES BOGUS)", "a"),
    (b"a STATUS x MESSAGES", "a"),
    (b"a APPEND x", "a"),
    (b"a APPEND x hello", "a"),
    (b"a APPEND x (\\Seen) {5}\r\nhi", "a"),
    (b'a APPEND x "1-Jan-2020" {2}\r\nhi', "a"),
    (b"a SEARCH", "a"),
    (b"a SEARCH FROBNICATE", "a"),
    (b"a SEARCH OR SEEN", "a"),
    (b"a SEARCH (SEEN", "a"),
    (b"a SEARCH BEFORE yesterday", "a"),
    (b"a SEARCH LARGER x", "a"),
    (b"a SEARCH RETURN (BOGUS) ALL", "a"),
    (b"a SEARCH SUBJECT \xff", "a"),
    (b"a FETCH 1", "a"),
    (b"a FETCH 0 FLAGS", "a"),
    (b"a FETCH 1 (FLAGS", "a"),
    (b"a FETCH 1 (ALL)", "a"),  # macros only alone
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (a:b)]", "a"),
    (b"a FETCH 1 BODY[MIME]", "a"),
    (b"a FETCH 1 BODY[0]", "a"),
    (b"a FETCH 1 BODY[1.]", "a"),
    (b"a FETCH 1 BODY[]<5>", "a"),
    (b"a FETCH 1 BODY[]<0.0>", "a"),
    (b"a FETCH 1 BODY.PEEK", "a"),
    (b"a FETCH 1 BINARY[TEXT]", "a"),
    (b"a FETCH 1 UID[1]", "a"),
    (b"a FETCH 1 FLAGS (VANISHED)", "a"),  # VANISHED only with UID FETCH
    (b"a UID FETCH 1 FLAGS (VANISHED)", "a"),  # ... and needs CHANGEDSINCE
    (b"a STORE 1 FLAGS", "a"),
    (b"a STORE 1 XFLAGS (\\Seen)", "a"),
    (b"a STORE 1 +FLAGS (\\*)", "a"),
    (b"a STORE 1 +FLAGS (\\Bogus)", "a"),
    (b"a COPY 1", "a"),
    (b"a COPY x Trash", "a"),
    (b"a UID EXPUNGE", "a"),
    (b"a ID", "a"),
    (b'a ID ("a")', "a"),
    (b"a ENABLE", "a"),
    (b"a IDLE now", "a"),
]


@pytest.mark.parametrize(("line", "tag"), BAD, ids=[b[0][:40].decode("latin-1") for b in BAD])
def test_parse_bad(line: bytes, tag: str | None) -> None:
    with pytest.raises(ParseError) as info:
        c.parse(line)
    assert info.value.tag == tag
    assert info.value.reason


def test_unknown_charset_is_no_badcharset() -> None:
    with pytest.raises(ParseError) as info:
        c.parse(b"a SEARCH CHARSET KOI8-R TEXT x")
    assert info.value.status == "NO"
    assert info.value.code is not None and info.value.code.startswith("BADCHARSET")


SEARCH_KEYS = [
    (b"ANSWERED", FlagKey("\\Answered")),
    (b"unanswered", FlagKey("\\Answered", False)),
    (b"DELETED", FlagKey("\\Deleted")),
    (b"UNDELETED", FlagKey("\\Deleted", False)),
    (b"DRAFT", FlagKey("\\Draft")),
    (b"UNDRAFT", FlagKey("\\Draft", False)),
    (b"FLAGGED", FlagKey("\\Flagged")),
    (b"UNFLAGGED", FlagKey("\\Flagged", False)),
    (b"SEEN", FlagKey("\\Seen")),
    (b"UNSEEN", FlagKey("\\Seen", False)),
    (b"RECENT", FlagKey("\\Recent")),
    (b"OLD", FlagKey("\\Recent", False)),
    (b"NEW", AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False)))),
    (b"KEYWORD $Junk", FlagKey("$Junk")),
    (b"UNKEYWORD $Junk", FlagKey("$Junk", False)),
    (b"BCC a", HeaderKey("Bcc", "a")),
    (b"CC a", HeaderKey("Cc", "a")),
    (b'FROM "Bob Smith"', HeaderKey("From", "Bob Smith")),
    (b"TO a", HeaderKey("To", "a")),
    (b"SUBJECT {3}\r\na b", HeaderKey("Subject", "a b")),
    (b'HEADER X-Spam ""', HeaderKey("X-Spam", "")),
    (b"BODY hello", BodyKey("hello")),
    (b"TEXT hello", TextKey("hello")),
    (b"BEFORE 1-Feb-2020", DateKey(DateField.INTERNAL, DateOp.BEFORE, dt.date(2020, 2, 1))),
    (b"ON 1-Feb-2020", DateKey(DateField.INTERNAL, DateOp.ON, dt.date(2020, 2, 1))),
    (b'SINCE "1-Feb-2020"', DateKey(DateField.INTERNAL, DateOp.SINCE, dt.date(2020, 2, 1))),
    (b"SENTBEFORE 1-Feb-2020", DateKey(DateField.SENT, DateOp.BEFORE, dt.date(2020, 2, 1))),
    (b"SENTON 1-Feb-2020", DateKey(DateField.SENT, DateOp.ON, dt.date(2020, 2, 1))),
    (b"SENTSINCE 1-Feb-2020", DateKey(DateField.SENT, DateOp.SINCE, dt.date(2020, 2, 1))),
    (b"LARGER 100", SizeKey(True, 100)),
    (b"SMALLER 100", SizeKey(False, 100)),
    (b"UID 1:5,*", UidKey(seq((1, 5), (STAR, STAR)))),
    (b"UID $", UidKey(SequenceSet((), saved=True))),
    (b"2:4", SeqKey(seq((2, 4)))),
    (b"NOT SEEN", NotKey(FlagKey("\\Seen"))),
    (b"OR SEEN FLAGGED", OrKey(FlagKey("\\Seen"), FlagKey("\\Flagged"))),
    (b"(SEEN)", FlagKey("\\Seen")),
    (
        b"OR (SEEN FLAGGED) NOT (DELETED)",
        OrKey(AndKey((FlagKey("\\Seen"), FlagKey("\\Flagged"))), NotKey(FlagKey("\\Deleted"))),
    ),
    (b"MODSEQ 620162338", ModSeqKey(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338', ModSeqKey(620162338, "/flags/\\draft")),
    (b"YOUNGER 3600", WithinKey(True, 3600)),
    (b"OLDER 3600", WithinKey(False, 3600)),
    (b"ALL", AllKey()),
]


@pytest.mark.parametrize(("text", "key"), SEARCH_KEYS, ids=[k[0].decode() for k in SEARCH_KEYS])
def test_search_keys(text: bytes, key: object) -> None:
    cmd = c.parse(b"s SEARCH " + text)
    assert isinstance(cmd, c.Search)
    assert cmd.key == key


def test_search_nesting_is_bounded() -> None:
    with pytest.raises(ParseError, match="deeply"):
        c.parse(b"s SEARCH " + b"NOT " * 200 + b"SEEN")
    with pytest.raises(ParseError, match="deeply"):
        c.parse(b"s SEARCH " + b"(" * 200 + b"SEEN" + b")" * 200)


def test_utf8_accept_mailboxes() -> None:
    assert c.parse('t SELECT "caf\u00e9"'.encode(), utf8=True) == c.Select("t", "caf\u00e9")
    with pytest.raises(ParseError):
        c.parse('t SELECT "caf\u00e9"'.encode())


def test_states_are_data() -> None:
    """The command table (dispatch.py) says where each command may run (RFC 3501 §3)."""
    assert dispatch.COMMANDS[c.Login][1] == dispatch.NOT_AUTHENTICATED
    assert dispatch.COMMANDS[c.Fetch][1] == frozenset({c.State.SELECTED})
    assert dispatch.COMMANDS[c.Select][1] == frozenset({c.State.AUTHENTICATED, c.State.SELECTED})
    assert c.State.NOT_AUTHENTICATED in dispatch.COMMANDS[c.Capability][1]
    assert c.Examine.readonly and not c.Select.readonly
    for name, cls in c.REGISTRY.items():
        assert cls.name == name


def test_every_command_has_a_route() -> None:
    """Every command the parser knows has exactly one handler and a non-empty set of
    states, and the table routes nothing the parser cannot produce."""
    assert set(dispatch.COMMANDS) == set(c.REGISTRY.values())
    for cls, (handler, states) in dispatch.COMMANDS.items():
        assert callable(handler), cls
        assert states and states <= dispatch.ANY, cls
        assert c.State.LOGOUT not in states, cls


def test_fetch_helpers() -> None:
    cmd = c.parse(b"t UID FETCH 1 (FLAGS BODY.PEEK[])")
    assert isinstance(cmd, c.Fetch)
    assert cmd.response_attributes == (Simple.UID, Simple.FLAGS, BodySection(Section(), peek=True))
    assert not cmd.sets_seen
    cmd = c.parse(b"t FETCH 1 (FLAGS BODY[TEXT])")
    assert isinstance(cmd, c.Fetch)
    assert cmd.response_attributes == cmd.attributes
    assert cmd.sets_seen
    for text, seen in [
        (b"RFC822", True),
        (b"RFC822.TEXT", True),
        (b"RFC822.HEADER", False),
        (b"BINARY[1]", True),
        (b"BINARY.PEEK[1]", False),
        (b"BODY[]", True),
    ]:
        cmd = c.parse(b"t FETCH 1 " + text)
        assert isinstance(cmd, c.Fetch)
        assert cmd.sets_seen is seen, text


def test_fetch_attribute_cache_gives_same_result() -> None:
    line = b"t FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (From)]) (CHANGEDSINCE 5)"
    assert c.parse(line) == c.parse(line)
    assert c.parse(b"t FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (From)]) (CHANGEDSINCE 6)") != c.parse(
        line
    )
    with pytest.raises(ParseError):
        c.parse(b"t FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (From)]) (CHANGEDSINCE x)")


# --- no-crash property -----------------------------------------------------------------------
_fragments = st.sampled_from(
    [
        b"a",
        b"A1 ",
        b"UID ",
        b"FETCH ",
        b"STORE ",
        b"SEARCH ",
        b"LIST ",
        b"APPEND ",
        b"SELECT ",
        b"LOGIN ",
        b"(",
        b")",
        b"[",
        b"]",
        b"<",
        b">",
        b"{3}\r\n",
        b"{0}\r\n",
        b"{99999999999999999999}\r\n",
        b"~{2}\r\n",
        b'"',
        b"\\",
        b"*",
        b"$",
        b":",
        b",",
        b"1",
        b"0",
        b" ",
        b"NIL",
        b"BODY[",
        b"HEADER.FIELDS",
        b"NOT ",
        b"OR ",
        b"CHARSET ",
        b"&",
        b"-",
        b"\xff",
        b"\x00",
        b"\r\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_fragments, max_size=30).map(b"".join))
def test_structured_garbage_raises_only_parse_error(data: bytes) -> None:
    try:
        c.parse(data)
    except ParseError as e:
        assert isinstance(e.reason, str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_raise_only_parse_error(data: bytes, utf8: bool) -> None:
    for line in (data, b"a " + data, b"a UID " + data, b"a FETCH 1 " + data):
        try:
            c.parse(line, utf8=utf8)
        except ParseError:
            pass


def test_hot_commands_parse_in_microseconds() -> None:
    # A regression guard, not a benchmark: typical cost is 3-5 us; the bound leaves room for
    # a loaded CI machine while still catching an accidental per-character loop.
    import time

    lines = [
        b"A0042 UID FETCH 1:* (FLAGS)",
        b"A0043 UID FETCH 4012:4100 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To)])",
        b"A0044 UID STORE 4012 +FLAGS.SILENT (\\Seen)",
    ]
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        for line in lines:
            c.parse(line)
    per_command = (time.perf_counter() - start) / (rounds * len(lines))
    assert per_command < 100e-6


@pytest.mark.parametrize(
    ("text", "saved"),
    [
        (b"ALL", False),
        (b"$", True),
        (b"UID $", True),
        (b"NOT $", True),
        (b"OR SEEN (UNSEEN UID $)", True),
        (b"OR SEEN 1:3", False),
    ],
)
def test_search_uses_saved(text: bytes, saved: bool) -> None:
    from pillarbox.imap.searchkeys import uses_saved

    cmd = c.parse(b"s UID SEARCH RETURN (SAVE) " + text)
    assert isinstance(cmd, c.Search) and cmd.key is not None
    assert cmd.return_options == frozenset({"SAVE"})
    assert uses_saved(cmd.key) is saved

"""The language layer against independent clients (imapclient, imaplib) over a real socket.

A deliberately tiny responder reads commands exactly as the real session does
(CommandAssembler -> parse), records the typed commands, and answers with response.py.  The
clients' own formatting therefore exercises the parser, and the clients' own response parsers
check that what response.py encodes (strings, literals, modified UTF-7 names, dates, envelopes,
echoed section names) reads back right.  No mail store is involved: this is not a server test.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import io
import socket
import threading
from collections.abc import Iterator
from typing import TypeVar

import pytest
from imapclient import IMAPClient

from pillarbox.imap import commands as c
from pillarbox.imap import response as R
from pillarbox.imap.fetchatts import (
    Binary,
    BinarySize,
    BodySection,
    FetchAtt,
    Section,
    SectionText,
    Simple,
)
from pillarbox.imap.grammar import CommandAssembler, Limits, ParseError, is_idle_done
from pillarbox.imap.grammar import parse_sasl_response as sasl
from pillarbox.imap.searchkeys import (
    AndKey,
    DateField,
    DateKey,
    DateOp,
    FlagKey,
    HeaderKey,
    NotKey,
)

CAPS = [
    "IMAP4rev1",
    "LITERAL+",
    "ID",
    "ENABLE",
    "MOVE",
    "UIDPLUS",
    "IDLE",
    "NAMESPACE",
    "CONDSTORE",
]
INTERNALDATE = dt.datetime(2024, 3, 9, 8, 7, 6, tzinfo=dt.timezone(dt.timedelta(hours=2)))
HEADER = b'Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: "A \\"B\\"" <a@x.example>\r\n\r\n'
ENVELOPE = (
    "Sat, 9 Mar 2024 08:07:06 +0200",
    'He said "hi"\r\n',
    (('A "B"', None, "a", "x.example"),),
    (("A", None, "a", "x.example"),),
    None,
    ((None, None, "b", "y.example"),),
    None,
    None,
    None,
    "<id@x.example>",
)


class Responder:
    """Reads commands like the session does and answers with minimal, valid responses."""

    def __init__(self) -> None:
        self.commands: list[c.Command] = []
        self.errors: list[ParseError] = []
        self.sasl: list[bytes | None] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(10)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            reader = conn.makefile("rb")
            conn.sendall(R.untagged_status("OK", "ready", R.Code("CAPABILITY", *map(R.Atom, CAPS))))
            try:
                while self._one(reader, conn):
                    pass
            except (OSError, ValueError):
                return

    def _one(self, reader: io.BufferedReader, conn: socket.socket) -> bool:
        readline = reader.readline
        asm = CommandAssembler(Limits(max_literal=1000, max_message_literal=10000))
        line = readline(65537)
        if not line:
            return False
        try:
            spec = asm.add_line(line)
            while spec is not None:
                if spec.synchronizing:
                    conn.sendall(R.continuation())
                asm.add_literal(reader.read(spec.size))
                spec = asm.add_line(readline(65537))
            command = c.parse(asm.finish())
        except ParseError as e:
            self.errors.append(e)
            conn.sendall(R.parse_error(e))
            return True
        self.commands.append(command)
        if isinstance(command, c.Authenticate) and command.initial_response is None:
            conn.sendall(R.continuation_data(b""))
            self.sasl.append(sasl(readline(65537)))
        if isinstance(command, c.Idle):
            conn.sendall(R.continuation("idling"))
            conn.sendall(R.untagged(4, R.Atom("EXISTS")))
            if not is_idle_done(readline(100)):
                return False
        conn.sendall(b"".join(answer(command)) + R.tagged(command.tag, "OK", "done", code(command)))
        return not isinstance(command, c.Logout)


def code(command: c.Command) -> R.Code | None:
    if isinstance(command, c.Append):
        return R.Code("APPENDUID", 7, 42)
    if isinstance(command, c.Select):
        return R.Code("READ-WRITE")
    return None


def answer(command: c.Command) -> Iterator[bytes]:
    if isinstance(command, c.Capability):
        yield R.capability(CAPS)
    elif isinstance(command, c.List):
        yield R.list_response("LIST", ["\\HasNoChildren"], "/", "INBOX")
        yield R.list_response("LIST", ["\\HasNoChildren", "\\Drafts"], "/", "Entw\u00fcrfe")
        yield R.list_response("LIST", ["\\HasChildren"], "/", 'Odd "name" & more')
    elif isinstance(command, c.Select):
        yield R.untagged(R.Atom("FLAGS"), R.flag_list(["\\Seen", "\\Deleted", "$Junk"]))
        yield R.untagged(3, R.Atom("EXISTS"))
        yield R.untagged(0, R.Atom("RECENT"))
        yield R.untagged_status("OK", "UIDs valid", R.Code("UIDVALIDITY", 7))
        yield R.untagged_status("OK", "next", R.Code("UIDNEXT", 43))
    elif isinstance(command, c.Status):
        yield R.status_response(command.mailbox, [(item, 5) for item in command.items])
    elif isinstance(command, c.Search):
        yield R.search_response([1, 3])
    elif isinstance(command, c.Fetch):
        for seq in command.sequence.iter(3):
            yield R.fetch(seq, [(att, fetch_value(att, seq)) for att in command.attributes])
    elif isinstance(command, c.Id):
        yield R.untagged(R.Atom("ID"), ("name", "pillarbox"))
    elif isinstance(command, c.Namespace):
        yield R.untagged(R.Atom("NAMESPACE"), (("", "/"),), None, None)
    elif isinstance(command, c.Logout):
        yield R.untagged_status("BYE", "logging out")
    elif isinstance(command, c.Enable):
        yield R.untagged(R.Atom("ENABLED"), *map(R.Atom, command.capabilities))


def fetch_value(att: FetchAtt, seq: int) -> object:
    values: dict[FetchAtt, object] = {
        Simple.UID: seq + 100,
        Simple.FLAGS: R.flag_list(["\\Seen", "$Forwarded"]),
        Simple.RFC822_SIZE: 1234,
        Simple.INTERNALDATE: R.DateTime(INTERNALDATE),
        Simple.ENVELOPE: ENVELOPE,
        Simple.MODSEQ: (9,),
    }
    if isinstance(att, BodySection | Binary):
        return R.String(HEADER)
    if isinstance(att, BinarySize):
        return 10
    return values[att]


T = TypeVar("T", bound=c.Command)


def last(commands: list[c.Command], kind: type[T]) -> T:
    found = [cmd for cmd in commands if type(cmd) is kind]
    assert found, f"no {kind.__name__} command was received"
    return found[-1]


@pytest.fixture
def responder() -> Iterator[Responder]:
    r = Responder()
    yield r
    r.close()


def test_imapclient_session(responder: Responder) -> None:
    client = IMAPClient("127.0.0.1", port=responder.port, ssl=False, timeout=10)
    client.normalise_times = False
    client.id_({"name": "imapclient", "version": "4"})
    client.login("bob@x.example", 'pa"ss w\\rd')
    client.enable("CONDSTORE")
    folders = client.list_folders()
    assert [f[2] for f in folders] == ["INBOX", "Entw\u00fcrfe", 'Odd "name" & more']
    assert folders[1][0] == (b"\\HasNoChildren", b"\\Drafts")
    client.create_folder("Entw\u00fcrfe/\u65e5\u672c")
    info = client.select_folder("inbox")
    assert info[b"EXISTS"] == 3 and info[b"UIDVALIDITY"] == 7
    assert client.search(["UNSEEN", "SINCE", dt.date(2024, 1, 31)]) == [1, 3]
    client.search(["SUBJECT", "caf\u00e9", "NOT", "DELETED"], charset="UTF-8")
    data = client.fetch(
        [1, 2],
        [
            "FLAGS",
            "INTERNALDATE",
            "RFC822.SIZE",
            "ENVELOPE",
            "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
        ],
    )
    assert sorted(data) == [1, 2]
    msg = data[1]
    assert msg[b"FLAGS"] == (b"\\Seen", b"$Forwarded")
    assert msg[b"RFC822.SIZE"] == 1234
    assert msg[b"INTERNALDATE"] == INTERNALDATE
    assert msg[b"BODY[HEADER.FIELDS (SUBJECT FROM)]"] == HEADER
    envelope = msg[b"ENVELOPE"]
    assert envelope.subject == b'He said "hi"\r\n'
    assert envelope.from_[0].name == b'A "B"'
    assert envelope.to[0].mailbox == b"b" and envelope.to[0].host == b"y.example"
    client.add_flags([1, 2], [b"\\Seen", b"$Label1"], silent=True)
    client.remove_flags([2], [b"\\Flagged"])
    client.append("Sent", b"Subject: x\r\n\r\nbody\r\n", flags=[b"\\Seen"], msg_time=INTERNALDATE)
    client.copy([1], "Trash")
    client.move([2], "Archive")
    client.uid_expunge([101, 102])
    client.expunge()
    status = client.folder_status("Entw\u00fcrfe", ["MESSAGES", "UIDNEXT"])
    assert status == {b"MESSAGES": 5, b"UIDNEXT": 5}
    client.namespace()
    client.idle()
    assert client.idle_check(timeout=5) == [(4, b"EXISTS")]
    client.idle_done()
    client.logout()

    assert responder.errors == []
    cmds = responder.commands
    assert last(cmds, c.Login) == c.Login(last(cmds, c.Login).tag, "bob@x.example", 'pa"ss w\\rd')
    assert last(cmds, c.Id).params == (("name", "imapclient"), ("version", "4"))
    assert last(cmds, c.Create).mailbox == "Entw\u00fcrfe/\u65e5\u672c"
    assert last(cmds, c.Select).mailbox == "INBOX"
    assert last(cmds, c.Fetch).uid
    store = [cmd for cmd in cmds if isinstance(cmd, c.Store)]
    assert [(s.mode, s.silent, s.flags) for s in store] == [
        (c.StoreMode.ADD, True, ("\\Seen", "$Label1")),
        (c.StoreMode.REMOVE, False, ("\\Flagged",)),
    ]
    append = last(cmds, c.Append)
    assert append.mailbox == "Sent"
    assert append.messages == (
        c.AppendMessage(("\\Seen",), INTERNALDATE, b"Subject: x\r\n\r\nbody\r\n"),
    )
    searches = [cmd for cmd in cmds if isinstance(cmd, c.Search)]
    assert searches[0].key == AndKey(
        (FlagKey("\\Seen", False), DateKey(DateField.INTERNAL, DateOp.SINCE, dt.date(2024, 1, 31)))
    )
    assert searches[1].charset == "UTF-8"
    assert searches[1].key == AndKey(
        (HeaderKey("Subject", "caf\u00e9"), NotKey(FlagKey("\\Deleted")))
    )
    assert [type(cmd) for cmd in cmds if isinstance(cmd, c.Copy)] == [c.Copy, c.Move]
    expunges = [cmd for cmd in cmds if isinstance(cmd, c.Expunge)]
    assert [e.uids.resolve(200) if e.uids else None for e in expunges] == [[(101, 102)], None]
    assert last(cmds, c.Status).mailbox == "Entw\u00fcrfe"
    assert isinstance(last(cmds, c.Idle), c.Idle)


def test_imaplib_session(responder: Responder) -> None:
    client = imaplib.IMAP4("127.0.0.1", responder.port, timeout=10)
    client.authenticate("PLAIN", lambda _: b"\x00bob\x00s3cret")
    typ, _ = client.select('"Sent Items"')
    assert typ == "OK"
    typ, data = client.uid("SEARCH", "CHARSET", "UTF-8", "OR", "FROM", "bob", "LARGER", "100")
    assert data == [b"1 3"]
    typ, data = client.fetch("1:*", "(UID BODY.PEEK[1.MIME] BINARY.PEEK[1]<0.5> BINARY.SIZE[1])")
    assert typ == "OK"
    first = data[0]
    assert isinstance(first, tuple) and first[0].startswith(b"1 (UID 101 BODY[1.MIME] {")
    client.store("1", "+FLAGS.SILENT", r"(\Deleted)")
    client.logout()

    assert responder.errors == []
    auth = next(cmd for cmd in responder.commands if isinstance(cmd, c.Authenticate))
    assert isinstance(auth, c.Authenticate) and auth.mechanism == "PLAIN"
    assert responder.sasl == [b"\x00bob\x00s3cret"]
    fetch = next(cmd for cmd in responder.commands if isinstance(cmd, c.Fetch))
    assert fetch.attributes == (
        Simple.UID,
        BodySection(Section((1,), SectionText.MIME), peek=True),
        Binary((1,), (0, 5), peek=True),
        BinarySize((1,)),
    )


def test_bad_input_gets_tagged_bad_and_session_goes_on(responder: Responder) -> None:
    with socket.create_connection(("127.0.0.1", responder.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a1 FETCH 1 (FLAGS\r\n")
        assert f.readline().startswith(b"a1 BAD ")
        s.sendall(b"a2 LOGIN {5000}\r\n")  # over the limit: refused before the client sends it
        assert f.readline().startswith(b"a2 NO [TOOBIG] ")
        s.sendall(b"(( garbage\r\n")
        assert f.readline().startswith(b"* BAD ")
        s.sendall(b"a3 LOGIN {3}\r\n")
        assert f.readline() == b"+ go ahead\r\n"
        s.sendall(b"bob {2+}\r\npw\r\na4 NOOP\r\n")
        assert f.readline() == b"a3 OK done\r\n"
        assert f.readline() == b"a4 OK done\r\n"
        s.sendall(b"a5 LOGOUT\r\n")
        assert f.readline() == b"* BYE logging out\r\n"
        assert f.readline() == b"a5 OK done\r\n"
    assert [type(cmd) for cmd in responder.commands] == [c.Login, c.Noop, c.Logout]

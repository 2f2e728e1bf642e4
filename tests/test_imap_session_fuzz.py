"""The session loop in-process: random and hostile input never escapes as an exception,
every command gets exactly one tagged answer, and the session keeps serving afterwards."""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.auth.sasl import Credentials
from pillarbox.imap.grammar import STAR, SequenceSet
from pillarbox.imap.selected import SelectedMailbox
from pillarbox.imap.session import Session, SessionConfig
from pillarbox.mailstore.rows import FlagBatch
from pillarbox.store.mailbox import MailStore


class FakeWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


class FakeConn:
    def __init__(self, data: bytes):
        self.reader = asyncio.StreamReader(limit=1 << 16)
        self.reader.feed_data(data)
        self.reader.feed_eof()
        self.writer = FakeWriter()
        self.tls: object = object()  # pretend TLS is on so LOGIN is allowed
        self.tls_available = True
        self.closing = asyncio.Event()
        self.peer_ip = "127.0.0.1"
        self.id = "t"
        self.listener = "imaps"
        self.idle = False
        self.authenticated = False

    async def drain(self, seconds: float) -> None:
        return None

    async def read_line(self, seconds: float) -> bytes:
        async with asyncio.timeout(seconds):
            return await self.reader.readuntil(b"\n")

    async def read_exactly(self, size: int, seconds: float) -> bytes:
        async with asyncio.timeout(seconds):
            return await self.reader.readexactly(size)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def interrupt(self) -> None:
        return None

    def buffered_input(self) -> int:
        return 0  # every command is fed up front; COMPRESS is never sent by the fuzzer

    def mark_authenticated(self) -> None:
        self.authenticated = True


class Authenticator:
    async def authenticate(self, credentials: Credentials, client: str) -> str | None:
        return "alice@example.test" if credentials.password == "pw" else None


async def run_session(root: Path, script: bytes) -> bytes:
    store = MailStore(root)
    conn = FakeConn(script)
    session = Session(conn, SessionConfig("mail.example.test"), Authenticator(), store)
    await asyncio.wait_for(session.run(), 20)
    await store.close()
    return bytes(conn.writer.data)


PRELUDE = (
    b"p1 LOGIN alice@example.test pw\r\n"
    b"p2 APPEND INBOX {18+}\r\nSubject: x\r\n\r\nbody\r\n"
    b"p3 SELECT INBOX\r\n"
)
COMMANDS = [
    b"FETCH 1 (FLAGS BODY[1.2.MIME] BODY.PEEK[HEADER.FIELDS (A)]<0.1>)",
    b"UID FETCH 1:* (BODYSTRUCTURE ENVELOPE BINARY[1])",
    b"STORE 1 +FLAGS (\\Seen $x)",
    b"SEARCH OR (NOT SEEN) HEADER X y",
    b"UID SEARCH RETURN (SAVE) ALL",
    b"FETCH $ (UID)",
    b"COPY 1 Trash",
    b"MOVE 1:* Archive",
    b"EXPUNGE",
    b"NOOP",
    b'LIST "" *',
    b"STATUS INBOX (MESSAGES UNSEEN SIZE)",
    b"CREATE a/b",
    b"RENAME a z",
    b"DELETE z/b",
    b"UNSELECT",
    b"EXAMINE INBOX",
    b"CLOSE",
    b"SELECT INBOX",
    b"ENABLE IMAP4rev2 CONDSTORE UTF8=ACCEPT",
    b"ENABLE QRESYNC",
    b"SELECT INBOX (QRESYNC (1 1 1:9 (1:2 1,3)))",
    b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
]
junk = st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"{" not in b)
line = st.one_of(st.sampled_from(COMMANDS), junk, st.sampled_from(COMMANDS).flatmap(
    lambda c: st.integers(0, len(c)).map(lambda n: c[:n])))  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(line, max_size=12))
def test_random_commands_always_get_one_answer(tmp_path: Path, lines: list[bytes]) -> None:
    script = PRELUDE + b"".join(b"t%d " % i + ln + b"\r\n" for i, ln in enumerate(lines))
    script += b"zz NOOP\r\n"
    out = asyncio.run(run_session(tmp_path / "u", script))
    assert b"SERVERBUG" not in out, out
    assert b"\r\np3 OK [READ-WRITE]" in out, out[:500]
    text = out.split(b"\r\n")
    for i in range(len(lines)):
        tagged = [x for x in text if x.startswith(b"t%d " % i)]
        # A command cut before its tag's space parses as untagged junk: "* BAD".
        assert len(tagged) <= 1
    assert any(x.startswith(b"zz OK") for x in text), out[-500:]


def test_expunge_numbers_are_adjusted() -> None:
    info: Any = type(
        "Info", (), {"uidvalidity": 1, "uidnext": 11, "highestmodseq": 1,
                     "uids": array("I", [1, 2, 3, 5, 8, 9, 10]), "recent_from_uid": 11,
                     "keywords": ()},
    )()  # fmt: skip
    view = SelectedMailbox("INBOX", False, info)
    assert view.remove_uids([2, 5, 10]) == [2, 3, 5]  # each number counts earlier expunges
    assert list(view.uids) == [1, 3, 8, 9]
    assert view.uid_ranges(SequenceSet(((2, STAR),)), uid=False) == [(3, 9)]
    assert list(view.seqs_in([(3, 9)])) == [(2, 3), (3, 8), (4, 9)]


def test_fast_flags_rendering_matches_the_walk() -> None:
    from pillarbox.imap.fetch import _UID_FLAGS, _render_fast, _render_walk

    info: Any = type(
        "Info", (), {"uidvalidity": 1, "uidnext": 12, "highestmodseq": 1,
                     "uids": array("I", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), "recent_from_uid": 9,
                     "keywords": ()},
    )()  # fmt: skip
    view = SelectedMailbox("INBOX", False, info)

    def batch(uids: list[int]) -> FlagBatch:
        return FlagBatch(
            uids,
            bytes(u % 4 for u in uids),
            [7 for _ in uids],
            {3: ("kw", "x")} if 3 in uids else {},
            uids[-1],
        )

    aligned = batch(list(range(1, 11)))
    fast = _render_fast(_UID_FLAGS, aligned, view)
    assert fast == _render_walk(_UID_FLAGS, aligned, {3: "kw x"}, view, 0)
    assert b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Answered kw x))" in fast
    assert b"* 9 FETCH (UID 9 FLAGS (\\Recent \\Seen))" in fast
    # 5 expunged elsewhere (not announced) and 11 delivered (not announced): same count as
    # the view's 1..11, different set: the seqs must still come out right.
    out = _render_fast(_UID_FLAGS, batch([1, 2, 3, 4, 6, 7, 8, 9, 10, 11]), view).decode()
    assert "* 6 FETCH (UID 6 " in out and "UID 11" not in out and "* 5 FETCH" not in out

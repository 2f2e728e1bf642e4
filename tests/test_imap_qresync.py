"""QRESYNC (RFC 7162 §3.2) over the wire: VANISHED to other sessions, the offline resync of
Thunderbird and K-9, and expunge tombstones that survive a restart.

The RFC's own examples are transcripts in tests/data/dialogs/imap/qresync*.dialog; here
the changes come from independent clients (imapclient, imaplib) in other sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import imapclient
import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.imaphelp import ALICE, TIMEOUT, Raw, login, message, tls_context

FETCH_LINE = re.compile(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)\r\n")


def uid_set(text: bytes) -> set[int]:
    """An IMAP uid-set (``2,4:6``) as numbers, parsed here, not by the server's code."""
    out: set[int] = set()
    for item in text.decode().split(","):
        lo, _, hi = item.partition(":")
        a, b = int(lo), int(hi or lo)
        out.update(range(min(a, b), max(a, b) + 1))
    return out


def set_text(uids: set[int]) -> bytes:
    return ",".join(map(str, sorted(uids))).encode()


def code_value(lines: list[bytes], code: bytes) -> int:
    line = next(x for x in lines if b"[" + code + b" " in x)
    return int(line.split(b"[" + code + b" ")[1].split(b"]")[0])


def vanished(lines: list[bytes], *, earlier: bool) -> set[int]:
    head = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    out: set[int] = set()
    for line in lines:
        if line.startswith(head) and (earlier or not line.startswith(b"* VANISHED (")):
            out |= uid_set(line[len(head) :].strip())
    return out


def fetched(lines: list[bytes]) -> dict[int, tuple[int, set[str]]]:
    """UID -> (message number, flags) of the FETCH (UID FLAGS MODSEQ) lines; \\Recent, which
    belongs to a session rather than a message, is left out."""
    out = {}
    for line in lines:
        m = FETCH_LINE.fullmatch(line)
        if m:
            flags = set(m.group(3).decode().split()) - {"\\Recent"}
            out[int(m.group(2))] = (int(m.group(1)), flags)
    return out


@contextmanager
def independent(server: pbserver.RunningServer) -> Iterator[imapclient.IMAPClient]:
    client = imapclient.IMAPClient(
        "127.0.0.1", port=server.port("imaps"), ssl_context=tls_context(server.settings),
        timeout=TIMEOUT,
    )  # fmt: skip
    client.login(ALICE, pbserver.PASSWORD)
    try:
        yield client
    finally:
        client.logout()


def qresync_session(server: pbserver.RunningServer) -> Raw:
    raw = Raw(server)
    raw.login()
    assert raw.cmd(b"e", b"ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    return raw


def fill(server: pbserver.RunningServer, count: int) -> None:
    with independent(server) as client:
        for i in range(count):
            client.append("INBOX", message(f"m{i}"))


def test_another_sessions_expunge_arrives_as_vanished(server: pbserver.RunningServer) -> None:
    """RFC 7162 §3.2.10: once QRESYNC is on, expunges elsewhere come as VANISHED uid-set (at
    NOOP and during IDLE); a session without QRESYNC still gets EXPUNGE with numbers."""
    fill(server, 6)
    a = qresync_session(server)
    try:
        a.cmd(b"s", b"SELECT INBOX")
        with login(server) as plain, independent(server) as b:
            plain.select("INBOX")
            b.select_folder("INBOX")
            b.delete_messages([2, 3, 5])
            b.expunge([2, 3])  # UID EXPUNGE (RFC 4315): 5 stays, flagged \Deleted
            lines = a.cmd(b"n", b"NOOP")
            assert b"* VANISHED 2:3\r\n" in lines, lines
            assert not any(b"EXPUNGE" in x for x in lines)
            plain.noop()
            assert plain.response("EXPUNGE")[1] == [b"2", b"2"]  # numbers, each after the last
            a.send(b"i IDLE\r\n")
            assert a.line().startswith(b"+ ")
            b.expunge()
            assert a.line() == b"* VANISHED 5\r\n"
            a.send(b"DONE\r\n")
            assert a.until(b"i")[-1].startswith(b"i OK")
            # The view lost exactly those three: what's left is numbered 1..3 by UID.
            lines = a.cmd(b"f", b"FETCH 1:* (UID)")
            numbered = re.findall(rb"\* (\d+) FETCH \(UID (\d+)", b"".join(lines))
            assert numbered == [(b"1", b"1"), (b"2", b"4"), (b"3", b"6")]
    finally:
        a.close()


def test_vanished_is_held_back_during_fetch_by_number(server: pbserver.RunningServer) -> None:
    """RFC 7162 §3.2.10 keeps RFC 3501 §7.4.1's rule: no VANISHED during FETCH, STORE or
    SEARCH by message number (they would renumber under the client), but at the next
    command that allows it."""
    fill(server, 3)
    a = qresync_session(server)
    try:
        a.cmd(b"s", b"SELECT INBOX")
        with independent(server) as b:
            b.select_folder("INBOX")
            b.delete_messages([1])
            b.expunge()
        lines = a.cmd(b"f", b"FETCH 1:* (UID)")
        assert not any(b"VANISHED" in x for x in lines)
        # Numbers as the client knows them (the expunged one is skipped, RFC 2180 §4.1.2).
        assert re.findall(rb"\* (\d+) FETCH \(UID (\d+)", b"".join(lines)) == [
            (b"2", b"2"),
            (b"3", b"3"),
        ]
        assert b"* VANISHED 1\r\n" in a.cmd(b"n", b"NOOP")
    finally:
        a.close()


def _cache(raw: Raw) -> tuple[int, int, dict[int, set[str]]]:
    """What a client keeps of INBOX: UIDVALIDITY, HIGHESTMODSEQ, UID -> flags."""
    lines = raw.cmd(b"s", b"SELECT INBOX")
    uidvalidity, modseq = code_value(lines, b"UIDVALIDITY"), code_value(lines, b"HIGHESTMODSEQ")
    flags = {uid: f for uid, (_, f) in fetched(raw.cmd(b"f", b"UID FETCH 1:* (FLAGS)")).items()}
    return uidvalidity, modseq, flags


def _offline_changes(server: pbserver.RunningServer) -> tuple[set[int], set[int], set[int]]:
    """Another client's work while ours was away: (changed UIDs, gone UIDs, new UIDs)."""
    with independent(server) as b:
        b.select_folder("INBOX")
        b.add_flags([2, 7], [imapclient.SEEN, "$Label1"])
        b.add_flags([4], [imapclient.FLAGGED])
        b.remove_flags([4], [imapclient.FLAGGED])  # changed back: still a change (new modseq)
        b.delete_messages([3, 5, 6])
        b.expunge()
        b.move([9], "Archive")
        new = set()
        for i in range(2):
            new.add(b.append("INBOX", message(f"new{i}")))  # APPENDUID response text
    return {2, 4, 7}, {3, 5, 6, 9}, {int(re.findall(rb"APPENDUID \d+ (\d+)", n)[0]) for n in new}


def _truth(server: pbserver.RunningServer) -> dict[int, tuple[int, set[str]]]:
    """UID -> (message number, flags) as an independent client sees INBOX now."""
    with independent(server) as b:
        b.select_folder("INBOX", readonly=True)
        uids = sorted(b.search("ALL"))
        flags = b.get_flags(uids)
        return {
            uid: (n, {f.decode() for f in flags[uid]} - {"\\Recent"})
            for n, uid in enumerate(uids, 1)
        }


def test_reconnect_and_resync_like_thunderbird_and_k9(server: pbserver.RunningServer) -> None:
    """A client comes back (RFC 7162 §3.2.5.1): SELECT with its UIDVALIDITY and modseq gives
    exactly the UIDs that vanished and the flags that changed since, nothing else."""
    fill(server, 10)
    first = qresync_session(server)
    try:
        uidvalidity, modseq, cache = _cache(first)
    finally:
        first.close()
    assert sorted(cache) == list(range(1, 11))
    changed, gone, new = _offline_changes(server)
    truth = _truth(server)
    assert len(new) == 2 and set(truth) == set(cache) - gone | new

    back = qresync_session(server)
    try:
        # Thunderbird's form: no known UIDs, so every change since, new messages included.
        lines = back.cmd(b"q", b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, modseq))
        assert lines[-1].startswith(b"q OK [READ-WRITE]")
        assert code_value(lines, b"HIGHESTMODSEQ") > modseq
        assert vanished(lines, earlier=True) == gone
        got = fetched(lines)
        assert set(got) == changed | new
        assert got == {uid: truth[uid] for uid in changed | new}
        # K-9's form: the UIDs it has; changes only among those (§3.2.5.1 known-uids).
        known = set_text(set(cache))
        lines = back.cmd(b"k", b"SELECT INBOX (QRESYNC (%d %d %s))" % (uidvalidity, modseq, known))
        assert lines[0].startswith(b"* OK [CLOSED]")  # §3.2.11
        assert vanished(lines, earlier=True) == gone
        assert fetched(lines) == {uid: truth[uid] for uid in changed}
        # Caught up: the new HIGHESTMODSEQ brings nothing more.
        now = code_value(lines, b"HIGHESTMODSEQ")
        lines = back.cmd(b"u", b"SELECT INBOX (QRESYNC (%d %d %s))" % (uidvalidity, now, known))
        assert not vanished(lines, earlier=True) and not fetched(lines)
    finally:
        back.close()


def _run(settings: Settings) -> pbserver.RunningServer:
    return pbserver.RunningServer(settings)


@pytest.mark.on_disk  # a restart: memory keeps nothing
def test_tombstones_survive_a_restart(settings: Settings) -> None:
    """Expunged UIDs and their modseqs are in the index on disk, not in the process."""
    pbserver.add_user(settings, ALICE)
    with _run(settings) as server:
        fill(server, 5)
        raw = qresync_session(server)
        try:
            uidvalidity, modseq, _ = _cache(raw)
            raw.cmd(b"d", b"UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
            lines = raw.cmd(b"x", b"EXPUNGE")
            assert b"* VANISHED 2,4\r\n" in lines
            after = code_value(lines, b"HIGHESTMODSEQ")
        finally:
            raw.close()
    with _run(settings) as server:
        raw = qresync_session(server)
        try:
            lines = raw.cmd(b"q", b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, modseq))
            assert code_value(lines, b"HIGHESTMODSEQ") == after
            assert vanished(lines, earlier=True) == {2, 4}
            assert not fetched(lines)  # an expunge changes no surviving message's flags
            lines = raw.cmd(b"v", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)
            assert vanished(lines, earlier=True) == {2, 4}
        finally:
            raw.close()


@pytest.mark.on_disk  # rebuilds the SQLite index
def test_a_rebuilt_index_still_resyncs_the_client(settings: Settings) -> None:
    """The index is lost (deleted, restored from an old backup) and rebuilt from the Maildir:
    UIDVALIDITY and UIDs come back from dovecot-uidlist but modseqs start again low. A
    client's modseq from before is then beyond the server's, so it is told everything."""
    from pillarbox.store.index import INDEX_FILE
    from pillarbox.store.maildir import user_maildir

    pbserver.add_user(settings, ALICE)
    with _run(settings) as server:
        fill(server, 5)
        for _ in range(3):  # flag changes: the client's modseq climbs past a rebuild's
            with independent(server) as b:
                b.select_folder("INBOX")
                b.add_flags([1, 2, 3, 4, 5], ["$x"])
                b.remove_flags([1, 2, 3, 4, 5], ["$x"])
        raw = qresync_session(server)
        try:
            uidvalidity, modseq, cache = _cache(raw)
        finally:
            raw.close()
        with independent(server) as b:
            b.select_folder("INBOX")
            b.add_flags([2], [imapclient.FLAGGED])
            b.delete_messages([3])
            b.expunge()
    root = user_maildir(settings.mail_dir, ALICE)
    for suffix in ("", "-wal", "-shm"):
        (root / (INDEX_FILE + suffix)).unlink(missing_ok=True)
    with _run(settings) as server:
        raw = qresync_session(server)
        try:
            known = set_text(set(cache))
            lines = raw.cmd(
                b"q", b"SELECT INBOX (QRESYNC (%d %d %s))" % (uidvalidity, modseq, known)
            )
            assert code_value(lines, b"UIDVALIDITY") == uidvalidity
            assert code_value(lines, b"HIGHESTMODSEQ") < modseq
            assert vanished(lines, earlier=True) == {3}
            got = fetched(lines)
            assert set(got) == {1, 2, 4, 5}
            assert got[2][1] == {"\\Flagged"}
        finally:
            raw.close()

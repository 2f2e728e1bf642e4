"""A keyword is announced in FLAGS / PERMANENTFLAGS before any FETCH uses it (RFC 9051
§7.3.5, RFC 3501 §7.2.6), in every session with the mailbox selected: the one that made the
keyword and the others, whether it came by STORE or by APPEND.

The checker reads the wire the way imaptest does ("Keyword used without being in FLAGS").
"""

from __future__ import annotations

import re

from tests import pbserver
from tests.imaphelp import Raw, message

_FLAGS_RE = re.compile(rb"^\* FLAGS \(([^)]*)\)")
_PERMANENT_RE = re.compile(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]")
_FETCH_FLAGS_RE = re.compile(rb"^\* \d+ FETCH \(.*?FLAGS \(([^)]*)\)")


class Announced:
    """What one session has been told: keywords of FLAGS and of PERMANENTFLAGS."""

    def __init__(self) -> None:
        self.flags: set[bytes] = set()
        self.permanent: set[bytes] = set()

    def read(self, lines: list[bytes]) -> list[bytes]:
        """Check ``lines`` in order; returns the keywords FETCH responses used."""
        used = []
        for line in lines:
            if m := _FLAGS_RE.match(line):
                self.flags = set(m.group(1).split())
            elif m := _PERMANENT_RE.match(line):
                self.permanent = set(m.group(1).split())
            elif m := _FETCH_FLAGS_RE.match(line):
                for flag in m.group(1).split():
                    if flag.startswith(b"\\"):
                        continue
                    assert flag in self.flags, (flag, "used before FLAGS", lines)
                    assert flag in self.permanent, (flag, "used before PERMANENTFLAGS", lines)
                    used.append(flag)
        return used


def _append(raw: Raw, tag: bytes, msg: bytes, flags: bytes = b"") -> list[bytes]:
    head = b"%s APPEND INBOX %s{%d+}\r\n" % (tag, flags + b" " if flags else b"", len(msg))
    raw.send(head + msg + b"\r\n")
    lines = raw.until(tag)
    assert lines[-1].startswith(tag + b" OK"), lines
    return lines


def _select(raw: Raw, seen: Announced, *, login: bool = True) -> None:
    if login:
        raw.login()
    lines = raw.cmd(b"s", b"SELECT INBOX")
    assert lines[-1].startswith(b"s OK"), lines
    seen.read(lines)


def test_store_announces_a_new_keyword_in_both_sessions(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    seen_a, seen_b = Announced(), Announced()
    try:
        a.login()
        _append(a, b"ap", message("one"))
        _append(a, b"aq", message("two"))
        _select(a, seen_a, login=False)
        _select(b, seen_b)
        assert b"$Work" not in seen_a.flags

        assert seen_a.read(a.cmd(b"t", b"STORE 1 +FLAGS ($Work)")) == [b"$Work"]
        # The other session hears of it at its next command, FLAGS before the FETCH.
        assert seen_b.read(b.cmd(b"n", b"NOOP")) == [b"$Work"]

        # b has not synchronised yet when it fetches: the FETCH itself must announce.
        seen_a.read(a.cmd(b"t2", b"STORE 2 +FLAGS (Project-X)"))
        used = seen_b.read(b.cmd(b"f", b"FETCH 1:* (FLAGS)"))
        assert b"Project-X" in used
        # The general FETCH path (with message data) checks too.
        seen_a.read(a.cmd(b"t3", b"STORE 1 +FLAGS (later)"))
        used = seen_b.read(b.cmd(b"f2", b"FETCH 1:* (FLAGS ENVELOPE)"))
        assert b"later" in used
        # A keyword once announced is not announced again.
        lines = a.cmd(b"t4", b"STORE 2 +FLAGS ($Work)")
        assert not any(line.startswith(b"* FLAGS") for line in lines), lines
        seen_a.read(lines)
        # STORE FLAGS (replace) and UID STORE take the same path.
        seen_a.read(a.cmd(b"t5", b"UID STORE 1 FLAGS (\\Seen replaced)"))
        assert b"replaced" in seen_a.flags and b"replaced" in seen_a.permanent
        seen_b.read(b.cmd(b"n2", b"NOOP"))
        assert b"replaced" in seen_b.flags
    finally:
        a.close()
        b.close()


def test_append_with_keyword_is_announced_before_fetch(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    seen_a, seen_b = Announced(), Announced()
    try:
        a.login()
        _append(a, b"ap", message("one"))
        _select(a, seen_a, login=False)
        _select(b, seen_b)
        seen_a.read(_append(a, b"a2", message("two"), b"(NonJunk $Label1)"))
        assert seen_a.read(a.cmd(b"f", b"FETCH 2 (FLAGS)")) == [b"NonJunk", b"$Label1"]
        seen_b.read(b.cmd(b"n", b"NOOP"))  # EXISTS, no FETCH yet
        assert sorted(seen_b.read(b.cmd(b"f", b"UID FETCH 1:* (FLAGS)"))) == [
            b"$Label1",
            b"NonJunk",
        ]
        # A fresh SELECT lists the mailbox's keywords at once.
        c = Raw(server)
        try:
            seen_c = Announced()
            _select(c, seen_c)
            assert {b"NonJunk", b"$Label1"} <= seen_c.flags
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_read_only_session_gets_empty_permanentflags(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    try:
        a.login()
        _append(a, b"ap", message("one"))
        a.cmd(b"s", b"SELECT INBOX")
        b.login()
        b.cmd(b"e", b"EXAMINE INBOX")
        a.cmd(b"t", b"STORE 1 +FLAGS (seen-by-a)")
        lines = b.cmd(b"f", b"FETCH 1 (FLAGS)")
        flags = next(line for line in lines if line.startswith(b"* FLAGS"))
        assert b"seen-by-a" in flags
        permanent = next(line for line in lines if b"PERMANENTFLAGS" in line)
        assert permanent.startswith(b"* OK [PERMANENTFLAGS ()]"), permanent
        fetch = next(line for line in lines if b"FETCH" in line)
        assert lines.index(flags) < lines.index(fetch)
    finally:
        a.close()
        b.close()


def test_silent_store_still_announces_a_new_keyword(server: pbserver.RunningServer) -> None:
    """RFC 9051 §7.3.5: ``.SILENT`` drops the FETCH responses, not the FLAGS announcement."""
    a = Raw(server)
    seen = Announced()
    try:
        a.login()
        _append(a, b"ap", message("one"))
        _append(a, b"aq", message("two"))
        _select(a, seen, login=False)
        lines = a.cmd(b"t", b"STORE 1:2 +FLAGS.SILENT ($Quiet)")
        assert lines[-1].startswith(b"t OK"), lines
        assert not any(b" FETCH " in line for line in lines), lines
        seen.read(lines)
        assert b"$Quiet" in seen.flags and b"$Quiet" in seen.permanent
        flags_at = next(i for i, line in enumerate(lines) if line.startswith(b"* FLAGS"))
        assert flags_at < len(lines) - 1
        assert seen.read(a.cmd(b"f", b"FETCH 1:2 (FLAGS)")) == [b"$Quiet", b"$Quiet"]
        # Known now: a second silent STORE of it says nothing at all.
        lines = a.cmd(b"u", b"UID STORE 1:* +FLAGS.SILENT ($Quiet \\Flagged)")
        assert lines == [lines[-1]] and lines[-1].startswith(b"u OK"), lines
    finally:
        a.close()

"""The ManageSieve parser and response formatting, pure: RFC 5804 §4's grammar, its bounds,
and the commands of RFC 5804 §2 as clients (sievelib, Roundcube, Thunderbird) send them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.managesieve import parser as p
from pillarbox.managesieve import responses as r


def command(*lines: bytes) -> p.Command:
    """Parse a command given as its lines, with literal octets as their own items."""
    tokens: list[p.Token] = []
    items = list(lines)
    while items:
        scanned = p.scan_line(items.pop(0))
        tokens += scanned.tokens
        if scanned.literal is not None:
            data = items.pop(0)
            assert len(data) == scanned.literal
            tokens.append(data)
    return p.parse(tokens)


def test_quoted_strings_and_escapes() -> None:
    scanned = p.scan_line(b'GETSCRIPT "a \\"b\\" \\\\c"')
    assert scanned.tokens == [p.Atom("GETSCRIPT"), b'a "b" \\c']
    assert scanned.literal is None


def test_non_synchronizing_and_synchronizing_literals() -> None:
    plus = p.scan_line(b'PUTSCRIPT "vacation" {31+}')
    assert plus.literal == 31 and not plus.synchronizing
    sync = p.scan_line(b'PUTSCRIPT "vacation" {31}')
    assert sync.literal == 31 and sync.synchronizing
    script = b'require "fileinto";\r\nkeep;\r\n'
    assert command(b'PUTSCRIPT "x" {%d+}' % len(script), script, b"") == p.PutScript(
        "x", script.decode()
    )


def test_literal_then_more_arguments() -> None:
    # RENAMESCRIPT with the first name as a literal: the rest of the command follows it.
    assert command(b"RENAMESCRIPT {3+}", b"old", b' "new"') == p.RenameScript("old", "new")


def test_commands_are_case_insensitive_and_spaces_tolerated() -> None:
    assert command(b'havespace  "s"  42') == p.HaveSpace("s", 42)
    assert command(b"Listscripts") == p.ListScripts()
    assert command(b"noop") == p.Noop(None)
    assert command(b'NOOP "tag1"') == p.Noop("tag1")


def test_authenticate_forms() -> None:
    assert command(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldA=="') == p.Authenticate(
        "PLAIN", b"AGFsaWNlAHNlY3JldA=="
    )
    assert command(b"AUTHENTICATE plain") == p.Authenticate("PLAIN", None)
    assert command(b'AUTHENTICATE "PLAIN" {8+}', b"AGFsaWNl", b"") == p.Authenticate(
        "PLAIN", b"AGFsaWNl"
    )


def test_setactive_empty_deactivates_but_other_names_may_not_be_empty() -> None:
    assert command(b'SETACTIVE ""') == p.SetActive("")
    with pytest.raises(p.ParseError, match="empty"):
        command(b'GETSCRIPT ""')
    with pytest.raises(p.ParseError, match="empty"):
        command(b'PUTSCRIPT "" {0+}', b"", b"")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "starts with its name"),
        (b'"PUTSCRIPT"', "starts with its name"),
        (b"FROBNICATE", "unknown command"),
        (b'GETSCRIPT "unterminated', "unterminated"),
        (b'GETSCRIPT "bad \\n escape"', "escaped"),
        (b'GETSCRIPT "a"b', "separated by spaces"),
        (b'PUTSCRIPT "x" {12+} trailing', "end of a line"),
        (b"PUTSCRIPT {x+}", "end of a line"),
        (b'HAVESPACE "x" 99999999999', "invalid number"),
        (b'HAVESPACE "x" 4294967296', "out of range"),
        (b'HAVESPACE "x" -1', "invalid number"),
        (b"LISTSCRIPTS extra", "syntax"),
        (b'RENAMESCRIPT "only-one"', "syntax"),
        (b'GETSCRIPT "\xff\xfe"', "not UTF-8"),
        (b'GETSCRIPT "tab\there"', "control characters"),
        (b'GETSCRIPT "line\xe2\x80\xa8sep"', "control characters"),
        (b"CAPABILITY (x)", "invalid character"),
    ],
)
def test_malformed(line: bytes, message: str) -> None:
    with pytest.raises(p.ParseError, match=message):
        p.parse(p.scan_line(line).tokens)


def test_quoted_string_bound() -> None:
    ok = b'NOOP "' + b"a" * p.MAX_QUOTED + b'"'
    assert p.parse(p.scan_line(ok).tokens) == p.Noop("a" * p.MAX_QUOTED)
    with pytest.raises(p.ParseError, match="literal"):
        p.scan_line(b'GETSCRIPT "' + b"a" * (p.MAX_QUOTED + 1) + b'"')


def test_name_bound() -> None:
    with pytest.raises(p.ParseError, match="over"):
        command(b"GETSCRIPT {%d+}" % (p.MAX_NAME + 1), b"n" * (p.MAX_NAME + 1), b"")


def test_script_must_be_utf8() -> None:
    with pytest.raises(p.ParseError, match="UTF-8"):
        command(b"CHECKSCRIPT {2+}", b"\xff\xfe", b"")


def test_trailing_literal_found_after_a_malformed_start() -> None:
    assert p.trailing_literal(b'PUTSCRIPT "a\\x" {17+}') == (17, False)
    assert p.trailing_literal(b"PUTSCRIPT x {5}") == (5, True)
    assert p.trailing_literal(b"NOOP") == (None, False)


def test_sasl_response() -> None:
    assert p.sasl_response(p.scan_line(b'"AGFsaWNl"').tokens) == b"AGFsaWNl"
    assert p.sasl_response(p.scan_line(b"AGFsaWNl").tokens) == b"AGFsaWNl"
    assert p.sasl_response(p.scan_line(b'"*"').tokens) == b"*"
    with pytest.raises(p.ParseError):
        p.sasl_response(p.scan_line(b'"a" "b"').tokens)


def test_responses() -> None:
    assert r.response("OK") == b"OK\r\n"
    assert r.response("NO", "NONEXISTENT", 'no "x"') == b'NO (NONEXISTENT) "no \\"x\\""\r\n'
    assert r.response("BYE", "", "bye") == b'BYE "bye"\r\n'
    assert r.capability("VERSION", "1.0") == b'"VERSION" "1.0"\r\n'
    assert r.capability("STARTTLS") == b'"STARTTLS"\r\n'
    # A text with a line break, or too long to quote, goes out as a literal.
    assert r.response("NO", "", "line 1\r\nline 2") == b"NO {14}\r\nline 1\r\nline 2\r\n"
    assert r.string("x" * 2000).startswith(b"{2000}\r\n")


@given(st.text(max_size=300))
def test_strings_round_trip(text: str) -> None:
    """What we send as a string, our parser (RFC 5804's grammar) reads back unchanged."""
    wire = r.string(text)
    if wire.startswith(b"{"):
        header, _, data = wire.partition(b"\r\n")
        scanned = p.scan_line(header)
        assert scanned.literal == len(data)
        assert data.decode("utf-8") == text
    else:
        assert p.scan_line(wire).tokens == [text.encode("utf-8")]

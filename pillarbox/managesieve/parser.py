"""ManageSieve (RFC 5804 §4) client commands: tokens of a line, then a typed command; pure.

A command is one line, except that a string may be a literal: ``{n+}`` (non-synchronizing,
what RFC 5804 §4 ``literal-c2s`` says clients send) or ``{n}`` (a synchronizing literal
as IMAP's, which some older clients still send; ManageSieve has no continuation request, so
the octets follow at once either way). A literal ends its line; its octets are followed by
the rest of the command, up to CRLF. The session therefore works in rounds: it reads a
line, :func:`scan_line` gives the tokens and the size of a literal that follows it; it
reads that many octets, appends them as a string token, reads the next line and scans
again, until a line ends without a literal. :func:`parse` then turns the tokens into a
command.

Bounds, each checked before anything is allocated for it: a quoted string is at most
1024 octets (RFC 5804 §4 ``quoted``: longer strings are sent as literals), a number fits 32 bits
(``number`` is 0..4294967295), a literal's size is reported before it is read (the session
decides whether it fits), and a command has at most :data:`MAX_TOKENS` tokens. Deviations,
each deliberate: runs of spaces between tokens are tolerated, and an atom is accepted
where a string is expected (``AUTHENTICATE PLAIN``, a bare base64 SASL response).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# RFC 5804 §4: quoted = DQUOTE *1024QUOTED-CHAR DQUOTE, "limited to 1024 octets".
MAX_QUOTED: Final = 1024
MAX_NUMBER: Final = 4294967295
# The longest command is RENAMESCRIPT or HAVESPACE: a name and two more arguments.
MAX_TOKENS: Final = 4
# Script names (RFC 5804 §1.6): we bound them; 512 octets is far beyond any real name.
MAX_NAME: Final = 512

_LITERAL: Final = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
# ATOM-CHAR: any CHAR except atom-specials: "(" ")" "{" SP CTL "%" "*" DQUOTE "\".
_ATOM: Final = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\]+')
_NUMBER: Final = re.compile(r"[0-9]{1,10}")
# RFC 5804 §1.6: a script name has no control characters (U+0000-U+001F, U+007F-U+009F)
# and neither LINE SEPARATOR nor PARAGRAPH SEPARATOR.
_BAD_NAME_CHAR: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ParseError(Exception):
    """The command is malformed: answer ``NO "text"``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare word: a command name, a number, or (liberally) a string sent unquoted."""

    value: str


# A string (quoted or literal) is its raw octets; everything else is an Atom.
Token = Atom | bytes


@dataclass(frozen=True, slots=True)
class ScannedLine:
    tokens: list[Token]
    # Octets of a literal announced at the end of the line (None: the command ends here).
    literal: int | None = None
    synchronizing: bool = False  # "{n}" rather than "{n+}"


def scan_line(line: bytes) -> ScannedLine:
    """The tokens of ``line`` (without its CRLF) and the literal it announces, if any."""
    tokens: list[Token] = []
    pos, end = 0, len(line)
    while pos < end:
        char = line[pos : pos + 1]
        if char == b" ":
            pos += 1
            continue
        if char == b'"':
            text, pos = _quoted(line, pos + 1)
            tokens.append(text)
        elif char == b"{":
            literal = _LITERAL.match(line, pos)
            if literal is None:
                raise ParseError("a literal is {size+} at the end of a line")
            size = int(literal.group(1))
            if size > MAX_NUMBER:
                raise ParseError("literal size out of range")
            return ScannedLine(tokens, size, synchronizing=not literal.group(2))
        else:
            atom = _ATOM.match(line, pos)
            if atom is None:
                raise ParseError("invalid character in command")
            tokens.append(Atom(atom.group().decode("ascii", "replace")))
            pos = atom.end()
        if pos < end and line[pos : pos + 1] != b" ":
            raise ParseError("arguments are separated by spaces")
    return ScannedLine(tokens)


def trailing_literal(line: bytes) -> tuple[int | None, bool]:
    """The literal a line announces at its end, looked for without tokenising the line:
    after a malformed start the literal's octets still follow and must be skipped.
    (size or None, synchronizing)."""
    literal = _LITERAL.search(line)
    if literal is None:
        return None, False
    return int(literal.group(1)), not literal.group(2)


def _quoted(line: bytes, pos: int) -> tuple[bytes, int]:
    """The quoted string starting after its opening quote; and the position after it."""
    out = bytearray()
    end = len(line)
    while pos < end:
        char = line[pos]
        if char == 0x22:  # the closing DQUOTE
            return bytes(out), pos + 1
        if char == 0x5C:  # "\" QUOTED-SPECIALS: only DQUOTE and "\" may be escaped
            if pos + 1 >= end or line[pos + 1] not in (0x22, 0x5C):
                raise ParseError('only \\" and \\\\ may be escaped in a quoted string')
            pos += 1
            char = line[pos]
        elif char == 0:
            raise ParseError("NUL in a quoted string")
        out.append(char)
        if len(out) > MAX_QUOTED:
            raise ParseError(f"quoted string over {MAX_QUOTED} octets: send a literal")
        pos += 1
    raise ParseError("unterminated quoted string")


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command; ``name`` is the keyword as RFC 5804 spells it."""

    @property
    def name(self) -> str:
        return type(self).__name__.upper()


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str
    initial_response: bytes | None  # base64 text, as sent


@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class HaveSpace(Command):
    script: str
    size: int


@dataclass(frozen=True, slots=True)
class PutScript(Command):
    script: str
    content: str


@dataclass(frozen=True, slots=True)
class ListScripts(Command):
    pass


@dataclass(frozen=True, slots=True)
class SetActive(Command):
    script: str  # "" deactivates (RFC 5804 §2.8)


@dataclass(frozen=True, slots=True)
class GetScript(Command):
    script: str


@dataclass(frozen=True, slots=True)
class DeleteScript(Command):
    script: str


@dataclass(frozen=True, slots=True)
class RenameScript(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CheckScript(Command):
    content: str


@dataclass(frozen=True, slots=True)
class Noop(Command):
    tag: str | None  # echoed back in the TAG response code (RFC 5804 §2.11)


@dataclass(frozen=True, slots=True)
class Unauthenticate(Command):
    pass


_Parser = Callable[[list[Token]], Command]


def parse(tokens: list[Token]) -> Command:
    """The command the tokens of one whole command (literals included) make."""
    if not tokens or not isinstance(tokens[0], Atom):
        raise ParseError("a command starts with its name")
    parser = _PARSERS.get(tokens[0].value.upper())
    if parser is None:
        raise ParseError("unknown command")
    return parser(tokens[1:])


def sasl_response(tokens: list[Token]) -> bytes:
    """A client's SASL response line (RFC 5804 §2.1): one string of base64, or "*"."""
    if len(tokens) != 1:
        raise ParseError("a SASL response is one string")
    return _octets(tokens[0])


def _octets(token: Token) -> bytes:
    return token.value.encode("ascii") if isinstance(token, Atom) else token


def _text(token: Token, what: str) -> str:
    try:
        return _octets(token).decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} is not UTF-8") from None


def _name(token: Token, *, empty: bool = False) -> str:
    """A script name (RFC 5804 §1.6); "" only where ``empty`` (SETACTIVE)."""
    name = _text(token, "script name")
    if not name and not empty:
        raise ParseError("the script name is empty")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise ParseError(f"script name over {MAX_NAME} octets")
    if _BAD_NAME_CHAR.search(name):
        raise ParseError("control characters in the script name")
    return name


def _number(token: Token) -> int:
    if not isinstance(token, Atom) or not _NUMBER.fullmatch(token.value):
        raise ParseError("invalid number")
    value = int(token.value)
    if value > MAX_NUMBER:
        raise ParseError("number out of range")
    return value


def _arity(args: list[Token], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise ParseError(f"syntax: {usage}")


def _no_args(cls: type[Command], usage: str) -> _Parser:
    def parse_it(args: list[Token]) -> Command:
        _arity(args, 0, 0, usage)
        return cls()

    return parse_it


def _authenticate(args: list[Token]) -> Command:
    _arity(args, 1, 2, 'AUTHENTICATE "mechanism" ["initial response"]')
    mechanism = _text(args[0], "mechanism").upper()
    initial = _octets(args[1]) if len(args) == 2 else None
    return Authenticate(mechanism, initial)


def _havespace(args: list[Token]) -> Command:
    _arity(args, 2, 2, 'HAVESPACE "name" size')
    return HaveSpace(_name(args[0]), _number(args[1]))


def _putscript(args: list[Token]) -> Command:
    _arity(args, 2, 2, 'PUTSCRIPT "name" {size+} script')
    return PutScript(_name(args[0]), _text(args[1], "the script"))


def _one_name(cls: type[GetScript] | type[DeleteScript], usage: str) -> _Parser:
    def parse_it(args: list[Token]) -> Command:
        _arity(args, 1, 1, usage)
        return cls(_name(args[0]))

    return parse_it


def _setactive(args: list[Token]) -> Command:
    _arity(args, 1, 1, 'SETACTIVE "name"')
    return SetActive(_name(args[0], empty=True))


def _renamescript(args: list[Token]) -> Command:
    _arity(args, 2, 2, 'RENAMESCRIPT "old" "new"')
    return RenameScript(_name(args[0]), _name(args[1]))


def _checkscript(args: list[Token]) -> Command:
    _arity(args, 1, 1, "CHECKSCRIPT {size+} script")
    return CheckScript(_text(args[0], "the script"))


def _noop(args: list[Token]) -> Command:
    _arity(args, 0, 1, 'NOOP ["tag"]')
    return Noop(_text(args[0], "the tag") if args else None)


_PARSERS: Final[dict[str, _Parser]] = {
    "AUTHENTICATE": _authenticate,
    "STARTTLS": _no_args(StartTls, "STARTTLS"),
    "LOGOUT": _no_args(Logout, "LOGOUT"),
    "CAPABILITY": _no_args(Capability, "CAPABILITY"),
    "HAVESPACE": _havespace,
    "PUTSCRIPT": _putscript,
    "LISTSCRIPTS": _no_args(ListScripts, "LISTSCRIPTS"),
    "SETACTIVE": _setactive,
    "GETSCRIPT": _one_name(GetScript, 'GETSCRIPT "name"'),
    "DELETESCRIPT": _one_name(DeleteScript, 'DELETESCRIPT "name"'),
    "RENAMESCRIPT": _renamescript,
    "CHECKSCRIPT": _checkscript,
    "NOOP": _noop,
    "UNAUTHENTICATE": _no_args(Unauthenticate, "UNAUTHENTICATE"),
}

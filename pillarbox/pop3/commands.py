"""Parse one POP3 command line into a typed command; pure (no I/O, no session state).

RFC 1939 §3: a case-insensitive keyword of three or four characters, arguments separated by
spaces, printable ASCII. Deviations, each deliberate:

* ``PASS`` takes the rest of the line as the password, spaces included (RFC 1939 §7 allows
  this, and passwords with spaces exist); ``USER`` and ``PASS`` accept UTF-8.
* Runs of spaces and trailing spaces between arguments are tolerated (liberal in what we
  accept); the number of arguments is not.
* ``AUTH`` without arguments is accepted (the RFC 1734 mechanism listing some clients send).

The line length bound is the session's job (it reads bounded lines); this module bounds
every number it converts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# RFC 1939 §3 allows 40 characters per argument; RFC 2449 §4 lifts the line to 255 octets.
# Message numbers and line counts beyond 10 digits are nonsense, never worth an int().
_NUMBER: Final = re.compile(rb"[0-9]{1,10}")
_MECHANISM: Final = re.compile(rb"[A-Za-z0-9_-]{1,20}")
# RFC 1939 §3: printable ASCII; UTF-8 bytes are let through for USER/PASS (RFC 6856 spirit).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class CommandError(Exception):
    """The line is not a valid command: answer ``-ERR text``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command; ``name`` is the keyword as the RFC spells it."""

    @property
    def name(self) -> str:
        return type(self).__name__.upper().removesuffix("_")


_Parser = Callable[[list[bytes]], Command]


@dataclass(frozen=True, slots=True)
class Capa(Command):
    pass


@dataclass(frozen=True, slots=True)
class Stls(Command):
    pass


@dataclass(frozen=True, slots=True)
class User(Command):
    user: str


@dataclass(frozen=True, slots=True)
class Pass(Command):
    password: str


@dataclass(frozen=True, slots=True)
class Auth(Command):
    mechanism: str | None  # None: list the mechanisms
    initial_response: bytes | None  # base64 text as sent ("=" means empty, RFC 5034 §4)


@dataclass(frozen=True, slots=True)
class Quit(Command):
    pass


@dataclass(frozen=True, slots=True)
class Stat(Command):
    pass


@dataclass(frozen=True, slots=True)
class List_(Command):
    number: int | None


@dataclass(frozen=True, slots=True)
class Uidl(Command):
    number: int | None


@dataclass(frozen=True, slots=True)
class Retr(Command):
    number: int


@dataclass(frozen=True, slots=True)
class Top(Command):
    number: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele(Command):
    number: int


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Rset(Command):
    pass


def parse(line: bytes) -> Command:
    """Parse ``line`` (without its CRLF); raises :class:`CommandError`."""
    if _CONTROL.search(line):
        raise CommandError("control characters in command")
    keyword, _, rest = line.partition(b" ")
    verb = keyword.upper()
    if verb == b"PASS":
        # RFC 1939 §7: the one argument may contain spaces; keep it byte for byte.
        if not rest:
            raise CommandError("PASS needs a password")
        return Pass(_utf8(rest, "password"))
    parser = _PARSERS.get(verb)
    if parser is None:
        raise CommandError("unknown command")
    return parser(rest.split())


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{what} is not UTF-8") from None


def _number(arg: bytes, *, positive: bool = True) -> int:
    if not _NUMBER.fullmatch(arg):
        raise CommandError("invalid number")
    value = int(arg)
    if positive and value == 0:
        raise CommandError("message numbers start at 1")
    return value


def _arity(args: list[bytes], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise CommandError(f"syntax: {usage}")


def _no_args(cls: type[Command], usage: str) -> _Parser:
    def parse_it(args: list[bytes]) -> Command:
        _arity(args, 0, 0, usage)
        return cls()

    return parse_it


def _user(args: list[bytes]) -> Command:
    _arity(args, 1, 1, "USER name")
    return User(_utf8(args[0], "user name"))


def _auth(args: list[bytes]) -> Command:
    _arity(args, 0, 2, "AUTH mechanism [initial-response]")
    if not args:
        return Auth(None, None)
    if not _MECHANISM.fullmatch(args[0]):
        raise CommandError("invalid mechanism name")
    return Auth(args[0].decode("ascii").upper(), args[1] if len(args) == 2 else None)


def _optional_number(cls: type[List_] | type[Uidl], usage: str) -> _Parser:
    def parse_it(args: list[bytes]) -> Command:
        _arity(args, 0, 1, usage)
        return cls(_number(args[0]) if args else None)

    return parse_it


def _one_number(cls: type[Retr] | type[Dele], usage: str) -> _Parser:
    def parse_it(args: list[bytes]) -> Command:
        _arity(args, 1, 1, usage)
        return cls(_number(args[0]))

    return parse_it


def _top(args: list[bytes]) -> Command:
    _arity(args, 2, 2, "TOP msg n")
    return Top(_number(args[0]), _number(args[1], positive=False))


_PARSERS: Final = {
    b"CAPA": _no_args(Capa, "CAPA"),
    b"STLS": _no_args(Stls, "STLS"),
    b"USER": _user,
    b"AUTH": _auth,
    b"QUIT": _no_args(Quit, "QUIT"),
    b"STAT": _no_args(Stat, "STAT"),
    b"LIST": _optional_number(List_, "LIST [msg]"),
    b"UIDL": _optional_number(Uidl, "UIDL [msg]"),
    b"RETR": _one_number(Retr, "RETR msg"),
    b"TOP": _top,
    b"DELE": _one_number(Dele, "DELE msg"),
    b"NOOP": _no_args(Noop, "NOOP"),
    b"RSET": _no_args(Rset, "RSET"),
}

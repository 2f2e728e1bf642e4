"""The Sieve grammar (RFC 5228 §8): text in, a typed syntax tree out.

This module knows only the *shape* of a script — comments, strings (quoted and ``text:``
multi-line), numbers with K/M/G quantifiers, string lists, tagged arguments, tests, test
lists and blocks. Which commands exist and what arguments they take is decided later by
``validate.py``, so the grammar stays small and every extension is one table entry there.

Every node carries the line and column (both 1-based, columns counted in characters) where
it starts; every error is a :class:`SieveSyntaxError` naming the line and column of the
offending token, which ManageSieve's PUTSCRIPT and ``pillarbox sieve put`` pass on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn

# Nesting beyond this (blocks in blocks, tests in tests) is refused: no human writes it and
# the recursive-descent parser must not be driven into Python's recursion limit.
MAX_NESTING = 32
# RFC 5228 §2.4.1: implementations must support numbers up to 2**31; we go to 2**63-1,
# which SQLite and every size we compare against fit in.
MAX_NUMBER = 2**63 - 1
_QUANTIFIERS = {"K": 2**10, "M": 2**20, "G": 2**30}


class SieveSyntaxError(Exception):
    """A script that does not parse or does not validate, with where (1-based)."""

    def __init__(self, message: str, line: int, column: int):
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged argument such as ``:contains`` (``name`` without the colon, lower-cased)."""

    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Number:
    """A number, its quantifier already applied (``1K`` is 1024)."""

    value: int
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class StringList:
    """A string or a string list; ``is_list`` says which was written (RFC 5228 §2.4.2.1:
    a single string is allowed wherever a list is, not the other way round)."""

    values: tuple[str, ...]
    is_list: bool
    line: int
    column: int


Argument = Tag | Number | StringList

_EMPTY_TAGS: Mapping[str, Argument | None] = MappingProxyType({})


def _no_tags() -> Mapping[str, Argument | None]:
    return _EMPTY_TAGS


@dataclass(frozen=True, slots=True)
class Test:
    """``identifier arguments`` in test position; ``tests`` holds a test or test-list.

    ``tags`` and ``positional`` are filled by validation (``validate.py``): the tagged
    arguments by name (their value, or None for a flag such as ``:copy``) and the positional
    ones in order. The parser leaves them empty and keeps the raw ``arguments``.
    """

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int
    column: int
    test_list: bool = False  # the tests were written as "( ... )"
    tags: Mapping[str, Argument | None] = field(default_factory=_no_tags, compare=False)
    positional: tuple[Argument, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Command:
    """``identifier arguments (";" / block)``; ``block`` is None for ``;``."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    line: int
    column: int
    test_list: bool = False  # the tests were written as "( ... )"
    tags: Mapping[str, Argument | None] = field(default_factory=_no_tags, compare=False)
    positional: tuple[Argument, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Script:
    """A whole script; ``requires`` is filled by validation (the required capabilities)."""

    commands: tuple[Command, ...]
    requires: frozenset[str] = frozenset()


# -- lexer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "ident", "tag", "number", "string", "punct", "eof"
    text: str  # the identifier (lower-cased), the punctuation, or the string's value
    number: int
    line: int
    column: int


class _Lexer:
    """Splits the text into tokens; tracks line and column for every one."""

    def __init__(self, text: str):
        # RFC 5228 §8.1 says CRLF; scripts written on Unix (and uploaded by clients that
        # do not convert) use LF alone, which every implementation accepts too.
        self.text = text.replace("\r\n", "\n")
        self.pos = 0
        self.line = 1
        self.column = 1

    def error(self, message: str, line: int | None = None, column: int | None = None) -> NoReturn:
        raise SieveSyntaxError(
            message, self.line if line is None else line, self.column if column is None else column
        )

    def _advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self.text[self.pos] == "\n":
                self.line += 1
                self.column = 1
            else:
                self.column += 1
            self.pos += 1

    def _peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def _skip_space(self) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\n":
                self._advance()
            elif char == "\r":
                self.error("a bare CR is not allowed (lines end with CRLF or LF)")
            elif char == "#":
                # hash-comment = "#" *octet-not-crlf CRLF (RFC 5228 §2.3)
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self._advance()
            elif char == "/" and self._peek(1) == "*":
                line, column = self.line, self.column
                end = self.text.find("*/", self.pos + 2)
                if end < 0:
                    self.error("unterminated /* comment", line, column)
                self._advance(end + 2 - self.pos)
            else:
                return

    def next(self) -> _Token:
        self._skip_space()
        line, column = self.line, self.column
        if self.pos >= len(self.text):
            return _Token("eof", "", 0, line, column)
        char = self.text[self.pos]
        if char in ";{}[](),":
            self._advance()
            return _Token("punct", char, 0, line, column)
        if char == '"':
            return _Token("string", self._quoted(), 0, line, column)
        if char == ":":
            self._advance()
            name = self._identifier()
            if not name:
                self.error("':' must be followed by a tag name", line, column)
            return _Token("tag", name.lower(), 0, line, column)
        if char.isdigit() and char.isascii():
            return _Token("number", "", self._number(line, column), line, column)
        if _is_ident_start(char):
            name = self._identifier()
            # multi-line = "text:" *(SP / HTAB) (hash-comment / CRLF) (RFC 5228 §8.1)
            if name.lower() == "text" and self._peek() == ":":
                self._advance()
                return _Token("string", self._multiline(line, column), 0, line, column)
            return _Token("ident", name.lower(), 0, line, column)
        self.error(f"unexpected character {char!r}")

    def _identifier(self) -> str:
        start = self.pos
        if self.pos < len(self.text) and _is_ident_start(self.text[self.pos]):
            self._advance()
            while self.pos < len(self.text) and _is_ident_char(self.text[self.pos]):
                self._advance()
        return self.text[start : self.pos]

    def _number(self, line: int, column: int) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self._advance()
        value = int(self.text[start : self.pos])
        quantifier = self._peek().upper()
        if quantifier in _QUANTIFIERS:
            self._advance()
            value *= _QUANTIFIERS[quantifier]
        if _is_ident_char(self._peek()):
            self.error(f"unexpected {self._peek()!r} after a number")
        if value > MAX_NUMBER:
            self.error("number too large", line, column)
        return value

    def _quoted(self) -> str:
        line, column = self.line, self.column
        self._advance()  # the opening quote
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                self.error("unterminated string", line, column)
            char = self.text[self.pos]
            if char == '"':
                self._advance()
                return "".join(out)
            if char == "\\":
                # RFC 5228 §2.4.2: \" and \\ are escapes; any other backslash is dropped
                # ("interpreted as if there were no backslash").
                self._advance()
                if self.pos >= len(self.text):
                    self.error("unterminated string", line, column)
                char = self.text[self.pos]
            if char == "\r":
                self.error("a bare CR is not allowed in a string")
            out.append(char)
            self._advance()

    def _multiline(self, line: int, column: int) -> str:
        while self._peek() in (" ", "\t") and self._peek():
            self._advance()
        if self._peek() == "#":
            while self.pos < len(self.text) and self.text[self.pos] != "\n":
                self._advance()
        if self._peek() != "\n":
            self.error('"text:" must be followed by the end of the line')
        self._advance()
        out: list[str] = []
        while True:
            end = self.text.find("\n", self.pos)
            if end < 0:
                self.error(
                    'unterminated "text:" string (it ends with a line holding ".")', line, column
                )
            content = self.text[self.pos : end]
            self._advance(end + 1 - self.pos)
            if content == ".":
                return "".join(out)
            if content.startswith(".."):
                content = content[1:]  # dot-stuffing, RFC 5228 §2.4.2
            # Lines end with CRLF in the string's value as in a message (RFC 5228 §8.1).
            out.append(content + "\r\n")


def _is_ident_start(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalpha())


def _is_ident_char(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalnum())


# -- parser ----------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.lexer = _Lexer(text)
        self.token = self.lexer.next()
        self.depth = 0

    def _take(self) -> _Token:
        token = self.token
        self.token = self.lexer.next()
        return token

    def _error(self, message: str, token: _Token | None = None) -> SieveSyntaxError:
        token = token or self.token
        return SieveSyntaxError(message, token.line, token.column)

    def _describe(self, token: _Token) -> str:
        if token.kind == "eof":
            return "the end of the script"
        if token.kind == "punct":
            return f"'{token.text}'"
        if token.kind == "tag":
            return f"tag ':{token.text}'"
        if token.kind == "number":
            return f"number {token.number}"
        if token.kind == "string":
            return "a string"
        return f"'{token.text}'"

    def _is(self, punct: str) -> bool:
        return self.token.kind == "punct" and self.token.text == punct

    def _nest(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self._error(f"nested deeper than {MAX_NESTING} levels", token)

    def script(self) -> Script:
        commands = self.commands()
        if self.token.kind != "eof":
            raise self._error(f"expected a command, found {self._describe(self.token)}")
        return Script(tuple(commands))

    def commands(self) -> list[Command]:
        commands = []
        while self.token.kind == "ident":
            commands.append(self.command())
        return commands

    def command(self) -> Command:
        name = self._take()
        arguments, tests, test_list = self.arguments()
        if self._is(";"):
            self._take()
            return Command(name.text, arguments, tests, None, name.line, name.column, test_list)
        if self._is("{"):
            brace = self._take()
            self._nest(brace)
            block = self.commands()
            if not self._is("}"):
                raise self._error(f"expected '}}' or a command, found {self._describe(self.token)}")
            self._take()
            self.depth -= 1
            return Command(
                name.text, arguments, tests, tuple(block), name.line, name.column, test_list
            )
        raise self._error(
            f"expected ';' or '{{' after {name.text!r}, found {self._describe(self.token)}"
        )

    def arguments(self) -> tuple[tuple[Argument, ...], tuple[Test, ...], bool]:
        arguments: list[Argument] = []
        while True:
            token = self.token
            if token.kind == "tag":
                self._take()
                arguments.append(Tag(token.text, token.line, token.column))
            elif token.kind == "number":
                self._take()
                arguments.append(Number(token.number, token.line, token.column))
            elif token.kind == "string":
                self._take()
                arguments.append(StringList((token.text,), False, token.line, token.column))
            elif self._is("["):
                arguments.append(self.string_list())
            else:
                break
        if self.token.kind == "ident":
            return tuple(arguments), (self.test(),), False
        if self._is("("):
            return tuple(arguments), self.test_list(), True
        return tuple(arguments), (), False

    def string_list(self) -> StringList:
        bracket = self._take()
        values = []
        while True:
            if self.token.kind != "string":
                raise self._error(
                    f"expected a string in the list, found {self._describe(self.token)}"
                )
            values.append(self._take().text)
            if self._is(","):
                self._take()
                continue
            if self._is("]"):
                self._take()
                return StringList(tuple(values), True, bracket.line, bracket.column)
            raise self._error(f"expected ',' or ']', found {self._describe(self.token)}")

    def test(self) -> Test:
        if self.token.kind != "ident":
            raise self._error(f"expected a test, found {self._describe(self.token)}")
        name = self._take()
        self._nest(name)
        arguments, tests, test_list = self.arguments()
        self.depth -= 1
        return Test(name.text, arguments, tests, name.line, name.column, test_list)

    def test_list(self) -> tuple[Test, ...]:
        paren = self._take()
        self._nest(paren)
        tests = [self.test()]
        while self._is(","):
            self._take()
            tests.append(self.test())
        if not self._is(")"):
            raise self._error(
                f"expected ',' or ')' in the test list, found {self._describe(self.token)}"
            )
        self._take()
        self.depth -= 1
        return tuple(tests)


def parse_grammar(text: str) -> Script:
    """Parse ``text`` by the RFC 5228 §8.2 grammar alone (no command is checked)."""
    return _Parser(text).script()

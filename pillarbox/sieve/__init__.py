"""Sieve (RFC 5228), the mail filtering language: parse, check, and (``interpreter.py``) run.

A pure language package: it imports neither the store nor any protocol, so ManageSieve,
the web pages, the CLI and local delivery all use the same rules.

Interface:

- ``parse(text) -> Script``: the grammar (``parser.py``, RFC 5228 §8) plus validation
  (``validate.py``); the returned tree has every command's and test's ``tags`` and
  ``positional`` arguments bound, which the interpreter reads.
- ``check(text) -> None``: the same, for callers that only need a yes or no (PUTSCRIPT,
  CHECKSCRIPT, ``pillarbox sieve put``, the web editor).
- ``SieveSyntaxError(message, line, column)``: every refusal, 1-based line and column;
  ``str()`` reads ``line L, column C: message``. Refused: bad syntax, an unknown command
  or test, wrong arguments, a ``require`` of an extension not in ``EXTENSIONS``, an
  extension used without ``require``.
- ``EXTENSIONS``: the capabilities the interpreter implements, in the order ManageSieve
  advertises them in its "SIEVE" capability (RFC 5804 §1.7).
"""

from __future__ import annotations

from pillarbox.sieve.parser import Command, Script, SieveSyntaxError, Test, parse_grammar
from pillarbox.sieve.validate import validate

EXTENSIONS: tuple[str, ...] = (
    "fileinto",
    "reject",
    "envelope",
    "imap4flags",
    "vacation",
    "variables",
    "body",
    "subaddress",
    "copy",
    "relational",
    "comparator-i;ascii-numeric",
    "date",
    "index",
    "mailbox",
    "vacation-seconds",
)

# "require" may also name the two comparators every implementation has (RFC 5228 §2.7.3).
_REQUIRABLE = frozenset(EXTENSIONS) | {"comparator-i;octet", "comparator-i;ascii-casemap"}


def parse(text: str) -> Script:
    """Parse and validate ``text``; raises SieveSyntaxError with the line and column."""
    return validate(parse_grammar(text), _REQUIRABLE)


def check(text: str) -> None:
    """Raise SieveSyntaxError if ``text`` is not a valid script for this implementation."""
    parse(text)


__all__ = ["EXTENSIONS", "Command", "Script", "SieveSyntaxError", "Test", "check", "parse"]

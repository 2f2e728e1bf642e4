"""How an IMAP command ends: what a handler returns, what it raises, and the three kinds
of failure every exception is sorted into.

A handler returns a :data:`Result` (the text of the tagged ``OK``, optionally with a
response code) or raises. :func:`failure` sorts whatever it raised into one of three kinds
(RFC 9051 §7.1), each with one wire form:

- ``PARSE``: the client's command is wrong: it does not parse (:class:`ParseError`, with
  the parser's message and its status, ``BAD`` or, for the few cases the RFCs say so,
  ``NO [BADCHARSET]``/``NO [TOOBIG]``), or it parses but breaks the protocol: not
  allowed in this state, a message number beyond EXISTS (:class:`Bad`). ``tag BAD text``.
- ``USER``: well formed, but it cannot be done: a missing mailbox, a read-only one, a
  failed login (:class:`No`, and the store's own errors, see :func:`user_error`).
  ``tag NO [CODE] text``.
- ``INTERNAL``: anything else is our fault. ``tag NO [SERVERBUG] internal error``
  (RFC 5530 §3), and the session logs one line with the traceback.

In every case the session goes on with the next command. These types live apart from the
session so that the handler modules and the command table (``dispatch.py``) need not
import the session at run time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pillarbox.imap import response as r
from pillarbox.imap.backend import MailboxError, response_code
from pillarbox.imap.grammar import ParseError

# The tagged OK: its text ("" for "NAME completed"), or the text and a response code.
Result = str | tuple[str, r.Code]


class No(Exception):
    """``tag NO [code] text``: the command was understood but cannot be done."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code
        self.text = text


class Bad(Exception):
    """``tag BAD text`` raised by semantics (not allowed now, a number out of range)."""


class Logout(Exception):
    """End the session after the current response."""


class Silent(Exception):
    """The handler already sent its tagged response (STARTTLS, COMPRESS)."""


class ErrorKind(enum.Enum):
    PARSE = "parse"  # tag BAD (or the parser's NO)
    USER = "user"  # tag NO [CODE] text
    INTERNAL = "internal"  # tag NO [SERVERBUG], one log line


@dataclass(frozen=True, slots=True)
class Failure:
    kind: ErrorKind
    response: bytes  # the tagged line, CRLF included

    @property
    def status(self) -> str:
        """The commands metric's status label: BAD for the client's mistakes, else NO."""
        return "BAD" if self.kind is ErrorKind.PARSE else "NO"


INTERNAL_CODE = r.Code("SERVERBUG")  # RFC 5530 §3: a bug in the server, not the client


def user_error(exc: BaseException) -> No | None:
    """The ``NO`` an exception stands for, or None if it is not the user's doing.

    The one place that knows what the store's errors look like: the mail-store API's
    ``MailboxError``, whose neutral code maps to an IMAP response code (``imap/backend.py``).
    """
    if isinstance(exc, No):
        return exc
    if isinstance(exc, MailboxError):
        return No(exc.text, response_code(exc))
    return None


def failure(exc: Exception, tag: str | None) -> Failure:
    """Sort ``exc`` into its kind and the tagged response (``*`` when ``tag`` is None)."""
    if isinstance(exc, ParseError):
        return Failure(ErrorKind.PARSE, r.parse_error(exc.with_tag(tag)))
    if isinstance(exc, Bad):
        return Failure(ErrorKind.PARSE, r.tagged(tag, "BAD", str(exc)))
    no = user_error(exc)
    if no is not None:
        code = r.Code(no.code) if no.code else None
        return Failure(ErrorKind.USER, r.tagged(tag, "NO", no.text, code))
    return Failure(ErrorKind.INTERNAL, r.tagged(tag, "NO", "internal error", INTERNAL_CODE))

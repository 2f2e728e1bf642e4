"""How an IMAP command ends: what a handler returns, and what it raises instead.

A handler returns a :data:`Result` (the text of the tagged ``OK``, optionally with a
response code) or raises one of the exceptions below; :meth:`Session.execute` turns each
into the tagged response. They live apart from the session so that the handler modules
and the command table (``dispatch.py``) need not import the session at run time.
"""

from __future__ import annotations

from pillarbox.imap import response as r

# The tagged OK: its text ("" for "NAME completed"), or the text and a response code.
Result = str | tuple[str, r.Code]


class No(Exception):
    """``tag NO [code] text``: the command was understood but cannot be done."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code
        self.text = text


class Bad(Exception):
    """``tag BAD text`` raised by semantics (e.g. sequence numbers out of range)."""


class Logout(Exception):
    """End the session after the current response."""


class Silent(Exception):
    """The handler already sent its tagged response (STARTTLS, COMPRESS)."""

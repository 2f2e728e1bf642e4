"""The IMAP wire form of a parsed ENVELOPE (RFC 9051 §7.5.2), for the store to keep ready.

``FETCH 1:* (ENVELOPE)`` of 50,000 messages spent half its time decoding each stored
envelope from JSON and the rest rendering it; the store keeps the rendered bytes instead
and FETCH copies them. Only envelopes whose every string is a plain quoted string are kept
so: printable ASCII without CR/LF/NUL, at most :data:`MAX_QUOTED` long. Those bytes are
what ``pillarbox.imap.fetch.envelope`` sends with and without UTF8=ACCEPT (RFC 9755 only
changes how non-ASCII text goes), so they are right for every session; any other envelope
(8-bit text, a string that needs a literal) is rendered per FETCH by the IMAP layer.
"""

from __future__ import annotations

from typing import Any, Final

# The longest string IMAP responses quote (``pillarbox.imap.response.MAX_QUOTED``).
MAX_QUOTED: Final = 1024
_UNQUOTABLE: Final = frozenset("\r\n\0")


class _NotPlain(Exception):
    """A string of the envelope must be rendered per session."""


def _quoted(value: str | None) -> bytes:
    if value is None:
        return b"NIL"
    if len(value) > MAX_QUOTED or not value.isascii() or not _UNQUOTABLE.isdisjoint(value):
        raise _NotPlain
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + value.encode("ascii") + b'"'


def _addresses(value: list[list[str | None]] | None) -> bytes:
    if not value:
        return b"NIL"
    return b"(" + b" ".join(b"(" + b" ".join(map(_quoted, a)) + b")" for a in value) + b")"


def envelope_bytes(env: list[Any]) -> bytes | None:
    """``(date subject from sender reply-to to cc bcc in-reply-to message-id)`` of the
    store's parsed envelope list, or None when some string is not plain (see above)."""
    date, subject, frm, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
    try:
        items = [_quoted(date), _quoted(subject)]
        items += [_addresses(a) for a in (frm, sender, reply_to, to, cc, bcc)]
        items += [_quoted(in_reply_to), _quoted(message_id)]
    except _NotPlain:
        return None
    return b"(" + b" ".join(items) + b")"

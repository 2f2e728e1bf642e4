"""MIME parsing for the mail store and IMAP: bytes in, plain data out.

``parse(data)`` reads one message (RFC 5322 + MIME, RFC 2045/2046) and returns a
:class:`~pillarbox.mime.structure.ParsedMessage`: the ENVELOPE fields and the BODYSTRUCTURE
tree as JSON-ready plain data (lists, dicts, str, int, None), with the byte offsets of every
part's header and body so ``BODY[1.2.MIME]`` is a slice of the file, never a re-parse. The
IMAP layer renders that data onto the wire; the store keeps it in its index.

Offsets refer to the message with CRLF line endings (:func:`~pillarbox.mime.structure.to_crlf`):
IMAP sizes and sections are defined on the CRLF form (RFC 3501 §2.3.4), and files written by
other tools (Dovecot stores LF) are converted when read.
"""

from pillarbox.mime.headers import filter_fields, header_search_text, split_header
from pillarbox.mime.structure import ParsedMessage, parse, section_range, to_crlf

__all__ = [
    "ParsedMessage",
    "filter_fields",
    "header_search_text",
    "parse",
    "section_range",
    "split_header",
    "to_crlf",
]

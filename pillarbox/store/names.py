"""Mailbox names on the wire and folder directories on disk (Maildir++, Dovecot layout).

The wire name is Unicode with ``/`` as the hierarchy separator (``Lists/Python``). On disk,
INBOX is the Maildir root and every other mailbox is a directory ``.Lists.Python`` beside
``cur/new/tmp``, each component in modified UTF-7 (Dovecot's default on-disk encoding), with
``.`` and ``\\`` inside a component escaped as ``\\2e`` and ``\\5c`` (Dovecot's listescape
convention), so no wire name can produce ``..``, a ``/`` or an absolute path.

Validation happens here, once: :func:`folder_dir` refuses every name that could escape the
user's Maildir or that Maildir cannot hold.
"""

from __future__ import annotations

import base64
import re
from typing import Final

SEPARATOR: Final = "/"
INBOX: Final = "INBOX"
MAX_NAME_BYTES: Final = 240  # a directory name must fit in NAME_MAX (255) with room to spare
MAX_DEPTH: Final = 16

_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


class BadMailboxName(ValueError):
    """The name cannot be a mailbox (the IMAP layer answers NO / BAD with the reason)."""


def _utf7_encode(text: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def _utf7_decode(text: str) -> str:
    def shift(m: re.Match[str]) -> str:
        b64 = m.group(1)
        if not b64:
            return "&"
        raw = b64.replace(",", "/")
        return base64.b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-16-be")

    return re.sub(r"&([A-Za-z0-9+,]*)-", shift, text)


def validate(name: str) -> list[str]:
    """The components of a valid mailbox name, or BadMailboxName."""
    if not name:
        raise BadMailboxName("empty mailbox name")
    if _CONTROL_RE.search(name):
        raise BadMailboxName("mailbox name contains control characters")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise BadMailboxName("empty hierarchy level in mailbox name")
    if any(p in (".", "..") for p in parts):
        raise BadMailboxName("'.' and '..' are not mailbox names")
    if len(parts) > MAX_DEPTH:
        raise BadMailboxName("mailbox hierarchy too deep")
    return parts


def normalise(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), also as the first level of a hierarchy."""
    head, sep, rest = name.partition(SEPARATOR)
    return INBOX + sep + rest if head.upper() == INBOX else name


def _escape(component: str) -> str:
    return _utf7_encode(component).replace("\\", "\\5c").replace(".", "\\2e")


def _unescape(component: str) -> str:
    return _utf7_decode(component.replace("\\2e", ".").replace("\\5c", "\\"))


def folder_dir(name: str) -> str:
    """The directory (relative to the Maildir root) of mailbox ``name``; "" for INBOX."""
    name = normalise(name)
    if name == INBOX:
        return ""
    parts = validate(name)
    dirname = "." + ".".join(_escape(p) for p in parts)
    if len(dirname.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadMailboxName("mailbox name too long")
    if "/" in dirname or "\0" in dirname or dirname in (".", ".."):  # defence in depth
        raise BadMailboxName("mailbox name not allowed")
    return dirname


def name_of_dir(dirname: str) -> str | None:
    """The wire name of a folder directory ``.A.B`` (None if it is not a folder name)."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    try:
        parts = [_unescape(p) for p in dirname[1:].split(".")]
    except (ValueError, UnicodeDecodeError):
        return None
    name = SEPARATOR.join(parts)
    try:
        validate(name)
    except BadMailboxName:
        return None
    return normalise(name)


def parent_names(name: str) -> list[str]:
    """``A/B/C`` -> ``["A", "A/B"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]

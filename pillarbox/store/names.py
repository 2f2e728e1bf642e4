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

# The wire-name rules are the neutral API's (every store applies them); re-exported here.
from pillarbox.mailstore.names import (
    INBOX,
    SEPARATOR,
    BadMailboxName,
    normalise,
    parent_names,
    validate,
)

__all__ = ["INBOX", "SEPARATOR", "BadMailboxName", "folder_dir", "name_of_dir", "normalise",
           "parent_names", "validate"]  # fmt: skip

MAX_NAME_BYTES: Final = 240  # a directory name must fit in NAME_MAX (255) with room to spare


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

"""Message flags: the index's bit mask, Maildir ``:2,`` info letters, Dovecot keyword files.

System flags are a bit mask in the index (one integer compare per message for SEARCH and
FETCH FLAGS); keywords are a space-separated string. In file names (Maildir spec, Dovecot)
system flags are the upper-case letters ``D F R S T`` in ASCII order and keywords are the
lower-case letters ``a``-``z``, indexes into the folder's ``dovecot-keywords`` file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

# The masks are the neutral API's (one definition for the store and the protocols).
from pillarbox.mailstore.flags import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAG_TEXT,
    FLAGGED,
    SEEN,
)
from pillarbox.mailstore.flags import split_flags as split_flags  # re-exported for fl.split_flags

# Maildir info letters (https://cr.yp.to/proto/maildir.html): R = replied, T = trashed.
_LETTERS: Final = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
_LETTER_OF: Final = {bit: letter for letter, bit in _LETTERS.items()}

KEYWORDS_FILE: Final = "dovecot-keywords"
# A keyword is an IMAP atom (RFC 3501 §9 flag-keyword); anything else in a foreign file is
# skipped so it can never reach the wire.
_KEYWORD_RE: Final = re.compile(r'[^(){ %*"\\\]\x00-\x20\x7f-\uffff]+\Z')
MAX_FILE_KEYWORDS: Final = 26


def is_keyword(name: str) -> bool:
    """Whether ``name`` can be an IMAP keyword (an atom, RFC 3501 §9 flag-keyword)."""
    return bool(_KEYWORD_RE.match(name))


def flags_text(mask: int, keywords: str) -> str:
    base = FLAG_TEXT[mask & 31]
    if not keywords:
        return base
    return f"{base} {keywords}" if base else keywords


def parse_info(info: str, keyword_names: list[str]) -> tuple[int, list[str]]:
    """(mask, keywords) from a ``:2,`` info string (the part after the comma)."""
    mask = 0
    keywords: list[str] = []
    for ch in info:
        if ch in _LETTERS:
            mask |= _LETTERS[ch]
        elif "a" <= ch <= "z":
            index = ord(ch) - ord("a")
            if index < len(keyword_names):
                keywords.append(keyword_names[index])
    return mask, keywords


def make_info(old_info: str, mask: int, keywords: list[str], keyword_names: list[str]) -> str:
    """New info letters: ours from the flags, unknown letters of ``old_info`` kept (Dovecot
    and others use more, e.g. ``P`` passed), all in ASCII order as the spec asks."""
    letters = {ch for ch in old_info if ch not in _LETTERS and not ("a" <= ch <= "z")}
    letters |= {letter for bit, letter in _LETTER_OF.items() if mask & bit}
    for keyword in keywords:
        if keyword in keyword_names:
            letters.add(chr(ord("a") + keyword_names.index(keyword)))
    return "".join(sorted(letters))


def split_filename(name: str) -> tuple[str, str]:
    """(base, info) of a Maildir file name ``base:2,info`` (info "" when absent)."""
    base, sep, info = name.partition(":2,")
    return (base, info) if sep else (name.partition(":")[0], "")


def read_keywords(folder: Path) -> list[str]:
    """The folder's ``dovecot-keywords``: lines ``<index> <name>``, index 0..25 -> a..z."""
    names: list[str] = []
    try:
        text = (folder / KEYWORDS_FILE).read_text("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return names
    for line in text.splitlines():
        index_text, _, keyword = line.partition(" ")
        if not index_text.isdigit() or not keyword:
            continue
        index = int(index_text)
        keyword = keyword.strip()
        if index < MAX_FILE_KEYWORDS and _KEYWORD_RE.match(keyword):
            while len(names) <= index:
                names.append("")
            names[index] = keyword
    return names


def write_keywords(folder: Path, names: list[str]) -> None:
    tmp = folder / f"{KEYWORDS_FILE}.tmp{os.getpid()}"
    tmp.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names) if n), "utf-8")
    os.replace(tmp, folder / KEYWORDS_FILE)


def ensure_keywords(folder: Path, names: list[str], keywords: list[str]) -> bool:
    """Give each new keyword a letter if one is free; returns True if ``names`` changed."""
    changed = False
    for keyword in keywords:
        if keyword not in names and len(names) < MAX_FILE_KEYWORDS:
            names.append(keyword)
            changed = True
    if changed:
        write_keywords(folder, names)
    return changed

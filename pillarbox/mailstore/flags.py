"""System flags as bit masks (RFC 9051 §2.3.2): the store keeps them as an integer so
SEARCH and FETCH FLAGS test a message with one integer operation."""

from __future__ import annotations

from typing import Final

SEEN: Final = 1
ANSWERED: Final = 2
FLAGGED: Final = 4
DELETED: Final = 8
DRAFT: Final = 16
ALL_SYSTEM: Final = 31  # every mask is below 32

# IMAP name of each bit, in the order FLAGS lists them.
SYSTEM_FLAGS: Final = {
    "\\Seen": SEEN,
    "\\Answered": ANSWERED,
    "\\Flagged": FLAGGED,
    "\\Deleted": DELETED,
    "\\Draft": DRAFT,
}

_UPPER: Final = {name.upper(): bit for name, bit in SYSTEM_FLAGS.items()}

# FLAG_TEXT[mask] is the FLAGS text of the system flags in ``mask``.
FLAG_TEXT: Final = tuple(
    " ".join(name for name, bit in SYSTEM_FLAGS.items() if mask & bit)
    for mask in range(ALL_SYSTEM + 1)
)


def split_flags(flags: tuple[str, ...] | list[str]) -> tuple[int, list[str]]:
    """(system mask, keywords) from IMAP flag names; ``\\Recent`` and unknown ``\\X`` dropped."""
    mask = 0
    keywords: list[str] = []
    for flag in flags:
        bit = _UPPER.get(flag.upper())
        if bit is not None:
            mask |= bit
        elif not flag.startswith("\\") and flag not in keywords:
            keywords.append(flag)
    return mask, keywords

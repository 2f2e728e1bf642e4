"""Sizes in bytes as people write them: ``"2G"``, ``"500M"``, ``"64K"``, ``"1048576"``.

The units are binary (K = 1024 bytes), as Dovecot's ``quota_rule = *:storage=2G`` and
Postfix's sizes read them; an optional trailing ``B`` or ``iB`` is accepted (``"2GiB"``).
Quotas use the words ``none`` and ``unlimited`` for no limit (0).
"""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
NO_LIMIT_WORDS: Final = frozenset({"none", "unlimited"})
# Far above any disk, and inside SQLite's signed 64-bit integers.
MAX_SIZE: Final = 1 << 60


class SizeError(ValueError):
    """Not a size: the message says what is expected."""


def parse_size(value: object) -> int:
    """Bytes from an integer or a text such as ``"2G"``; ``"none"`` is 0 (no limit)."""
    if isinstance(value, bool):
        raise SizeError(_expected(value))
    if isinstance(value, int):
        if value < 0 or value > MAX_SIZE:
            raise SizeError(_expected(value))
        return value
    if not isinstance(value, str):
        raise SizeError(_expected(value))
    if value.strip().lower() in NO_LIMIT_WORDS:
        return 0
    match = _SIZE_RE.match(value)
    if match is None:
        raise SizeError(_expected(value))
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.upper()])
    if size > MAX_SIZE:
        raise SizeError(_expected(value))
    return size


def format_size(size: int) -> str:
    """``2147483648`` -> ``"2G"``; sizes that are no whole unit keep one decimal."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size >= scale:
            whole, rest = divmod(size, scale)
            return f"{whole}{unit}" if rest == 0 else f"{size / scale:.1f}{unit}"
    return f"{size}B"


def _expected(value: object) -> str:
    return f'expected a size such as "2G", "500M", "64K" or a number of bytes, got {value!r}'

"""The mbox format (RFC 4155): splitting a file into messages and writing one.

A message starts with a ``From `` line (the "From_" line: envelope sender and an asctime
date) at the start of the file or after an empty line; the empty line before the next
From_ line belongs to the separator, not to the message. Body lines that would look like a
From_ line are quoted with ``>``. Two quoting variants exist (RFC 4155 §2 and its appendix):

- mboxo quotes ``From `` as ``>From `` and leaves ``>From `` alone (ambiguous on reading);
- mboxrd quotes every ``>*From `` line with one more ``>``, so reading removes exactly one.

We write mboxrd and read with the mboxrd rule: for mboxo files that gives the original
text except for body lines that were ``>From `` to begin with (which mboxo lost already).

A From_ line must carry an asctime date to count (as mutt's ``is_from`` demands), so an
unquoted ``From here`` after an empty line in an mboxo body does not split the message.
Reading streams the file line by line (a Google Takeout mbox can be many gigabytes).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

_QUOTED_RE: Final = re.compile(rb">+From ")
_NEEDS_QUOTE_RE: Final = re.compile(rb"^(>*From )", re.MULTILINE)
# "From sender Thu Jan  1 00:00:00 2024" (asctime, sometimes with a zone before the year).
_DATE_RE: Final = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) +(\w{3}) +(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?"
    rb"(?: +[A-Z]{3,4}| +[+-]\d{4})? +(\d{4})"
)
_MONTHS: Final = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}


@dataclass(frozen=True, slots=True)
class MboxEntry:
    """One message of an mbox: its number (from 1), the line its From_ line is on, the
    message (unquoted, line endings as in the file), the From_ line's date and, if the
    message cannot be imported as it is, why."""

    number: int
    line: int
    data: bytes
    envelope_date: float | None
    problem: str | None = None


def from_line_date(line: bytes) -> float | None:
    """The date of a From_ line as a Unix time (asctime is in UTC by convention)."""
    found = _DATE_RE.search(line)
    if not found:
        return None
    _, month, day, hour, minute, second, year = found.groups()
    if month not in _MONTHS:
        return None
    try:
        return float(
            calendar.timegm(
                (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second or 0))
            )
        )
    except (ValueError, OverflowError):
        return None


def read_mbox(stream: BinaryIO) -> Iterator[MboxEntry]:
    """The messages of an mbox; raises ValueError if it does not start with a From_ line."""
    number = 0
    line_no = 0
    start_line = 0
    envelope: float | None = None
    lines: list[bytes] = []
    previous_blank = True
    for line in stream:
        line_no += 1
        # Like mutt, a From_ line must carry a date: an unquoted "From here on" in an
        # mboxo body after an empty line then stays in its message.
        if (
            line.startswith(b"From ")
            and previous_blank
            and (number == 0 or from_line_date(line) is not None)
        ):
            if number:
                yield _entry(number, start_line, lines, envelope, last=False)
            elif any(x.strip() for x in lines):
                raise ValueError("line 1 is not a From_ line: not an mbox file")
            number += 1
            start_line = line_no
            envelope = from_line_date(line)
            lines = []
            previous_blank = False
            continue
        previous_blank = line in (b"\n", b"\r\n")
        lines.append(line[1:] if _QUOTED_RE.match(line) else line)
    if number:
        yield _entry(number, start_line, lines, envelope, last=True)
    elif any(x.strip() for x in lines):
        raise ValueError("no From_ line: not an mbox file")


def _entry(
    number: int, line: int, lines: list[bytes], envelope: float | None, *, last: bool
) -> MboxEntry:
    truncated = last and bool(lines) and not lines[-1].endswith(b"\n")
    if lines and not truncated and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]  # the empty line of the separator
    data = b"".join(lines)
    problem = None
    if truncated:
        problem = "the file ends in the middle of this message (truncated)"
    elif not data.strip():
        problem = "empty message"
    return MboxEntry(number, line, data, envelope, problem)


def quote_body(data: bytes) -> bytes:
    """mboxrd quoting: one more ``>`` before every line that matches ``>*From ``."""
    return _NEEDS_QUOTE_RE.sub(rb">\1", data)


def from_line(sender: str, when: float) -> bytes:
    stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(when))
    return f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode()


def format_entry(data: bytes, sender: str, when: float) -> bytes:
    """One mbox entry: From_ line, the quoted message with LF endings, an empty line."""
    text = data.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    return from_line(sender, when) + quote_body(text) + b"\n"

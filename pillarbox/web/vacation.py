"""The vacation form of ``/account/`` as a Sieve script (RFC 5228 with RFC 5230 vacation).

The form never writes Sieve text by string pasting: :func:`sieve_string` quotes every value
as RFC 5228 §2.4.2 says (``\\`` and ``"`` escaped, nothing else special), the subject is one
line (no header injection), addresses are parsed, and every number is bounded. The form's
own values travel in a comment at the top of the script (JSON, ASCII-only so it is one
line), so the page shows them again; the Sieve itself is the only thing delivery reads.

While the reply is on, its script is the active one; :attr:`Vacation.previous` remembers
the script that was active before, which the page makes active again when the reply is
turned off (ManageSieve, RFC 5804, has one active script per user).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Final

from pillarbox.core.address import AddressError, parse_address

SCRIPT_NAME: Final = "vacation"
MARKER: Final = "# pillarbox-vacation: "
# RFC 5230 §4.1: at least one day between replies to one sender; a year at most is ours.
MIN_DAYS, MAX_DAYS, DEFAULT_DAYS = 1, 365, 7
MAX_SUBJECT: Final = 200
MAX_MESSAGE: Final = 10000
MAX_ADDRESSES: Final = 20
# Characters a reply text may hold: no controls except tab and line ends.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class VacationError(ValueError):
    """A form value that cannot go into the script: shown to the user."""


@dataclass(frozen=True)
class Vacation:
    enabled: bool = False
    subject: str = ""
    message: str = ""
    days: int = DEFAULT_DAYS
    addresses: tuple[str, ...] = ()
    previous: str = ""  # the script active before the reply was turned on


def sieve_string(text: str) -> str:
    """A Sieve quoted string (RFC 5228 §2.4.2): ``\\`` and ``"`` are the only escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def from_form(form: dict[str, str], previous: str = "") -> Vacation:
    """The form's fields, checked; raises VacationError with a message for the user."""
    subject = form.get("subject", "").strip()
    if "\r" in subject or "\n" in subject or _CONTROL.search(subject):
        raise VacationError("The subject must be one line of text.")
    if len(subject) > MAX_SUBJECT:
        raise VacationError(f"The subject is limited to {MAX_SUBJECT} characters.")
    # A browser posts a textarea with CRLF; a Sieve string keeps line ends as they are.
    message = form.get("message", "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if _CONTROL.search(message):
        raise VacationError("The message contains control characters.")
    if len(message) > MAX_MESSAGE:
        raise VacationError(f"The message is limited to {MAX_MESSAGE} characters.")
    enabled = form.get("enabled") == "on"
    if enabled and not message:
        raise VacationError("Write the reply's message first.")
    return Vacation(
        enabled=enabled,
        subject=subject,
        message=message,
        days=_days(form.get("days", "").strip()),
        addresses=_addresses(form.get("addresses", "")),
        previous=previous,
    )


def _days(text: str) -> int:
    if not text:
        return DEFAULT_DAYS
    if not text.isascii() or not text.isdigit() or len(text) > 4:
        raise VacationError("Days must be a whole number.")
    days = int(text)
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise VacationError(f"Days must be between {MIN_DAYS} and {MAX_DAYS}.")
    return days


def _addresses(text: str) -> tuple[str, ...]:
    words = [w for w in re.split(r"[\s,;]+", text) if w]
    if len(words) > MAX_ADDRESSES:
        raise VacationError(f"At most {MAX_ADDRESSES} extra addresses.")
    out: list[str] = []
    for word in words:
        try:
            address = str(parse_address(word))
        except AddressError:
            raise VacationError(f"Not an address: {word[:100]}") from None
        if address not in out:
            out.append(address)
    return tuple(out)


def to_script(vacation: Vacation) -> str:
    """The Sieve script for the form's values (CRLF line ends, RFC 5228 §2.2)."""
    meta = asdict(vacation)
    meta["addresses"] = list(vacation.addresses)
    lines = [
        "# The vacation reply of the Pillarbox account page: change it there.",
        MARKER + json.dumps(meta, ensure_ascii=True, sort_keys=True),
    ]
    if not vacation.enabled:
        lines.append("keep;")
        return "\r\n".join(lines) + "\r\n"
    args = [f":days {vacation.days}"]
    if vacation.subject:
        args.append(f":subject {sieve_string(vacation.subject)}")
    if vacation.addresses:
        listed = ", ".join(sieve_string(a) for a in vacation.addresses)
        args.append(f":addresses [{listed}]")
    message = vacation.message.replace("\n", "\r\n")
    lines += [
        'require ["vacation"];',
        # RFC 5230 §4.5 + RFC 3834: the runtime skips lists, bulk mail and auto-replies.
        f"vacation {' '.join(args)}",
        f"  {sieve_string(message)};",
    ]
    return "\r\n".join(lines) + "\r\n"


def from_script(text: str) -> Vacation | None:
    """The form's values from a script :func:`to_script` wrote; None for any other."""
    for line in text.splitlines()[:5]:
        if line.startswith(MARKER):
            try:
                meta = json.loads(line.removeprefix(MARKER))
                return Vacation(
                    enabled=bool(meta["enabled"]),
                    subject=str(meta["subject"]),
                    message=str(meta["message"]),
                    days=int(meta["days"]),
                    addresses=tuple(str(a) for a in meta["addresses"]),
                    previous=str(meta.get("previous", "")),
                )
            except (ValueError, KeyError, TypeError):
                return None
    return None

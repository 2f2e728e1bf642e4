"""Running users' Sieve scripts at local delivery, and what their actions turn into.

For each local recipient with an active script (``store/sieve_scripts.py``) the script is
run (``pillarbox.sieve.interpreter``) after the spam/DMARC verdict, whose folder (INBOX or
Junk) is the implicit keep, so a script can override it (and test ``X-Pillarbox-Spam``).
The result is a :class:`Plan` per user:

- keep / fileinto -> ``LocalTarget``s with the script's IMAP flags; a folder that does not
  exist is created by the delivery (Maildir++ directories appear on first write); a name
  no folder can have is logged and the message goes to the implicit keep folder instead;
- discard -> nothing stored (logged);
- reject -> ``Plan.reject``: the caller answers 550 5.7.1 at DATA when every recipient of
  the message rejected, else sends a bounce (RFC 5429 §2.1 allows either);
- redirect -> ``Plan.redirects`` (sent on with the original envelope sender and a
  ``Delivered-To`` of the user, by which a message that comes back is recognised and kept
  instead of looping);
- vacation -> ``Plan.vacation``, sent by :func:`vacation_reply` when RFC 3834 / RFC 5230
  allow it (see there).

Any failure — a script that no longer parses, a runtime error, a bug here — gives the
implicit keep and a log line with the queue id: a filter never loses mail (RFC 5228
§2.10.6). Parsed scripts are cached by (user, script version). Everything here is
blocking (SQLite, parsing, reading a body) and runs in a thread.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pillarbox import log
from pillarbox.core.address import strip_subaddress
from pillarbox.delivery.local import LocalTarget
from pillarbox.sieve import Script, SieveSyntaxError, parse
from pillarbox.sieve.interpreter import (
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    SieveRuntimeError,
    Vacation,
    actions_text,
    run,
)
from pillarbox.sieve.message import SieveMessage
from pillarbox.store.names import BadMailboxName, folder_dir, normalise
from pillarbox.store.sieve_scripts import SieveStore

_log = log.get("sieve")
CACHE_SIZE = 1024


@dataclass
class Plan:
    """What to do with one user's copy."""

    targets: list[LocalTarget] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    vacation: Vacation | None = None


class SieveFilter:
    """Runs the active script of each local recipient (see the module docstring)."""

    def __init__(
        self,
        scripts: SieveStore,
        delimiter: str,
        folder_exists: Callable[[str, str], bool] | None = None,
    ):
        self.scripts = scripts
        self.folder_exists = folder_exists  # (user, folder) -> bool, for mailboxexists
        self.delimiter = delimiter
        self._cache: OrderedDict[tuple[str, int], Script] = OrderedDict()
        self._lock = threading.Lock()

    def plan(
        self,
        user: str,
        recipient: str,
        sender: str,
        message: SieveMessage,
        folder: str,
        queue_id: str,
    ) -> Plan:
        """The plan for ``user``'s copy; ``folder`` is the implicit keep. Never raises."""
        keep = Plan([LocalTarget(user, folder)])
        try:
            script = self._script(user)
            if script is None:
                return keep
            exists = self.folder_exists
            envelope = Envelope(
                sender, recipient, user, self.delimiter,
                None if exists is None else (lambda name: exists(user, name)),
            )  # fmt: skip
            actions = run(script, message, envelope)
            plan = self._translate(user, folder, actions, message, queue_id)
        except (SieveSyntaxError, SieveRuntimeError) as exc:
            _log.warning("sieve failed, kept", queue_id=queue_id, user=user, folder=folder,
                         error=str(exc))  # fmt: skip
            return keep
        except Exception:
            _log.error("sieve crashed, kept", queue_id=queue_id, user=user, folder=folder,
                       exc_info=True)  # fmt: skip
            return keep
        _log.info("sieve", queue_id=queue_id, user=user, actions=actions_text(actions))
        return plan

    def _script(self, user: str) -> Script | None:
        stored = self.scripts.active_script(user)
        if stored is None:
            return None
        key = (user, stored.version)
        with self._lock:
            script = self._cache.get(key)
            if script is not None:
                self._cache.move_to_end(key)
                return script
        script = parse(stored.text)
        with self._lock:
            self._cache[key] = script
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return script

    def _translate(
        self,
        user: str,
        folder: str,
        actions: Iterable[object],
        message: SieveMessage,
        queue_id: str,
    ) -> Plan:
        plan = Plan()
        delivered_to = {v.strip().lower() for v in message.header_values("delivered-to")}
        for action in actions:
            if isinstance(action, Keep):
                plan.targets.append(LocalTarget(user, folder, action.flags))
            elif isinstance(action, FileInto):
                plan.targets.append(LocalTarget(user, self._folder(action, folder, queue_id),
                                                action.flags))  # fmt: skip
            elif isinstance(action, Redirect):
                if user.lower() in delivered_to:
                    # The message was here before (Delivered-To is ours): a redirect loop.
                    _log.warning("sieve redirect loop, kept", queue_id=queue_id, user=user,
                                 to=action.address)  # fmt: skip
                    plan.targets.append(LocalTarget(user, folder))
                else:
                    plan.redirects.append(action.address)
            elif isinstance(action, Reject):
                plan.reject = action.reason
            elif isinstance(action, Vacation):
                plan.vacation = action
            elif isinstance(action, Discard):
                _log.info("sieve discarded", queue_id=queue_id, user=user)
        # One copy per folder: the same folder twice (a keep and a fileinto "INBOX").
        unique: dict[str, LocalTarget] = {}
        for target in plan.targets:
            unique[target.folder] = target
        plan.targets = list(unique.values())
        return plan

    @staticmethod
    def _folder(action: FileInto, fallback: str, queue_id: str) -> str:
        try:
            folder_dir(action.folder)
        except BadMailboxName as exc:
            _log.warning("sieve fileinto refused, kept", queue_id=queue_id,
                         folder=action.folder, error=str(exc))  # fmt: skip
            return fallback
        return normalise(action.folder)


# -- vacation (RFC 5230 and RFC 3834) ----------------------------------------------------

_LIST_HEADERS = (
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def vacation_refusal(
    vacation: Vacation,
    sender: str,
    message: SieveMessage,
    own: set[str],
    delimiter: str,
) -> str | None:
    """Why no reply may be sent, or None. ``own`` holds the user's addresses."""
    if not sender:
        return "null sender"  # RFC 3834 §2, RFC 5230 §4.6
    local = sender.rpartition("@")[0].lower()
    if (
        local in ("mailer-daemon", "listserv", "majordomo")
        or local.startswith("owner-")
        or local.endswith("-request")
    ):
        return "sender is a list or daemon address"  # RFC 5230 §4.6
    for value in message.header_values("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "Auto-Submitted"  # RFC 3834 §2, §5
    if any(message.header_values(name) for name in _LIST_HEADERS):
        return "a list message"  # RFC 3834 §2 (RFC 2369, RFC 2919)
    for value in message.header_values("precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return f"Precedence: {value.strip()}"
    mine = {a.lower() for a in own} | {a.lower() for a in vacation.addresses}
    if _base(sender, delimiter) in mine:
        return "sender is the user"
    recipients = email.utils.getaddresses(
        [v for name in _RECIPIENT_HEADERS for v in message.header_values(name)]
    )
    # RFC 5230 §4.5: reply only when one of the user's addresses is a visible recipient
    # (not to Bcc'd list traffic or spam addressed to someone else).
    if not any(_base(address, delimiter) in mine for _, address in recipients):
        return "none of the user's addresses is in To/Cc"
    return None


def _base(address: str, delimiter: str) -> str:
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{strip_subaddress(local, delimiter)}@{domain}"


def vacation_reply(
    vacation: Vacation,
    user: str,
    sender: str,
    message: SieveMessage,
    hostname: str,
    now: Callable[[], float] = time.time,
) -> bytes:
    """The reply (RFC 5230 §5, RFC 3834 §3): Auto-Submitted: auto-replied, threaded to the
    original by In-Reply-To and References, the subject "Auto: " + the original's."""
    original_subject = (message.header_values("subject") or [""])[0]
    subject = vacation.subject if vacation.subject is not None else f"Auto: {original_subject}"
    from_address = vacation.from_address or user
    message_id = (message.header_values("message-id") or [""])[0].strip()
    references = " ".join(
        part for part in ((message.header_values("references") or [""])[0], message_id) if part
    )
    lines = [
        f"From: {_header(from_address)}",
        f"To: <{sender}>",
        f"Subject: {_header(subject)}",
        f"Date: {email.utils.formatdate(now(), localtime=False)}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "Precedence: bulk",
    ]
    if message_id:
        lines.append(f"In-Reply-To: {message_id}")
        lines.append(f"References: {references}")
    lines.append("MIME-Version: 1.0")
    if vacation.mime:
        # RFC 5230 §4.4: with :mime the reason is a MIME entity (its own header fields).
        body = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n")
        return ("\r\n".join(lines) + "\r\n" + body).encode("utf-8")
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    body = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def _header(text: str) -> str:
    if text.isascii():
        return text.replace("\r", " ").replace("\n", " ")
    from email.header import Header

    return Header(text, "utf-8").encode()

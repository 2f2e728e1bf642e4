"""``pillarbox sendmail [-f FROM] [-t] [RCPT ...]``: local submission for cron and scripts.

Reads one message on stdin (LF or CRLF line ends; stored with CRLF), completes it as a
submission server would (RFC 6409 §8: From, Date and Message-ID when missing), and hands it
to the server through the pickup directory (see :mod:`pillarbox.delivery.pickup`): durable
first, then delivered by the running server over the control socket, or — with no server —
delivered locally by this command itself, remote recipients waiting for the server's start.

Before anything is written, the From header is judged as submission judges it (one From,
every address one the sender may use: see :func:`judge_from`); a bare local name in From
gets the first configured domain, so cron's ``From: root (Cron Daemon)`` works.

Options follow sendmail's: ``-f`` envelope sender (default: the Unix user at the first
configured domain, Postfix's ``myorigin``), ``-F`` full name for a generated From, ``-t``
recipients from To/Cc/Bcc (Bcc is removed), ``-i``/``-oi`` accepted (we read to end of file,
a lone dot never ends the message), other ``-o`` options ignored. Exit 0 when every
recipient was delivered or queued, 1 otherwise (with one line per problem on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import getpass
import os
import re
import sys
from typing import Any

from pillarbox import control
from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.config import Settings
from pillarbox.core.address import AddressError, parse_address
from pillarbox.core.ids import new_queue_id

_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


def normalize_line_endings(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """(header fields with their continuation lines, body including the blank line)."""
    fields: list[bytes] = []
    position = 0
    while position < len(data):
        end = data.find(b"\r\n", position)
        end = len(data) if end < 0 else end + 2
        line = data[position:end]
        if line == b"\r\n":
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_RE.match(line):
            fields.append(line)
        else:
            break  # not a header line: the message has no (more) header
        position = end
    return fields, data[position:]


def field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(field: bytes) -> str:
    value = field.split(b":", 1)[1].decode("utf-8", "replace")
    return re.sub(r"\r\n[ \t]", " ", value).strip()


def header_recipients(fields: list[bytes]) -> list[str]:
    values = [field_value(f) for f in fields if field_name(f) in ("to", "cc", "bcc")]
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


def prepare_message(
    data: bytes,
    *,
    sender: str,
    full_name: str | None,
    extract: bool,
    recipients: list[str],
    hostname: str,
    origin: str,
    queue_id: str,
) -> tuple[bytes, list[str]]:
    """The message to store (CRLF, completed headers, no Bcc) and its recipients."""
    fields, body = split_message(normalize_line_endings(data))
    if extract:
        recipients = [*recipients, *header_recipients(fields)]
        fields = [f for f in fields if field_name(f) != "bcc"]
    fields = qualify_from(fields, origin)
    names = {field_name(f) for f in fields}
    added = []
    if "from" not in names and sender:
        added.append(f"From: {email.utils.formataddr((full_name or '', sender))}\r\n")
    if "date" not in names:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}\r\n")
    if "message-id" not in names:
        added.append(f"Message-ID: <{queue_id}@{hostname}>\r\n")
    if not body.startswith(b"\r\n"):
        body = b"\r\n" + body
    head = b"".join(fields) + "".join(added).encode("utf-8")
    return head + body, list(dict.fromkeys(recipients))


def qualify_from(fields: list[bytes], origin: str) -> list[bytes]:
    """A From of bare local names (cron writes ``From: root (Cron Daemon)``) gets the
    origin domain, as Postfix's ``append_at_myorigin`` does for local submissions."""
    out = []
    for item in fields:
        if field_name(item) == "from":
            pairs = email.utils.getaddresses([field_value(item)])
            if pairs and all(addr and "@" not in addr for _, addr in pairs):
                value = ", ".join(email.utils.formataddr((n, f"{a}@{origin}")) for n, a in pairs)
                item = f"From: {value}\r\n".encode()
        out.append(item)
    return out


def judge_from(settings: Settings, message: bytes, sender: str) -> None:
    """The submission rule for the From header (:mod:`pillarbox.delivery.sendas`), with
    the envelope sender as the identity: when an account owns it, From may be anything
    that account may send as; otherwise From must be the sender itself."""
    from pillarbox.delivery.sendas import judge_author
    from pillarbox.delivery.service import unquote_local_part
    from pillarbox.store.accounts import open_accounts

    head = message[: message.find(b"\r\n\r\n") + 2]
    accounts = open_accounts(settings)
    try:
        delimiter = settings.delivery.recipient_delimiter
        owner = accounts.owner_of(sender, delimiter) if sender else None

        def may_use(address: str) -> bool:
            address = unquote_local_part(address)
            if owner is not None:
                return accounts.may_send_as(owner, address, delimiter)
            try:
                return str(parse_address(address)) == sender
            except AddressError:
                return False

        refusal = judge_author(head, may_use)
    finally:
        accounts.close()
    if refusal is not None:
        who = f"the account {owner}" if owner else f"the envelope sender {sender or '<>'}"
        raise CliError(f"message refused: {refusal.text} (judged as {who}; see -f)")


def default_sender(settings: Settings) -> str:
    return f"{getpass.getuser()}@{settings.domains[0]}"


def _checked(address: str, what: str) -> str:
    try:
        return str(parse_address(address))
    except AddressError as exc:
        raise CliError(f"bad {what} {address!r}: {exc}") from None


def _deliver_offline(settings: Settings, queue_id: str) -> dict[str, str]:
    """No server: deliver local recipients ourselves (see the module docstring)."""
    from pillarbox.delivery.local import LocalStore
    from pillarbox.delivery.pickup import Pickup
    from pillarbox.delivery.service import DeliveryService, QueueUnavailable
    from pillarbox.delivery.wiring import WithoutServer
    from pillarbox.store.accounts import open_accounts
    from pillarbox.store.mailbox import MailStore

    accounts = open_accounts(settings)
    # Our own mail store, so the mail is indexed as the server would have (no server runs).
    store = MailStore(
        settings.mail_dir, full_text=settings.store.full_text_index, hostname=settings.hostname
    )
    store.set_quota_lookup(lambda user: accounts.quota_of(user, settings.store.quota))
    services = WithoutServer(mail_store=store)
    service = DeliveryService(
        accounts,
        LocalStore(services),
        services,
        delimiter=settings.delivery.recipient_delimiter,
        domains=settings.domains,
        hostname=settings.hostname,
    )

    async def process() -> dict[str, str]:
        try:
            return await Pickup(settings, service).process(queue_id)
        finally:
            await store.close()

    try:
        return asyncio.run(process())
    except QueueUnavailable:
        return {"*": "deferred"}
    finally:
        accounts.close()


def run(args: argparse.Namespace) -> int:
    from pillarbox.delivery.pickup import PickupEnvelope, pickup_dir, write_entry

    settings = load_settings(args)
    limit = settings.delivery.max_message_size
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise CliError(f"message larger than delivery.max_message_size ({limit} bytes)")
    raw_sender = args.sender if args.sender is not None else default_sender(settings)
    sender = "" if raw_sender in ("", "<>") else _checked(raw_sender.strip("<>"), "sender")
    queue_id = new_queue_id()
    message, recipients = prepare_message(
        data,
        sender=sender,
        full_name=args.full_name,
        extract=args.extract,
        recipients=[_checked(r, "recipient") for r in args.recipients],
        hostname=settings.hostname,
        origin=settings.domains[0],
        queue_id=queue_id,
    )
    if not recipients:
        raise CliError("no recipients (give them as arguments, or use -t)")
    recipients = [_checked(r, "recipient") for r in recipients]
    judge_from(settings, message, sender)
    uid = os.getuid()
    write_entry(
        pickup_dir(settings), PickupEnvelope(queue_id, sender, tuple(recipients), uid), message
    )
    try:
        results: dict[str, str] = control.call(
            settings.control_socket, "sendmail.pickup", {"id": queue_id}, timeout=60
        )
    except control.ServerNotRunning:
        results = _deliver_offline(settings, queue_id)
    return _report(queue_id, results)


def _report(queue_id: str, results: dict[str, Any]) -> int:
    from pillarbox.delivery.service import MAILBOX_FULL

    status = 0
    for recipient, outcome in results.items():
        if outcome == "deferred":
            print(
                f"pillarbox: {queue_id}: queued; remote recipients are delivered when "
                "pillarbox serve runs",
                file=sys.stderr,
            )
        elif outcome == MAILBOX_FULL:
            # Accepted all the same (durable in the pickup directory, tried every minute),
            # as Postfix's sendmail exits 0 for mail its queue defers.
            print(
                f"pillarbox: {queue_id}: {recipient}: mailbox full; kept and delivered "
                "when there is room",
                file=sys.stderr,
            )
        elif outcome not in ("delivered", "queued"):
            print(f"pillarbox: {queue_id}: {recipient}: {outcome}", file=sys.stderr)
            status = 1
    return status


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", dest="sender", metavar="FROM", help="envelope sender")
    parser.add_argument("-F", dest="full_name", metavar="NAME", help="full name for From:")
    parser.add_argument(
        "-t", dest="extract", action="store_true", help="recipients from To/Cc/Bcc headers"
    )
    parser.add_argument("-i", action="store_true", help="accepted; a dot never ends input")
    parser.add_argument("-o", action="append", default=[], metavar="OPT", help="ignored")
    parser.add_argument("recipients", nargs="*", metavar="RCPT")


COMMANDS = [
    Command(
        ("sendmail",),
        "sendmail-compatible local submission from stdin",
        run,
        _arguments,
        __doc__.split("\n\n", 1)[1] if __doc__ else "",
    )
]

"""May this author send this message? The From/Sender rule of submission and sendmail.

RFC 6409 §6.1 lets a submission server check that the author is the authenticated user;
we must, because DMARC and every mail client trust the From header, not the login. The
rule, over what :mod:`pillarbox.mime.author` reports:

- exactly one From field (RFC 5322 §3.6 allows one) and at most one Sender;
- From names at least one mailbox, no group (RFC 6854 groups in From are for messages
  without an author, not for submission), every addr-spec with a domain and without an
  RFC 2047 encoded word (RFC 2047 §5(3) forbids them there);
- several From mailboxes need a Sender with exactly one mailbox (RFC 5322 §3.6.2) that the
  user owns;
- every address any reader sees (ENVELOPE's parse, the email package's, and address-like
  text in display names and comments) must be one the user may use.

``may_use`` answers ownership (the user's own address, its ``+tag`` forms, aliases leading
to it and its send-as grants: see ``Accounts.may_send_as``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pillarbox.mime.author import AuthorField, has_encoded_word, read_author_field


@dataclass(frozen=True)
class AuthorRefusal:
    """Why the author fields are refused: ``spoof`` (not the user's: 5.7.1) or a
    malformed field (5.6.0), with a text that names the field or address."""

    text: str
    spoof: bool = True


def judge_author(head: bytes, may_use: Callable[[str], bool]) -> AuthorRefusal | None:
    """None when ``head`` (a CRLF header block) may be sent by the user behind ``may_use``."""
    author = read_author_field(head, "from")
    if author.count == 0:
        return AuthorRefusal("Message has no From header", spoof=False)
    if author.count > 1:
        return AuthorRefusal(f"Message has {author.count} From headers; only one is allowed")
    refusal = _malformed(author, "From") or _judge_sender(head, author, may_use)
    return refusal or _judge_addresses(author, "From", may_use)


def _malformed(author: AuthorField, label: str) -> AuthorRefusal | None:
    if author.has_group:
        return AuthorRefusal(f"{label} header holds a group; name your own address")
    if not author.mailboxes:
        return AuthorRefusal(f"{label} header has no valid address", spoof=False)
    for mailbox in author.mailboxes:
        if not mailbox.local:
            return AuthorRefusal(f"{label} header holds an empty address", spoof=False)
        if not mailbox.host:
            return AuthorRefusal(f"{label} address {mailbox.local!r} has no domain", spoof=False)
        if has_encoded_word(mailbox.address):
            return AuthorRefusal(f"{label} address {mailbox.address} holds an encoded word")
    return None


def _judge_sender(
    head: bytes, author: AuthorField, may_use: Callable[[str], bool]
) -> AuthorRefusal | None:
    """A Sender, when present, is shown too ("on behalf of"); with several From mailboxes
    it is required (RFC 5322 §3.6.2)."""
    sender = read_author_field(head, "sender")
    if sender.count > 1:
        return AuthorRefusal(f"Message has {sender.count} Sender headers; only one is allowed")
    if sender.count == 0:
        if len(author.mailboxes) == 1:
            return None
        return AuthorRefusal(
            f"From names {len(author.mailboxes)} addresses; RFC 5322 3.6.2 then needs a "
            "Sender header with one address of yours"
        )
    if len(sender.mailboxes) > 1:
        return AuthorRefusal("Sender header must name exactly one address")
    return _malformed(sender, "Sender") or _judge_addresses(sender, "Sender", may_use)


def _judge_addresses(
    author: AuthorField, label: str, may_use: Callable[[str], bool]
) -> AuthorRefusal | None:
    for mailbox in author.mailboxes:
        if not may_use(mailbox.address):
            return AuthorRefusal(f"{label} address {mailbox.address} is not yours to send as")
    for shown in author.shown:
        if not may_use(shown):
            return AuthorRefusal(f"{label} header shows {shown}, which is not yours to send as")
    return None

"""What delivery reads from the app's services (``app.Services`` has every field).

Typed views, not a registry: the SMTP backend, the delivery service and the local store
each declare the few services they use and look them up when they use them (not once at
start-up), so a service a reload replaces (the resolver, rebuilt from ``[dns]``) is the one
the next message sees. ``cli/sendmail`` delivers without a server through
:class:`WithoutServer`.

The mail store's views (``MailDelivery``, ``QuotaCheck``) are the neutral API's own
(:mod:`pillarbox.mailstore.api`), not copies of it: ``deliver`` has one signature, which
every store implements and mypy checks where the store declares its conformance.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pillarbox.mailstore.api import MailDelivery, QuotaCheck
from pillarbox.queue.api import QueueService

if TYPE_CHECKING:  # imported when first used, like the modules that use them
    from pillarbox.dns.resolver import Resolver
    from pillarbox.spam.engine import SpamFilter


class MailboxEvents(Protocol):
    """Told after local delivery wrote into a Maildir, so IDLE clients hear of it."""

    def notify_new_mail(
        self, user_address: str, mailbox: str = "INBOX"
    ) -> Awaitable[None] | None: ...


class LocalServices(Protocol):
    """What local delivery uses."""

    @property
    def mail_store(self) -> MailDelivery | None: ...


class RoutingServices(Protocol):
    """What the delivery service uses: the queue takes the remote recipients; the mail
    store answers quota questions."""

    @property
    def queue(self) -> QueueService | None: ...

    @property
    def mail_store(self) -> QuotaCheck | None: ...


class InboundServices(Protocol):
    """What the SMTP backend uses to judge inbound mail."""

    @property
    def resolver(self) -> Resolver: ...

    @property
    def spam(self) -> SpamFilter | None: ...

    @property
    def mail_store(self) -> QuotaCheck | None: ...


class DeliveryStore(MailDelivery, QuotaCheck, Protocol):
    """The mail store as the SMTP component uses it: deliveries and quota checks."""


@dataclass(frozen=True)
class WithoutServer:
    """No running server (``pillarbox sendmail`` delivering itself): no queue to hand
    remote recipients to, no IMAP session to tell of new mail; a mail store of its own."""

    queue: QueueService | None = None
    mailbox_events: MailboxEvents | None = None
    mail_store: DeliveryStore | None = None

"""The outbound queue's public interface: what other components call.

The SMTP/delivery engineer hands remote recipients to the queue through
``ctx.services.queue``, an object satisfying :class:`QueueService`::

    queue = ctx.services.queue  # a QueueService, or None without the queue
    queue_id = await queue.enqueue(
        "alice@example.test",
        [OutboundRecipient("bob@remote.test", notify=frozenset({"FAILURE"}))],
        [received_header_bytes, spool_path],
        envid="abc", ret="HDRS",
    )

``message`` is the message as parts, concatenated in order: ``bytes`` (e.g. prepended
trace headers) and ``Path`` (spool files, copied, never moved; the caller may delete them
once ``enqueue`` returns). When ``enqueue`` returns, the message file and its directory are
fsync'd and the queue state is committed: the caller may answer 250 to its client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# RFC 3461 §4.1: NEVER, or any of SUCCESS, FAILURE, DELAY.
NOTIFY_KEYWORDS = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4.3
RET_KEYWORDS = frozenset({"FULL", "HDRS"})


class QueueError(Exception):
    """The message could not be queued (disk full, bad arguments): answer 4xx/5xx."""


@dataclass(frozen=True)
class OutboundRecipient:
    """One envelope recipient of a queued message, with its RFC 3461 DSN parameters.

    ``notify`` holds the upper-case NOTIFY keywords given by the client (empty: not given,
    which means FAILURE and DELAY per RFC 3461 §4.1). ``orcpt`` is the ORCPT value as
    received (``addr-type;xtext``), passed on to peers that support DSN.
    """

    address: str
    notify: frozenset[str] = field(default_factory=frozenset)
    orcpt: str | None = None


class QueueService(Protocol):
    """The queue as seen by the components that put mail into it."""

    async def enqueue(
        self,
        sender: str,
        recipients: Sequence[OutboundRecipient],
        message: Sequence[bytes | Path],
        *,
        envid: str | None = None,
        ret: str | None = None,
        queue_id: str | None = None,
    ) -> str:
        """Store the message durably for delivery to ``recipients``; returns the queue id.

        ``sender`` is the envelope sender ("" for the null sender: bounces, which are never
        bounced themselves). ``envid``/``ret`` are the RFC 3461 ENVID and RET parameters.
        ``queue_id`` reuses an id already assigned by the caller (so the log lines of the
        receiving session and of the queue share it); else a new one is made.
        Raises :class:`QueueError` when the message cannot be stored.
        """
        ...

"""The sendmail pickup directory: how ``pillarbox sendmail`` hands mail to the server.

Like Postfix's maildrop + pickup, in two steps so that it works whether or not the server
runs, and never loses a message:

1. ``pillarbox sendmail`` writes ``DATA_DIR/spool/pickup/ID.msg`` (the message, CRLF) and
   then ``ID.env`` (JSON envelope: sender, recipients, the local user), each via a
   temporary name, fsync and rename, then fsyncs the directory. An entry is complete when
   its ``.env`` exists. From here on the message is durable.
2. It asks the running server over the control socket (``sendmail.pickup``) to deliver that
   entry now, and prints the per-recipient results. If no server is running, the command
   delivers local recipients itself (Maildir writes need no server); entries with remote
   recipients stay in the directory and the server delivers them when it starts (it scans
   the directory at start-up and every minute).

Delivery of an entry prepends ``Received: by HOST (Pillarbox, from userid UID) id ID; DATE``
(as Postfix's pickup does), then routes the recipients through the delivery service and
removes the files only after the Maildir copies and the queue are durable. A local user
over quota is held in the entry and tried again (see :meth:`Pickup.process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.core.ids import new_queue_id
from pillarbox.delivery.service import DeliveryError, DeliveryService, QueueUnavailable, head_of
from pillarbox.queue import dsn
from pillarbox.store.maildir import fsync_dir

_log = log.get("pickup")

RESCAN_INTERVAL = 60.0
MAX_ENVELOPE = 1 << 20


def pickup_dir(settings: Settings) -> Path:
    return settings.data_dir / "spool" / "pickup"


@dataclass(frozen=True)
class PickupEnvelope:
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    uid: int

    def to_json(self) -> bytes:
        return json.dumps(
            {"sender": self.sender, "recipients": list(self.recipients), "uid": self.uid}
        ).encode()

    @classmethod
    def from_json(cls, queue_id: str, data: bytes) -> PickupEnvelope:
        raw = json.loads(data)
        recipients = raw["recipients"]
        if not isinstance(raw["sender"], str) or not all(isinstance(r, str) for r in recipients):
            raise ValueError("malformed envelope")
        return cls(queue_id, raw["sender"], tuple(recipients), int(raw.get("uid", -1)))


def _write_durably(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def write_entry(directory: Path, envelope: PickupEnvelope, message: bytes) -> None:
    """Step 1 of the module docstring (blocking; the CLI calls it)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # When root submits for a server that runs as its own user, give the files to that user.
    st = directory.parent.parent.stat()
    owner = (st.st_uid, st.st_gid) if os.getuid() == 0 and st.st_uid != 0 else None
    _write_durably(directory / f"{envelope.queue_id}.msg", message, owner)
    _write_durably(directory / f"{envelope.queue_id}.env", envelope.to_json(), owner)
    fsync_dir(directory)


def pickup_received(hostname: str, envelope: PickupEnvelope) -> bytes:
    now = format_datetime(datetime.now(UTC))
    return (
        f"Received: by {hostname} (Pillarbox, from userid {envelope.uid})\r\n"
        f"\tid {envelope.queue_id}; {now}\r\n"
    ).encode()


class Pickup:
    """Delivers pickup entries (see the module docstring)."""

    def __init__(self, settings: Settings, delivery: DeliveryService):
        self.directory = pickup_dir(settings)
        self.hostname = settings.hostname
        self.lifetime = float(settings.delivery.queue_lifetime)
        self.delivery = delivery
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._task = asyncio.create_task(self._rescan_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _rescan_forever(self) -> None:
        while True:
            try:
                await self.process_all()
            except Exception:
                _log.error("pickup scan failed", exc_info=True)
            await asyncio.sleep(RESCAN_INTERVAL)

    def pending(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.env"))

    async def process_all(self) -> None:
        for queue_id in self.pending():
            try:
                await self.process(queue_id)
            except (QueueUnavailable, FileNotFoundError):
                continue  # no queue yet / taken by a concurrent control call
            except Exception:
                # One bad entry must not hold up the others; it stays for the admin to see.
                _log.error("pickup entry failed", queue_id=queue_id, exc_info=True)

    async def process(self, queue_id: str) -> dict[str, str]:
        """Deliver one entry and remove it; raises DeliveryError (entry kept) on failure.

        A local user whose quota the message would pass is held (RFC 9208: a full mailbox
        is a temporary failure, as SMTP's 452 4.2.2): the entry stays, naming only the held
        users, and the rescan tries again every minute; after ``[delivery] queue_lifetime``
        the sender gets a failure report instead, as the outbound queue would send."""
        if not queue_id.isalnum():
            raise FileNotFoundError(queue_id)
        async with self._lock:  # the rescan and a control call must not deliver twice
            env_path = self.directory / f"{queue_id}.env"
            msg_path = self.directory / f"{queue_id}.msg"
            raw = await asyncio.to_thread(env_path.read_bytes)
            if len(raw) > MAX_ENVELOPE:
                raise DeliveryError("pickup envelope too large")
            try:
                envelope = PickupEnvelope.from_json(queue_id, raw)
            except (ValueError, KeyError, TypeError) as exc:
                raise DeliveryError(f"malformed pickup envelope {queue_id}") from exc
            results, held = await self.delivery.deliver_within_quota(
                envelope.sender,
                envelope.recipients,
                [pickup_received(self.hostname, envelope), msg_path],
                queue_id=queue_id,
            )
            if held and not await self._expired(msg_path):
                await asyncio.to_thread(self._keep_for, env_path, envelope, held)
            else:
                if held:
                    await self._bounce_held(envelope, held, msg_path)
                env_path.unlink(missing_ok=True)  # first: the entry is no longer pending
                await asyncio.to_thread(msg_path.unlink, missing_ok=True)
        _log.info(
            "message", queue_id=queue_id, source="sendmail", uid=envelope.uid,
            **{"from": f"<{envelope.sender}>"}, to=",".join(envelope.recipients),
            result=",".join(f"{k}={v}" for k, v in results.items()),
        )  # fmt: skip
        return results

    async def _expired(self, msg_path: Path) -> bool:
        written = (await asyncio.to_thread(msg_path.stat)).st_mtime
        return time.time() - written > self.lifetime

    def _keep_for(self, env_path: Path, envelope: PickupEnvelope, users: list[str]) -> None:
        """Rewrite the entry's envelope to name only ``users`` (blocking). A crash before
        the rename leaves the old envelope: the others get a second copy, never none."""
        kept = dataclasses.replace(envelope, recipients=tuple(users))
        _write_durably(env_path, kept.to_json(), None)
        fsync_dir(self.directory)

    async def _bounce_held(
        self, envelope: PickupEnvelope, users: list[str], msg_path: Path
    ) -> None:
        """RFC 3464 failure report to the sender for users still full at the end of the
        queue lifetime (none to the null sender, RFC 3461 §6.2)."""
        _log.info("mailbox full, giving up", queue_id=envelope.queue_id, to=",".join(users))
        if not envelope.sender:
            return
        head = await asyncio.to_thread(head_of, [msg_path])
        reports = [
            dsn.RecipientReport(
                address=user,
                action="failed",
                status="5.2.2",
                explanation="mailbox full for longer than the queue lifetime",
            )
            for user in users
        ]
        report = dsn.build_dsn(
            hostname=self.hostname, queue_id=envelope.queue_id, sender=envelope.sender,
            reports=reports, original=head, arrival=time.time(), ret="HDRS",
        )  # fmt: skip
        await self.delivery.deliver("", [envelope.sender], [report], queue_id=new_queue_id())

    async def control_method(self, params: dict[str, Any]) -> dict[str, str]:
        queue_id = str(params.get("id", ""))
        try:
            return await self.process(queue_id)
        except QueueUnavailable:
            return {"*": "deferred"}
        except FileNotFoundError:
            return {"*": "unknown entry"}

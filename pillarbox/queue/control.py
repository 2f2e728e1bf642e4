"""The queue's control-socket methods (``pillarbox queue list|show|flush|delete``) and the
listing they return, which the CLI also builds itself from a store it opens when no
server runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pillarbox import log
from pillarbox.control import ControlError, ControlServer
from pillarbox.queue import dsn as dsnlib
from pillarbox.queue.parts import read_limited
from pillarbox.queue.reports import QueueDb
from pillarbox.queue.store import QueueStoreBase, Recipient, is_queue_id

_log = log.get("queue")
MAX_SHOW_HEADER = 8192


class QueueControl:
    """``queue.list``, ``queue.show``, ``queue.flush`` and ``queue.delete``."""

    def __init__(self, db: QueueDb, flushed: Callable[[], None]):
        self.db = db
        self.flushed = flushed  # after a flush: resume paused destinations, wake the runner

    def register(self, control: ControlServer) -> None:
        control.register("queue.list", self.list)
        control.register("queue.show", self.show)
        control.register("queue.flush", self.flush)
        control.register("queue.delete", self.delete)

    async def list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.db(list_entries)

    async def show(self, params: dict[str, Any]) -> dict[str, Any]:
        queue_id = str(params.get("id", ""))
        entry = await self.db(lambda s: show_entry(s, queue_id))
        if entry is None:
            raise ControlError(f"no such message in the queue: {queue_id}")
        return entry

    async def flush(self, params: dict[str, Any]) -> int:
        queue_id = str(params["id"]) if params.get("id") else None
        if queue_id is not None and await self.db(lambda s: s.message(queue_id)) is None:
            raise ControlError(f"no such message in the queue: {queue_id}")
        count = await self.db(lambda s: s.flush(queue_id))
        _log.info("flush", queue_id=queue_id or "all", recipients=count)
        self.flushed()
        return count

    async def delete(self, params: dict[str, Any]) -> bool:
        queue_id = str(params.get("id", ""))
        if not await self.db(lambda s: s.delete(queue_id)):
            raise ControlError(f"no such message in the queue: {queue_id}")
        _log.info("deleted by admin", queue_id=queue_id)
        return True


def list_entries(store: QueueStoreBase) -> list[dict[str, Any]]:
    out = []
    for m in store.messages():
        recipients = store.recipients(m.id)
        out.append(
            {
                "id": m.id,
                "sender": m.sender,
                "created": m.created,
                "size": m.size,
                "recipients": [_recipient_dict(r) for r in recipients],
            }
        )
    return out


def show_entry(store: QueueStoreBase, queue_id: str) -> dict[str, Any] | None:
    m = store.message(queue_id) if is_queue_id(queue_id) else None
    if m is None:
        return None
    header = b""
    with contextlib.suppress(OSError):
        header = dsnlib.header_block(read_limited(store.message_path(queue_id), MAX_SHOW_HEADER))
    return {
        "id": m.id,
        "sender": m.sender,
        "created": m.created,
        "size": m.size,
        "envid": m.envid,
        "ret": m.ret,
        "eightbit": m.eightbit,
        "smtputf8": m.smtputf8,
        "recipients": [_recipient_dict(r) for r in store.recipients(queue_id)],
        "attempts": store.attempts(queue_id),
        "header": header.decode("utf-8", errors="replace"),
    }


def _recipient_dict(r: Recipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "state": r.state,
        "attempts": r.attempts,
        "next_attempt": r.next_attempt,
        "last_reply": r.last_reply,
        "remote_mta": r.remote_mta,
    }

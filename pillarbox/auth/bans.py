"""Bans: client keys shut out of every listener for a while, and the file that keeps them.

The n-th ban of one key lasts ``ban_time * 2**(n-1)`` seconds, at most ``ban_time_max``.
After a ban ends the key's ban count is remembered for another ``ban_time_max`` seconds, so
an attacker who comes back the next hour gets the doubled ban; a key quiet for longer starts
again at ``ban_time``. Expiry needs no timer: a heap of deadlines is consulted on each
look-up, which costs nothing until a deadline has passed.

Bans outlive a restart (an administrator expects ``pillarbox bans list`` to stay truthful
and an attacker should not be let in by a ``systemctl restart``): ``BanFile`` keeps them as
JSON in the data dir, with wall-clock deadlines; the ``BanList`` itself runs on the
monotonic clock.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox import log

_log = log.get("auth")

FILE_VERSION = 1


@dataclass
class Ban:
    client: str
    until: float  # on the BanList's clock
    failures: int  # the failures that brought the ban
    count: int  # 1 for the key's first ban, 2 for its first repeat, ...
    active: bool = True


@dataclass(frozen=True)
class BanPolicy:
    ban_time: float
    ban_time_max: float

    def duration(self, count: int) -> float:
        return min(self.ban_time_max, self.ban_time * 2.0 ** min(count - 1, 62))


class BanList:
    def __init__(self, policy: BanPolicy, clock: Callable[[], float], *, max_entries: int = 20000):
        self.policy = policy
        self._clock = clock
        self._max_entries = max_entries
        self._bans: dict[str, Ban] = {}
        # (when, key, the ban's until then): an expiry if the ban is still active with that
        # until, else the end of its repeat memory. Stale entries are skipped.
        self._deadlines: list[tuple[float, str, float]] = []

    def __len__(self) -> int:
        return len(self._bans)

    def is_banned(self, key: str) -> bool:
        ban = self._bans.get(key)
        if ban is None or not ban.active:
            return False
        if ban.until > self._clock():
            return True
        self.expire_due()
        return False

    def ban(self, key: str, failures: int) -> Ban:
        now = self._clock()
        self.expire_due()
        previous = self._bans.get(key)
        count = previous.count + 1 if previous is not None else 1
        seconds = self.policy.duration(count)
        ban = Ban(key, now + seconds, failures, count)
        self._bans[key] = ban
        heapq.heappush(self._deadlines, (ban.until, key, ban.until))
        self._bound()
        return ban

    def unban(self, key: str) -> Ban | None:
        """Lift ``key``'s ban and forget its history; the ban if it was active, else None."""
        self.expire_due()
        ban = self._bans.pop(key, None)
        return ban if ban is not None and ban.active else None

    def active(self) -> list[Ban]:
        self.expire_due()
        return sorted((b for b in self._bans.values() if b.active), key=lambda b: b.until)

    def expire_due(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key, until = heapq.heappop(self._deadlines)
            ban = self._bans.get(key)
            if ban is None or ban.until != until:
                continue  # lifted, or banned again since
            if ban.active:
                ban.active = False
                _log.info("ban expired", client=key, bans=ban.count)
                memory_end = until + self.policy.ban_time_max
                heapq.heappush(self._deadlines, (memory_end, key, until))
            else:
                del self._bans[key]

    def snapshot(self, wall_offset: float) -> list[dict[str, Any]]:
        """Every ban and remembered ban, deadlines on the wall clock (clock + offset)."""
        return [
            {
                "client": b.client,
                "until": round(b.until + wall_offset, 3),
                "failures": b.failures,
                "count": b.count,
            }
            for b in self._bans.values()
        ]

    def restore(self, entries: list[dict[str, Any]], wall_offset: float) -> None:
        now = self._clock()
        for entry in entries:
            until = float(entry["until"]) - wall_offset
            if until + self.policy.ban_time_max <= now:
                continue  # its repeat memory is over too
            ban = Ban(entry["client"], until, entry["failures"], entry["count"])
            ban.active = until > now
            self._bans[ban.client] = ban
            memory_end = until if ban.active else until + self.policy.ban_time_max
            heapq.heappush(self._deadlines, (memory_end, ban.client, until))
        self._bound()

    def _bound(self) -> None:
        """Past max_entries drop remembered bans first, then those ending soonest."""
        excess = len(self._bans) - self._max_entries
        if excess <= 0:
            return
        _log.warning("ban table full", entries=len(self._bans), dropped=excess)
        order = sorted(self._bans.values(), key=lambda b: (b.active, b.until))
        for ban in order[:excess]:
            del self._bans[ban.client]


class BanFile:
    """``bans.json`` in the data dir: written whole, atomically (a reader sees old or new)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """The saved entries; a missing or unreadable file is no bans (and logged)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["bans"]
            if data.get("version") != FILE_VERSION or not isinstance(entries, list):
                raise ValueError("unknown format")
            return [_checked(entry) for entry in entries]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("ban file ignored", path=str(self.path), reason=str(exc))
            return []

    def write(self, entries: list[dict[str, Any]]) -> None:
        """Blocking (a worker thread's job): temp file, fsync, rename, fsync the folder."""
        data = json.dumps({"version": FILE_VERSION, "bans": entries}, indent=1) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _checked(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "client": str(entry["client"]),
        "until": float(entry["until"]),
        "failures": int(entry["failures"]),
        "count": int(entry["count"]),
    }

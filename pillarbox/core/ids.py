"""Queue ids: short, unique, sortable by time, safe in file names and log lines.

Like Postfix's long queue ids: 10 hex digits of microseconds since the epoch (so ids sort
in arrival order) plus 6 random hex digits (so two processes never collide).
"""

from __future__ import annotations

import secrets
import time


def new_queue_id() -> str:
    micros = time.time_ns() // 1000
    return f"{micros & 0xFFFFFFFFFFFFF:013X}{secrets.token_hex(3).upper()}"

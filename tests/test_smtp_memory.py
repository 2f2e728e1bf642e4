"""DATA streams to disk: a 30 MB message costs the server a few MB of memory, not 30."""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests import pbserver
from tests.mailfiles import delivered


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_big_message_does_not_sit_in_memory(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    pbserver.add_user(settings, "alice@example.test")
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    message = b"Subject: big\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
    with pbserver.SubprocessServer(settings) as server:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as client:
            client.noop()
            before = peak_rss_kib(server.proc.pid)
            client.sendmail("s@remote.test", ["alice@example.test"], message)
        growth = peak_rss_kib(server.proc.pid) - before
    assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB for a 30 MB message"
    (stored,) = delivered(settings, "alice")
    assert stored.stat().st_size > len(message)

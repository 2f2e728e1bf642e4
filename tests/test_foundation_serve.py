"""`pillarbox serve` as a process: starts, answers, reloads safely, stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from pillarbox.net import control
from tests import pbserver


def test_serve_starts_answers_and_stops_within_2s(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    with pbserver.SubprocessServer(settings) as proc:
        status = control.call(settings.control_socket, "server.status")
        assert status["pid"] == proc.proc.pid
        for host, port in proc.addresses.values():
            with socket.create_connection((host, port), timeout=2):
                pass
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 2.0
    assert "event=stopped" in proc.log()


def test_bad_config_on_sighup_keeps_the_old_one(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    assert settings.source is not None
    with pbserver.SubprocessServer(settings) as proc:
        good = settings.source.read_text()
        settings.source.write_text(good + "\nbogus_key = 1\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload refused" not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "bogus_key" in proc.log()
        assert control.call(settings.control_socket, "server.status")["pid"] == proc.proc.pid
        settings.source.write_text(good)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "event=reloaded" not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "event=reloaded" in proc.log()

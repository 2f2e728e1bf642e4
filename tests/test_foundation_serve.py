"""`pillarbox serve` as a process: starts, answers, reloads safely, stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from pillarbox import control
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


def test_root_binds_then_drops_to_the_configured_user(tmp_path: Path) -> None:
    import os
    import pwd
    import shutil
    import tempfile

    import pytest

    if os.getuid() != 0:
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    # Under /tmp (world-traversable), not pytest's 0700 tmp_path, so "nobody" can reach it.
    data = Path(tempfile.mkdtemp(prefix="pillarbox-drop-"))
    try:
        settings = pbserver.make_settings(data, {"user": "nobody"})
        with pbserver.SubprocessServer(settings) as proc:
            status = Path(f"/proc/{proc.proc.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
            assert (data / "pillarbox.db").stat().st_uid == nobody.pw_uid
            assert control.call(settings.control_socket, "server.status")["pid"] == proc.proc.pid
        assert 'event="dropped privileges" user=nobody' in proc.log()
    finally:
        shutil.rmtree(data, ignore_errors=True)

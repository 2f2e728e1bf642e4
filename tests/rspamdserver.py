"""A real rspamd (Debian's ``rspamd`` package) for the tests, on loopback ports.

Debian's stock configuration (/etc/rspamd) is used as it ships, with overrides in a
temporary ``LOCAL_CONFDIR``: the normal worker on a free port, the controller on another,
the proxy and fuzzy workers off, hyperscan off (compiling its databases takes seconds and
only speeds up regexps), the console log, and DNS pointed at the test's own DNS server
(rspamd asks RBLs and SURBLs; on loopback they get REFUSED at once instead of reaching the
internet). Its databases and pid file go to the temporary directory too.

:func:`start` raises ``pytest.skip`` with the reason when rspamd is not installed or does
not come up, so a machine without it skips the test with a message rather than failing.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

RSPAMD = "/usr/bin/rspamd"
START_TIMEOUT = 30.0


def _write_config(root: Path, port: int, controller: int, dns: str) -> None:
    override = root / "override.d"
    override.mkdir(parents=True)
    (root / "local.d").mkdir()
    (override / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    (override / "worker-controller.inc").write_text(
        f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\n'
    )
    (override / "worker-proxy.inc").write_text("enabled = false;\n")
    (override / "worker-fuzzy.inc").write_text("enabled = false;\n")
    (override / "logging.inc").write_text('type = "console";\nlevel = "error";\n')
    (root / "local.d" / "options.inc").write_text(
        "disable_hyperscan = true;\n"
        f'dns {{\n  nameserver = ["{dns}"];\n  timeout = 1s;\n  retransmits = 1;\n}}\n'
    )
    for name in ("db", "run", "log"):
        (root / name).mkdir()


@contextlib.contextmanager
def running(root: Path, dns: str) -> Iterator[str]:
    """rspamd running; yields its URL (``http://127.0.0.1:PORT``)."""
    if not Path(RSPAMD).exists() or shutil.which("rspamd") is None:
        pytest.skip("rspamd is not installed (Debian package rspamd)")
    port, controller = free_port(), free_port()
    _write_config(root, port, controller, dns)
    log = open(root / "rspamd.out", "wb")  # noqa: SIM115 (closed below)
    command = [RSPAMD, "-f", "-c", "/etc/rspamd/rspamd.conf",
               f"--var=LOCAL_CONFDIR={root}", f"--var=DBDIR={root / 'db'}",
               f"--var=RUNDIR={root / 'run'}", f"--var=LOGDIR={root / 'log'}"]  # fmt: skip
    if _is_root():
        command.insert(2, "-i")  # rspamd refuses to keep root without --insecure
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(proc, url, root)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _wait_up(proc: subprocess.Popen[bytes], url: str, root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = (root / "rspamd.out").read_text(errors="replace")[-2000:]
            pytest.skip(f"rspamd exited {proc.returncode} at start: {output}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.skip(f"rspamd did not answer on {url} within {START_TIMEOUT:g}s")

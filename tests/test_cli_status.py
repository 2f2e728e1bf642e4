"""``pillarbox status`` as a real subprocess, beside a real server and without one: the
listeners it reports answer, the queue and disk figures follow real mail, the last check
is the one `pillarbox check` just ran."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer

ALICE = "alice@example.test"


def status(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    return pillarbox(settings, "status", *extra)


def pillarbox(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert settings.source is not None
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def facts(settings: Settings) -> tuple[int, dict[str, Any]]:
    result = status(settings, "--format", "json")
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 0.5},
                # Remote delivery cannot succeed: the message waits in the queue.
                "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
            },
        )
        pbserver.add_user(settings, ALICE)
        yield settings


def submit(server: pbserver.SubprocessServer, settings: Settings, to: str, body: str) -> None:
    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as client:
        client.starttls(context=context)
        client.login(ALICE, pbserver.PASSWORD)
        client.sendmail(ALICE, [to], f"From: {ALICE}\r\nSubject: s\r\n\r\n{body}\r\n")


def test_status_without_a_server(settings: Settings) -> None:
    code, found = facts(settings)
    assert code == 3 and found["running"] is False and found["server"] is None
    assert found["queue"]["messages"] == 0 and found["last_check"] is None
    assert found["certificate"]["days_left"] > 0
    text = status(settings)
    assert text.returncode == 3 and "not running" in text.stdout and "never" in text.stdout


def test_status_of_a_running_server(settings: Settings) -> None:
    with pbserver.SubprocessServer(settings) as server:
        submit(server, settings, ALICE, ("x" * 70 + "\r\n") * 300)  # grows alice's disk use
        submit(server, settings, "friend@remote.test", "stays queued")
        checked = pillarbox(settings, "check", "--dns-only", "--format", "json")
        code, found = facts(settings)
        text = status(settings).stdout
        # Every listener it names takes a connection.
        every = [a for addresses in found["server"]["listeners"].values() for a in addresses]
        for address in every:
            host, _, port = address.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                pass
    assert code == 0 and found["running"] is True
    server_facts = found["server"]
    assert server_facts["pid"] == server.proc.pid and server_facts["uptime"] > 0
    assert found["queue"]["messages"] == 1 and found["queue"]["recipients"] == 1
    assert found["queue"]["oldest_age"] >= 0
    assert found["disk"][ALICE] > 20000
    report = json.loads(checked.stdout)
    last = found["last_check"]
    assert last["score"] == report["score"] and last["failed"] == (checked.returncode == 1)
    assert "running, pid" in text and "1 message(s)" in text and ALICE in text
    assert f"Last check:  {report['score']:g}/10 at " in text

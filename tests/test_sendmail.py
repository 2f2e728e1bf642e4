"""``pillarbox sendmail`` as a real subprocess: with a running server (control socket) and
without one (local delivery by the command, remote mail left for the server's start)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pillarbox import control
from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered


def sendmail(
    settings: Settings, args: list[str], message: bytes
) -> subprocess.CompletedProcess[bytes]:
    assert settings.source is not None
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "sendmail", *args],
        input=message, capture_output=True, timeout=30,
    )  # fmt: skip


def inbox(settings: Settings, user: str, mark: str) -> list[bytes]:
    return [p.read_bytes() for p in delivered(settings, user) if mark.encode() in p.read_bytes()]


@pytest.fixture
def dns() -> object:
    with DnsTestServer() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, dns: DnsTestServer) -> Settings:
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns.address], "timeout": 1.0},
            "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
        },
    )
    pbserver.add_user(settings, "alice@example.test")
    pbserver.add_user(settings, "bob@example.test")
    return settings


def test_with_running_server_extracts_recipients_and_completes_headers(settings: Settings) -> None:
    mark = uuid.uuid4().hex
    message = f"To: alice@example.test\nBcc: bob@example.test\nSubject: {mark}\n\ncron output\n"
    with pbserver.RunningServer(settings):
        result = sendmail(settings, ["-oi", "-t", "-f", "root@example.test"], message.encode())
    assert result.returncode == 0, result.stderr
    (alice,) = inbox(settings, "alice", mark)
    (bob,) = inbox(settings, "bob", mark)
    for stored in (alice, bob):
        assert b"\r\ncron output\r\n" in stored and b"\n\n" not in stored.replace(b"\r\n", b"")
        assert b"Bcc:" not in stored
        assert b"Return-Path: <root@example.test>" in stored
        assert b"From: root@example.test\r\n" in stored and b"\r\nDate: " in stored
        assert b"(Pillarbox, from userid " in stored and b"Message-ID: <" in stored
    assert not list((settings.data_dir / "spool" / "pickup").iterdir())


def test_unknown_recipient_fails(settings: Settings) -> None:
    with pbserver.RunningServer(settings):
        result = sendmail(settings, ["nobody@example.test"], b"Subject: x\n\nx\n")
    assert result.returncode == 1
    assert b"nobody@example.test: unknown" in result.stderr


def test_without_server_local_now_remote_at_start(settings: Settings) -> None:
    mark = uuid.uuid4().hex
    local = sendmail(
        settings, ["-F", "Cron Daemon", "alice@example.test"], f"Subject: {mark}\n\nx\n".encode()
    )
    assert local.returncode == 0, local.stderr
    (stored,) = inbox(settings, "alice", mark)
    assert b"From: Cron Daemon <" in stored
    remote = sendmail(settings, ["friend@remote.test"], b"Subject: later\n\nx\n")
    assert remote.returncode == 0 and b"queued" in remote.stderr
    pending = list((settings.data_dir / "spool" / "pickup").glob("*.env"))
    assert len(pending) == 1
    with pbserver.RunningServer(settings):
        # The server delivers pending pickup entries when it starts (into its outbound queue).
        deadline = time.monotonic() + 5
        while pending[0].exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        entry = control.call(
            settings.control_socket, "queue.show", {"id": pending[0].stem}, timeout=5
        )
    assert [r["address"] for r in entry["recipients"]] == ["friend@remote.test"]
    assert not pending[0].exists()


# -- the From rule (the same as submission's) ----------------------------------------------


def pickup_is_empty(settings: Settings) -> bool:
    pickup = settings.data_dir / "spool" / "pickup"
    return not pickup.is_dir() or not list(pickup.iterdir())


@pytest.mark.parametrize(
    "sender, author, why",
    [
        ("alice@example.test", "From: Alice <bob@example.test>", b"bob@example.test"),
        ("alice@example.test", 'From: "bob@example.test" <alice@example.test>', b"shows bob@"),
        ("alice@example.test", "From: alice@example.test\nFrom: bob@example.test", b"2 From"),
        ("root@example.test", "From: bob@example.test", b"bob@example.test"),  # From must be -f
    ],
)
def test_spoofed_from_is_refused_before_pickup(
    settings: Settings, sender: str, author: str, why: bytes
) -> None:
    mark = uuid.uuid4().hex
    data = f"{author}\nSubject: {mark}\n\nx\n".encode()
    result = sendmail(settings, ["-f", sender, "alice@example.test"], data)
    assert result.returncode != 0
    assert b"message refused" in result.stderr and why in result.stderr
    assert pickup_is_empty(settings) and not inbox(settings, "alice", mark)


@pytest.mark.parametrize(
    "sender, author, shown",
    [
        ("alice@example.test", "From: Alice <alice+cron@example.test>", b"alice+cron@"),
        ("alice+x@example.test", "From: Alice <alice@example.test>", b"<alice@example.test>"),
        ("root@example.test", "From: Root <root@example.test>", b"<root@example.test>"),
        # Debian's cron writes a bare local name: it gets the first domain (myorigin).
        (
            "root@example.test",
            "From: root (Cron Daemon)",
            b"From: Cron Daemon <root@example.test>\r\n",
        ),
    ],
)
def test_own_from_passes(settings: Settings, sender: str, author: str, shown: bytes) -> None:
    mark = uuid.uuid4().hex
    data = f"{author}\nSubject: {mark}\n\nx\n".encode()
    result = sendmail(settings, ["-f", sender, "alice@example.test"], data)
    assert result.returncode == 0, result.stderr
    (stored,) = inbox(settings, "alice", mark)
    assert shown in stored


# -- quota (RFC 9208): a full mailbox holds the entry, as SMTP answers 452 4.2.2 -------------


def set_quota(settings: Settings, address: str, size: str) -> None:
    assert settings.source is not None
    done = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "user", "quota",
         address, size],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def pickup_entries(settings: Settings) -> list[Path]:
    return sorted((settings.data_dir / "spool" / "pickup").glob("*.env"))


def test_full_mailbox_is_held_and_delivered_once_there_is_room(settings: Settings) -> None:
    set_quota(settings, "alice@example.test", "100")  # smaller than any message
    mark = uuid.uuid4().hex
    message = f"Subject: {mark}\n\nbackup report\n".encode()
    with pbserver.RunningServer(settings):
        result = sendmail(settings, ["alice@example.test", "bob@example.test"], message)
        # Accepted (durable in the pickup directory), not bounced: exit 0 with a note.
        assert result.returncode == 0, result.stderr
        assert b"alice@example.test: mailbox full; kept" in result.stderr
        assert len(inbox(settings, "bob", mark)) == 1 and not inbox(settings, "alice", mark)
        (entry,) = pickup_entries(settings)
        assert b'"recipients": ["alice@example.test"]' in entry.read_bytes()
        # Still full: another try holds it again and writes nothing.
        again = control.call(settings.control_socket, "sendmail.pickup", {"id": entry.stem})
        assert again == {"alice@example.test": "mailbox full"} and entry.exists()
        set_quota(settings, "alice@example.test", "1M")
        done = control.call(settings.control_socket, "sendmail.pickup", {"id": entry.stem})
        assert done == {"alice@example.test": "delivered"}
    assert len(inbox(settings, "alice", mark)) == 1
    assert len(inbox(settings, "bob", mark)) == 1  # the held retry did not copy bob again
    assert not list((settings.data_dir / "spool" / "pickup").iterdir())


def test_full_mailbox_past_the_queue_lifetime_bounces_to_the_sender(settings: Settings) -> None:
    set_quota(settings, "alice@example.test", "100")
    mark = uuid.uuid4().hex
    # No server: the command itself holds alice's copy (the same rule as the server's).
    result = sendmail(
        settings,
        ["-f", "bob@example.test", "alice@example.test"],
        f"Subject: {mark}\n\nx\n".encode(),
    )
    assert result.returncode == 0 and b"mailbox full" in result.stderr
    (entry,) = pickup_entries(settings)
    old = time.time() - settings.delivery.queue_lifetime - 60
    os.utime(entry.with_suffix(".msg"), (old, old))  # written before the queue lifetime
    with pbserver.RunningServer(settings):  # the start-up scan gives up on it
        deadline = time.monotonic() + 5
        while entry.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not entry.exists() and not inbox(settings, "alice", mark)
    (report,) = inbox(settings, "bob", mark)
    assert b"Return-Path: <>" in report
    assert b"Final-Recipient: rfc822; alice@example.test" in report
    assert b"Status: 5.2.2" in report and b"Action: failed" in report

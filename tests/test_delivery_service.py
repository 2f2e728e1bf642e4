"""``ctx.services.delivery.deliver``: routing (users, +tags with a multi-character
delimiter, aliases, catch-all, forwarding to a remote target via the queue), Maildir layout,
and the new-mail notification for IMAP IDLE."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pillarbox import control
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered


class Recorder:
    """Watches the mail store's change hub, as an IDLE session does."""

    def __init__(self, store: Any, users: list[str]) -> None:
        self.events: list[tuple[str, str]] = []
        self._unwatch = [store.hub.watch(u, partial(self._changed, u)) for u in users]

    def _changed(self, user: str, mailbox: str) -> None:
        self.events.append((user, mailbox))

    def close(self) -> None:
        for unwatch in self._unwatch:
            unwatch()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path_factory.mktemp("delivery") / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 1.0},
                "mailauth": {"verify_inbound": False},
                "delivery": {
                    "recipient_delimiter": "+-",
                    "smarthost": "127.0.0.1:9",
                    "mta_sts": False,
                },
            },
        )
        for user in ("alice", "bob"):
            pbserver.add_user(settings, f"{user}@example.test")
        pbserver.add_alias(settings, "fwd@example.test", "bob@example.test", "out@remote.test")
        pbserver.add_alias(settings, "@example.test", "alice@example.test")
        with pbserver.RunningServer(settings) as running:
            yield running


def deliver(server: pbserver.RunningServer, recipients: list[str], body: bytes, qid: str) -> Any:
    service = server.server.ctx.services.delivery
    return server.call(service.deliver("sender@remote.test", recipients, [body], queue_id=qid))


def inbox(server: pbserver.RunningServer, user: str) -> list[Path]:
    return delivered(server.settings, user)


async def _recorder(store: Any, users: list[str]) -> Recorder:
    return Recorder(store, users)  # made on the server's loop, where the hub calls it


async def _close(recorder: Recorder) -> None:
    recorder.close()


def test_routes_tags_catch_all_and_notifies(server: pbserver.RunningServer) -> None:
    store = server.server.ctx.services.mail_store
    recorder = server.call(_recorder(store, ["alice@example.test", "bob@example.test"]))
    try:
        results = deliver(
            server,
            ["bob-lists@example.test", "alice+x@example.test", "whoever@example.test",
             "bad address"],
            b"Subject: routed\r\n\r\nx\r\n",
            "0000000000001AAAAAA",
        )  # fmt: skip
    finally:
        server.call(_close(recorder))
    assert results == {
        "bob-lists@example.test": "delivered",
        "alice+x@example.test": "delivered",
        "whoever@example.test": "delivered",  # the catch-all
        "bad address": "unknown",
    }
    # alice is named twice (tag and catch-all): one copy, with Delivered-To per user.
    alice = [p.read_bytes() for p in inbox(server, "alice") if b"routed" in p.read_bytes()]
    assert len(alice) == 1 and alice[0].startswith(
        b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\n"
    )
    # Each user's watchers are told once its copy is stored and indexed.
    assert sorted(recorder.events) == [
        ("alice@example.test", "INBOX"),
        ("bob@example.test", "INBOX"),
    ]
    # Maildir file names carry the size (S=) of the stored file.
    name = inbox(server, "bob")[-1].name
    assert f",S={inbox(server, 'bob')[-1].stat().st_size}" in name


def test_alias_with_remote_target_is_forwarded_through_the_queue(
    server: pbserver.RunningServer,
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.ehlo("x.remote.test")
        client.mail("sender@remote.test")
        client.rcpt("fwd@example.test")
        code, text = client.data(b"From: sender@remote.test\r\nSubject: forwarded\r\n\r\nx\r\n")
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[-1]
    entry = control.call(server.settings.control_socket, "queue.show", {"id": queue_id}, timeout=5)
    assert [r["address"] for r in entry["recipients"]] == ["out@remote.test"]
    assert any(b"forwarded" in p.read_bytes() for p in inbox(server, "bob"))


def test_notify_success_sends_a_delivered_dsn(server: pbserver.RunningServer) -> None:
    mark = "dsn-" + str(time.time_ns())
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
        client.ehlo("x.remote.test")
        client.mail("bob@example.test", ["ENVID=" + mark])
        client.rcpt("alice@example.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;alice@example.test"])
        assert (
            client.data(f"From: bob@example.test\r\nSubject: {mark}\r\n\r\nx\r\n".encode())[0]
            == 250
        )
    reports = [
        p.read_bytes() for p in inbox(server, "bob") if b"Action: delivered" in p.read_bytes()
    ]
    report = next(r for r in reports if f"Original-Envelope-Id: {mark}".encode() in r)
    assert report.startswith(b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n")
    assert b"Final-Recipient: rfc822;alice@example.test" in report.replace(b"; ", b";")
    assert b"multipart/report" in report

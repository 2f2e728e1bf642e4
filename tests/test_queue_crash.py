"""kill -9 in the middle of a delivery, then restart: the message is delivered once.

Duplicates: none in this test, because the peer never answered the final dot before the
kill. They are possible only when the kill lands after the peer's 250 to the final dot and
before our commit of "sent" (a few milliseconds): the message is then sent again on restart,
the duplicate window RFC 5321 §6.1 / RFC 1047 describe for every MTA.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from pillarbox.config import Settings
from pillarbox.queue.api import OutboundRecipient
from pillarbox.queue.store import QueueStore, QueueStoreBase, open_store
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import MESSAGE, SENDER, queue_settings, wait_for
from tests.smtppeer import Received, SmtpPeer, free_port_on


def open_queue(settings: Settings) -> QueueStoreBase:
    store = open_store(settings)
    assert store is not None
    return store


def test_kill_9_mid_delivery_then_restart_delivers_once(
    tmp_path: Path, dns_server: DnsTestServer, store_backend: dict[str, str]
) -> None:
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    peer.hold_data = threading.Event()
    sessions: list[Received] = []

    def data_reply(msg: Received) -> str | None:
        sessions.append(msg)
        # The first session's client is dead by now: it never gets (nor needs) a 250.
        return "451 4.3.0 client went away" if len(sessions) == 1 else None

    peer.data_reply = data_reply
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    # On PostgreSQL the restarted process is a new node: it takes the dead one's claim
    # over once its lease (3 s here) runs out.
    settings = queue_settings(
        tmp_path, dns_server.address, port, store={**store_backend, "queue_lease": "3s"}
    )

    # Queue a message with the server stopped (as another process would), then start it.
    store = open_queue(settings)
    qid = "TESTKILL9000001"
    size, eightbit = store.write_spool(qid, [MESSAGE])
    store.add_message(
        qid,
        SENDER,
        [OutboundRecipient("bob@remote.test")],
        size=size,
        eightbit=eightbit,
        envid=None,
        ret=None,
    )
    store.close()

    try:
        first = pbserver.SubprocessServer(settings)
        wait_for(peer.data_started.is_set, timeout=25, what="delivery in progress")
        first.stop(signal.SIGKILL)
        peer.hold_data.set()

        store = open_queue(settings)
        (rcpt,) = store.recipients(qid)
        assert rcpt.state == "queued" and rcpt.attempts == 1
        assert store.attempts(qid)[0]["finished"] is None  # recorded before it was made
        store.close()

        peer.hold_data = None
        with pbserver.SubprocessServer(settings) as second:
            wait_for(lambda: peer.messages, timeout=25, what="delivery after restart")
            wait_for(
                lambda: not (settings.queue_dir / "msg" / qid).exists(),
                what="message retired",
            )
            log = second.log()
    finally:
        peer.close()
    assert len(peer.messages) == 1
    assert peer.messages[0].recipients == ["bob@remote.test"]
    assert "interrupted_attempts=1" in log
    assert f"queue_id={qid}" in log


def test_sigterm_lets_the_delivery_in_flight_finish(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    peer.hold_data = threading.Event()
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    settings = queue_settings(tmp_path, dns_server.address, port)
    store = QueueStore(settings.queue_dir)
    qid = "TESTTERM0000001"
    size, eightbit = store.write_spool(qid, [MESSAGE])
    store.add_message(
        qid, SENDER, [OutboundRecipient("bob@remote.test")], size=size, eightbit=eightbit,
        envid=None, ret=None,
    )  # fmt: skip
    store.close()
    try:
        server = pbserver.SubprocessServer(settings)
        wait_for(peer.data_started.is_set, timeout=25, what="delivery in progress")
        server.send_signal(signal.SIGTERM)
        threading.Timer(0.5, peer.hold_data.set).start()
        assert server.proc.wait(15) == 0
        server.stop()
    finally:
        peer.hold_data.set()
        peer.close()
    assert len(peer.messages) == 1
    assert not (settings.queue_dir / "msg" / qid).exists()

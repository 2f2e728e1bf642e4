"""Two `pillarbox serve` nodes sharing one PostgreSQL queue and one queue directory (a
symlink stands in for the shared filesystem), delivering to a sink SMTP server.

Each node sends from its own source address (``[delivery] bind_address``), so the sink
knows which node a delivery came from. What must hold:

- messages submitted through both nodes are each delivered exactly once;
- after ``kill -9`` of a node in the middle of its deliveries, the other node takes its
  claims over once their lease (3 s here) runs out and delivers everything, once. The
  sessions the dead node had open are answered 451 by the sink (their client is gone),
  so nothing it started counts as delivered. A kill landing after a peer's 250 and before
  the node's commit would make that message go out twice: SMTP's at-least-once
  duplicate window (RFC 5321 §6.1), which claims do not remove and this test does not
  provoke.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import SENDER, wait_for
from tests.smtppeer import SmtpPeer, free_port_on

NODE_IP = {"a": "127.0.0.5", "b": "127.0.0.6"}
LEASE = 3.0


def node(tmp_path: Path, name: str, dsn: str, dns: str, port: int) -> Settings:
    settings = pbserver.make_settings(
        tmp_path / name,
        {
            "store": {"backend": "postgresql", "dsn": dsn, "queue_lease": f"{LEASE:.0f}s"},
            "delivery": {
                "remote_port": port,
                "retry_initial": 1,
                "retry_max": 2,
                "queue_scan_interval": 1,
                "connect_timeout": 3,
                "mta_sts": False,
                "bind_address": NODE_IP[name],
            },
            "dns": {"nameservers": [dns], "timeout": 1.0},
        },
    )
    if name != "a":
        shared = tmp_path / "a" / "queue"
        shared.mkdir(exist_ok=True)
        shutil.rmtree(settings.queue_dir, ignore_errors=True)
        settings.queue_dir.symlink_to(shared, target_is_directory=True)
    return settings


def submit(settings: Settings, port: int, number: int) -> None:
    message = (
        f"From: {SENDER}\r\nTo: bob@remote.test\r\nSubject: number {number}\r\n"
        f"Message-ID: <n{number}@example.test>\r\n\r\nmessage {number}\r\n"
    )
    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.starttls(context=context)
        client.login(SENDER, pbserver.PASSWORD)
        client.sendmail(SENDER, ["bob@remote.test"], message.encode())


def numbers_delivered(peer: SmtpPeer) -> Counter[int]:
    delivered: Counter[int] = Counter()
    for msg in list(peer.messages):
        mark = msg.data.split(b"Message-ID: <n", 1)[1].split(b"@", 1)[0]
        delivered[int(mark)] += 1
    return delivered


def spool_empty(settings: Settings) -> bool:
    return not any((settings.queue_dir / "msg").iterdir())


def setup_world(
    tmp_path: Path, dns_server: DnsTestServer, pg_dsn: str
) -> tuple[SmtpPeer, Settings, Settings]:
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    a = node(tmp_path, "a", pg_dsn, dns_server.address, port)
    b = node(tmp_path, "b", pg_dsn, dns_server.address, port)
    pbserver.add_user(a, SENDER)  # in PostgreSQL: both nodes know it
    return peer, a, b


def test_messages_through_both_nodes_are_delivered_exactly_once(
    tmp_path: Path, dns_server: DnsTestServer, pg_dsn: str
) -> None:
    peer, a, b = setup_world(tmp_path, dns_server, pg_dsn)
    count = 24
    try:
        with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
            nodes = [(a, node_a), (b, node_b)]
            for number in range(count):
                settings, running = nodes[number % 2]
                submit(settings, running.port("submission"), number)
            wait_for(lambda: sum(numbers_delivered(peer).values()) >= count, timeout=60,
                     what="every message delivered")  # fmt: skip
            wait_for(lambda: spool_empty(a), what="every message retired")
            time.sleep(1.5)  # a scan of each node later: still nothing sent twice
            logs = node_a.log() + node_b.log()
    finally:
        peer.close()
    assert numbers_delivered(peer) == Counter(range(count))
    assert logs.count("event=sent ") == count
    assert "claim renewal failed" not in logs


def test_kill_9_of_a_node_mid_delivery_hands_its_claims_to_the_other(
    tmp_path: Path, dns_server: DnsTestServer, pg_dsn: str
) -> None:
    peer, a, b = setup_world(tmp_path, dns_server, pg_dsn)
    peer.hold_data = threading.Event()
    # Node A's sessions are held at the final dot until A is dead, then refused: A never
    # learns of a delivery, so every message is A's unfinished work.
    peer.data_reply = lambda msg: (
        "451 4.3.0 client went away" if msg.peer_ip == NODE_IP["a"] else None
    )
    count = 8
    try:
        with pbserver.SubprocessServer(b) as node_b:
            node_a = pbserver.SubprocessServer(a)
            try:
                for number in range(count):
                    submit(a, node_a.port("submission"), number)
                wait_for(peer.data_started.is_set, timeout=20, what="node A delivering")
                time.sleep(0.5)
                # A holds every claim and renews it: B has not touched any of them.
                assert "queue event=connected" not in node_b.log()
                node_a.stop(signal.SIGKILL)
                killed = time.monotonic()
            finally:
                node_a.stop(signal.SIGKILL)
            peer.hold_data.set()
            wait_for(lambda: sum(numbers_delivered(peer).values()) >= count, timeout=30,
                     what="node B delivered everything")  # fmt: skip
            taken_over_after = time.monotonic() - killed
            wait_for(lambda: spool_empty(a), what="every message retired")
            time.sleep(1.5)
            log_b = node_b.log()
    finally:
        peer.close()
    assert numbers_delivered(peer) == Counter(range(count))
    assert {m.peer_ip for m in peer.messages} == {NODE_IP["b"]}
    # Taken over once A's leases ran out (at most LEASE after the kill), not stuck.
    assert taken_over_after <= LEASE + 5
    assert "interrupted_attempts=" in log_b

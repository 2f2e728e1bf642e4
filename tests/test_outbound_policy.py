"""Outbound TLS and routing policy against real peers: MTA-STS (with a real HTTPS policy
server), the IPv6 -> IPv4 rule, and smarthost relaying with AUTH."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import (
    HttpsServer,
    delivery_status,
    enqueue,
    inbox,
    queue_entry,
    queue_settings,
    server_cert,
    wait_for,
)
from tests.smtppeer import SmtpPeer, free_port_on


@pytest.fixture
def cleanup() -> Iterator[list[SmtpPeer | HttpsServer]]:
    things: list[SmtpPeer | HttpsServer] = []
    yield things
    for thing in things:
        thing.close()


def sts_zone(dns: DnsTestServer, policy_id: str = "20261125") -> None:
    dns.set_zone(
        "remote.test",
        {
            "@": {"MX": ["10 mx.remote.test."]},
            "mx": {"A": "127.0.0.2"},
            "_mta-sts": {"TXT": f"v=STSv1; id={policy_id};"},
            "mta-sts": {"A": "127.0.0.3"},
        },
    )


def policy(mode: str, mx: str = "mx.remote.test") -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


def sts_setup(
    tmp_path: Path,
    dns: DnsTestServer,
    cleanup: list[SmtpPeer | HttpsServer],
    mode: str,
    mx: str = "mx.remote.test",
) -> tuple[Settings, SmtpPeer, HttpsServer]:
    port = free_port_on("127.0.0.2")
    sts_zone(dns)
    settings = queue_settings(tmp_path, dns.address, port)
    # The policy server's certificate comes from the data dir's dev CA (settings.tls.ca,
    # which the outbound client trusts in addition to the system roots).
    https = HttpsServer(
        "127.0.0.3", server_cert(settings, tmp_path, "mta-sts.remote.test"), policy(mode, mx)
    )
    cleanup.append(https)
    delivery = dataclasses.replace(settings.delivery, mta_sts=True, mta_sts_port=https.port)
    peer = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    cleanup.append(peer)
    return dataclasses.replace(settings, delivery=delivery), peer, https


def test_mta_sts_enforce_wrong_certificate_is_deferred_then_valid_one_delivers(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    settings, peer, https = sts_setup(tmp_path, dns_server, cleanup, "enforce")
    peer.starttls = server_cert(settings, tmp_path, "wrong.remote.test")
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
        assert entry["recipients"][0]["state"] == "queued"
        assert entry["recipients"][0]["last_reply"].startswith("4.7.5")
        assert "certificate" in entry["recipients"][0]["last_reply"].lower()
        assert peer.messages == []
        assert not any(line.startswith("MAIL") for line in peer.log)
        # The MX gets a proper certificate: the next retry goes through, verified.
        peer.starttls = server_cert(settings, tmp_path, "mx.remote.test")
        (msg,) = wait_for(lambda: peer.messages, what="delivery with a valid certificate")
    assert msg.tls
    assert https.requests == 1  # the policy was cached between attempts


def test_mta_sts_enforce_never_sends_plaintext(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    settings, peer, _ = sts_setup(tmp_path, dns_server, cleanup, "enforce")
    with pbserver.RunningServer(settings) as running:  # the peer offers no STARTTLS
        qid = enqueue(running, ["bob@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
    assert entry["recipients"][0]["last_reply"].startswith("4.7.4")
    assert peer.messages == []


def test_mta_sts_mx_not_in_policy_is_deferred(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    settings, peer, _ = sts_setup(tmp_path, dns_server, cleanup, "enforce", mx="*.elsewhere.test")
    peer.starttls = server_cert(settings, tmp_path, "mx.remote.test")
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
    assert entry["recipients"][0]["last_reply"].startswith("4.7.5")
    assert peer.connections == 0


def test_mta_sts_testing_mode_delivers_despite_bad_certificate(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    settings, peer, https = sts_setup(tmp_path, dns_server, cleanup, "testing")
    peer.starttls = server_cert(settings, tmp_path, "wrong.remote.test")
    with pbserver.RunningServer(settings) as running:
        for name in ("bob", "carol", "dave"):
            enqueue(running, [f"{name}@remote.test"])
        wait_for(lambda: len(peer.messages) == 3, what="deliveries")
    assert all(msg.tls for msg in peer.messages)
    assert https.requests == 1  # concurrent lookups share one fetch, then the cache


def test_ipv6_authentication_rejection_retries_over_ipv4(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    port = free_port_on("::1", "127.0.0.1")
    peer6 = SmtpPeer("::1", port, name="mx.remote.test")
    peer6.rcpt_reply = lambda a: (
        "550 5.7.25 The IP address sending this message does not have a PTR record setup"
    )
    peer4 = SmtpPeer("127.0.0.1", port, name="mx.remote.test")
    cleanup += [peer6, peer4]
    dns_server.set_zone(
        "remote.test",
        {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.1", "AAAA": "::1"}},
    )
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"delivery": {"ip_preference": "ipv6"}}
    )
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        (msg,) = wait_for(lambda: peer4.messages, what="delivery over IPv4")
        wait_for(lambda: queue_entry(running, qid) is None, what="retired")
    assert peer6.connections == 1 and peer6.messages == []
    assert msg.peer_ip == "127.0.0.1"
    assert inbox(settings) == []  # not bounced


def test_ipv6_rejection_without_ipv4_bounces(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    port = free_port_on("::1")
    peer6 = SmtpPeer("::1", port, name="mx.remote.test")
    peer6.rcpt_reply = lambda a: "550 5.7.25 no PTR record for your IPv6 address"
    cleanup.append(peer6)
    dns_server.set_zone("remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"AAAA": "::1"}})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce")
    (block,) = delivery_status(dsn)
    assert block["Status"] == "5.7.25"


def test_smarthost_with_auth_and_tls(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    port = free_port_on("127.0.0.5")
    dns_server.set_zone("smarthost.test", {"relay": {"A": "127.0.0.5"}})
    password_file = tmp_path / "relay-password"
    password_file.write_text("s3cret\n")
    overrides = {
        "delivery": {
            "smarthost": f"relay.smarthost.test:{port}",
            "smarthost_user": "pillarbox",
            "smarthost_password_file": str(password_file),
            "max_concurrency_per_destination": 1,
        }
    }
    settings = queue_settings(tmp_path, dns_server.address, 1, overrides)
    peer = SmtpPeer("127.0.0.5", port, name="relay.smarthost.test")
    peer.starttls = server_cert(settings, tmp_path, "relay.smarthost.test")
    peer.auth = {"pillarbox": "s3cret"}
    cleanup.append(peer)
    with pbserver.RunningServer(settings) as running:
        # Neither domain exists in DNS: only the smarthost is ever asked.
        enqueue(running, ["bob@nowhere.test", "carol@elsewhere.test"])
        wait_for(lambda: len(peer.messages) == 2, what="relay through the smarthost")
    assert all(m.tls and m.user == "pillarbox" for m in peer.messages)
    # Both domains are one destination (the smarthost): with one connection allowed per
    # destination, the second message reuses the first one's connection.
    assert peer.connections == 1


def test_smarthost_bad_password_defers(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    port = free_port_on("127.0.0.5")
    dns_server.set_zone("smarthost.test", {"relay": {"A": "127.0.0.5"}})
    password_file = tmp_path / "relay-password"
    password_file.write_text("wrong\n")
    overrides = {
        "delivery": {
            "smarthost": f"relay.smarthost.test:{port}",
            "smarthost_user": "pillarbox",
            "smarthost_password_file": str(password_file),
        }
    }
    settings = queue_settings(tmp_path, dns_server.address, 1, overrides)
    peer = SmtpPeer("127.0.0.5", port, name="relay.smarthost.test")
    peer.starttls = server_cert(settings, tmp_path, "relay.smarthost.test")
    peer.auth = {"pillarbox": "s3cret"}
    cleanup.append(peer)
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@nowhere.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
    assert entry["recipients"][0]["state"] == "queued"
    assert "authentication failed" in entry["recipients"][0]["last_reply"]
    assert peer.messages == []


def test_cached_mta_sts_policy_survives_a_blocked_fetch_and_a_restart(
    tmp_path: Path, dns_server: DnsTestServer, cleanup: list[SmtpPeer | HttpsServer]
) -> None:
    settings, peer, https = sts_setup(tmp_path, dns_server, cleanup, "enforce")
    peer.starttls = server_cert(settings, tmp_path, "mx.remote.test")
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        wait_for(lambda: peer.messages, what="first delivery (policy fetched)")
    # An attacker strips the TXT record, blocks the policy server and STARTTLS: the cached
    # enforce policy (RFC 8461 §5.1) still forbids plaintext, also after a restart.
    https.close()
    cleanup.remove(https)
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    peer.starttls = None
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["carol@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
    assert entry["recipients"][0]["last_reply"].startswith("4.7.4")
    assert len(peer.messages) == 1

"""Outbound delivery end to end: the real server's queue, a real DNS server, real SMTP peers
on other loopback addresses (127.0.0.2, 127.0.0.3, ::1, ...)."""

from __future__ import annotations

import dataclasses
import email
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.queue.api import OutboundRecipient
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import (
    MESSAGE,
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
def port() -> int:
    return free_port_on("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


@pytest.fixture
def peers(port: int) -> Iterator[dict[str, SmtpPeer]]:
    made: dict[str, SmtpPeer] = {}
    yield made
    for peer in made.values():
        peer.close()


def remote_zone(dns: DnsTestServer, mx: list[str], hosts: dict[str, str]) -> None:
    zone: dict[str, dict[str, str | list[str]]] = {"@": {"MX": mx}}
    for name, ip in hosts.items():
        zone[name] = {"AAAA" if ":" in ip else "A": ip}
    dns.set_zone("remote.test", zone)


def test_mx_preference_fallback_one_transaction_and_dkim(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    # mx1 (preference 10) refuses connections: nothing listens on 127.0.0.2:port.
    peers["mx2"] = SmtpPeer("127.0.0.3", port, name="mx2.remote.test")
    peers["mx3"] = SmtpPeer("127.0.0.4", port, name="mx3.remote.test")
    remote_zone(
        dns_server,
        ["10 mx1.remote.test.", "20 mx2.remote.test.", "30 mx3.remote.test."],
        {"mx1": "127.0.0.2", "mx2": "127.0.0.3", "mx3": "127.0.0.4"},
    )
    settings = queue_settings(tmp_path, dns_server.address, port, store=store_backend)
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test", "carol@remote.test"])
        wait_for(lambda: peers["mx2"].messages, what="delivery to mx2")
        wait_for(lambda: queue_entry(running, qid) is None, what="message retired")
    (msg,) = peers["mx2"].messages
    assert sorted(msg.recipients) == ["bob@remote.test", "carol@remote.test"]
    assert msg.sender == "alice@example.test"
    assert msg.helo == "mail.example.test"
    assert msg.data.startswith(b"DKIM-Signature:")
    assert b"\r\n.a line starting with a dot\r\n" in msg.data
    assert msg.data.endswith(MESSAGE)
    assert peers["mx3"].messages == []


def test_dkim_signature_verifies(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    import dkim

    from pillarbox.mailauth.keys import active_keys

    peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    keys = {
        f"{k.selector}._domainkey.example.test.": k
        for k in active_keys(settings.keys_dir, "example.test")
    }
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (msg,) = wait_for(lambda: peers["mx"].messages, what="delivery")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return keys[name.decode()].txt_value().encode()

    assert msg.data.count(b"DKIM-Signature:") == len(keys) == 2
    assert dkim.verify(msg.data, dnsfunc=dnsfunc)


def test_temporary_failure_then_success(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    tries: list[str] = []

    def rcpt(addr: str) -> str | None:
        tries.append(addr)
        return "451 4.3.0 try again later" if len(tries) == 1 else None

    peer.rcpt_reply = rcpt
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port, store=store_backend)
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["attempts"] and e, what="attempt"
        )
        wait_for(lambda: peer.messages, what="delivery on retry")
        wait_for(lambda: queue_entry(running, qid) is None, what="message retired")
    assert len(tries) == 2
    assert entry["recipients"][0]["attempts"] >= 1
    assert inbox(settings) == []  # no bounce, no delay warning


def test_permanent_failure_bounces_to_local_inbox(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port, name="mx.remote.test")
    peer.rcpt_reply = lambda a: (
        "550 5.1.1 <nobody@remote.test>: no such user" if "nobody" in a else None
    )
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port, store=store_backend)
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["nobody@remote.test", "bob@remote.test"], envid="ENV123")
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce in INBOX")
        wait_for(lambda: queue_entry(running, qid) is None, what="message retired")
    assert [m.recipients for m in peer.messages] == [["bob@remote.test"]]
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["To"] == "<alice@example.test>"
    assert dsn["Auto-Submitted"] == "auto-replied"
    (block,) = delivery_status(dsn)
    assert block["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx.remote.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@remote.test>: no such user"
    returned = [p for p in dsn.walk() if p.get_content_type() == "message/rfc822"]
    assert returned and "Subject: hello" in returned[0].as_string()


def test_expiry_bounces_with_last_reply(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.rcpt_reply = lambda a: "451 4.7.1 greylisted, come back later"
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"delivery": {"queue_lifetime": 3}}, store=store_backend
    )
    with pbserver.RunningServer(settings) as running:
        started = time.monotonic()
        qid = enqueue(running, ["bob@remote.test"])
        (dsn,) = wait_for(lambda: inbox(settings), timeout=25, what="expiry bounce")
        wait_for(lambda: queue_entry(running, qid) is None, what="message retired")
    assert time.monotonic() - started >= 3
    (block,) = delivery_status(dsn)
    assert block["Action"] == "failed"
    assert block["Status"] == "4.4.7"
    assert block["Diagnostic-Code"] == "smtp; 451 4.7.1 greylisted, come back later"
    assert peer.messages == []


def test_null_mx_bounces_immediately(tmp_path: Path, dns_server: DnsTestServer, port: int) -> None:
    dns_server.set_zone("remote.test", {"@": {"MX": ["0 ."]}})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (dsn,) = wait_for(lambda: inbox(settings), what="null MX bounce")
    (block,) = delivery_status(dsn)
    assert block["Status"] == "5.1.10"
    assert "Diagnostic-Code" not in block
    assert "null MX" in dsn.as_string()


def test_notify_never_and_null_sender_get_no_bounce(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.rcpt_reply = lambda a: "550 5.1.1 no such user"
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        q1 = enqueue(running, [OutboundRecipient("a@remote.test", notify=frozenset({"NEVER"}))])
        q2 = enqueue(running, ["b@remote.test"], sender="")
        wait_for(lambda: queue_entry(running, q1) is None and queue_entry(running, q2) is None)
    time.sleep(0.3)
    assert inbox(settings) == []


def test_dsn_parameters_passed_on_and_relayed_report(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    with_dsn = peers["mx"] = SmtpPeer("127.0.0.2", port)
    with_dsn.extensions.add("DSN")
    without = peers["other"] = SmtpPeer("127.0.0.3", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    dns_server.set_zone(
        "other.test", {"@": {"MX": ["10 mx.other.test."]}, "mx": {"A": "127.0.0.3"}}
    )
    settings = queue_settings(tmp_path, dns_server.address, port, store=store_backend)
    notify = frozenset({"SUCCESS", "FAILURE"})
    with pbserver.RunningServer(settings) as running:
        enqueue(
            running,
            [
                OutboundRecipient("bob@remote.test", notify, "rfc822;bob+2Bx@remote.test"),
                OutboundRecipient("dan@other.test", notify),
            ],
            envid="ENV1",
            ret="HDRS",
        )
        (report,) = wait_for(lambda: inbox(settings), what="relayed report")
    (msg,) = with_dsn.messages
    assert msg.mail_params[-2:] == ["RET=HDRS", "ENVID=ENV1"]
    assert msg.rcpt_params["bob@remote.test"] == [
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;bob+2Bx@remote.test",
    ]
    assert without.messages[0].rcpt_params["dan@other.test"] == []
    (block,) = delivery_status(report)
    assert block["Action"] == "relayed"
    assert block["Final-Recipient"] == "rfc822; dan@other.test"


def test_starttls_used_when_offered(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    # A certificate for another name: "may" encrypts without verifying (RFC 7435).
    peer.starttls = server_cert(settings, tmp_path, "unrelated.example")
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (msg,) = wait_for(lambda: peer.messages, what="delivery")
    assert msg.tls


def test_tls_encrypt_without_starttls_is_deferred(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port, {"delivery": {"tls": "encrypt"}})
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
        assert entry["recipients"][0]["state"] == "queued"
        assert entry["recipients"][0]["last_reply"].startswith("4.7.4")
        # Now the peer offers STARTTLS: the retry goes through, encrypted.
        peer.starttls = server_cert(settings, tmp_path, "mx.remote.test")
        (msg,) = wait_for(lambda: peer.messages, what="delivery after STARTTLS appears")
    assert msg.tls
    assert not any(line.startswith("MAIL") for line in peer.log[: peer.log.index("STARTTLS")])


def test_slow_destination_does_not_starve_others(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    slow = peers["slow"] = SmtpPeer("127.0.0.2", port)
    slow.hold_data = threading.Event()
    fast = peers["fast"] = SmtpPeer("127.0.0.3", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    dns_server.set_zone("fast.test", {"@": {"MX": ["10 mx.fast.test."]}, "mx": {"A": "127.0.0.3"}})
    settings = queue_settings(
        tmp_path,
        dns_server.address,
        port,
        {"delivery": {"max_concurrency": 3, "max_concurrency_per_destination": 2}},
    )
    try:
        with pbserver.RunningServer(settings) as running:
            for i in range(4):
                enqueue(running, [f"user{i}@remote.test"])
            wait_for(lambda: slow.data_started.is_set(), what="slow delivery started")
            enqueue(running, ["x@fast.test"])
            wait_for(lambda: fast.messages, what="fast destination served")
            assert slow.messages == []
            slow.hold_data.set()
            wait_for(lambda: len(slow.messages) == 4, what="slow destination drained")
    finally:
        slow.hold_data.set()
    # Two workers for the slow destination, each reusing its connection.
    assert slow.connections == 2


def test_connection_reused_for_several_messages(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.hold_data = threading.Event()
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(
        tmp_path,
        dns_server.address,
        port,
        {"delivery": {"max_concurrency_per_destination": 1}},
        store=store_backend,
    )
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["a@remote.test"])
        wait_for(lambda: peer.data_started.is_set(), what="first delivery started")
        enqueue(running, ["b@remote.test"])
        enqueue(running, ["c@remote.test"])
        time.sleep(1.2)  # a scan has queued the jobs behind the running one
        peer.hold_data.set()
        wait_for(lambda: len(peer.messages) == 3, what="three deliveries")
    assert peer.connections == 1
    assert peer.log.count("RSET") >= 2


EIGHT_BIT = MESSAGE.replace(b"Hello Bob.", "Grüße, Bob.".encode())


def _verify_dkim(settings: Settings, data: bytes) -> bool:
    import dkim

    from pillarbox.mailauth.keys import active_keys

    keys = {
        f"{k.selector}._domainkey.example.test.": k
        for k in active_keys(settings.keys_dir, "example.test")
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return keys[name.decode()].txt_value().encode()

    return bool(dkim.verify(data, dnsfunc=dnsfunc))


def test_8bit_message_sent_as_is_with_8bitmime_converted_and_resigned_without(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    capable = peers["mx"] = SmtpPeer("127.0.0.2", port)
    old = peers["old"] = SmtpPeer("127.0.0.3", port)
    old.extensions = {"PIPELINING"}  # no 8BITMIME, no SIZE
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    dns_server.set_zone("old.test", {"@": {"MX": ["10 mx.old.test."]}, "mx": {"A": "127.0.0.3"}})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test", "eve@old.test"], message=EIGHT_BIT)
        (msg,) = wait_for(lambda: capable.messages, what="8-bit delivery")
        (converted,) = wait_for(lambda: old.messages, what="7-bit delivery")
        wait_for(lambda: queue_entry(running, qid) is None, what="retired")
        assert list((settings.queue_dir / "tmp").iterdir()) == []  # working copy removed
    assert "BODY=8BITMIME" in msg.mail_params
    assert "Grüße".encode() in msg.data
    assert _verify_dkim(settings, msg.data)
    # RFC 6152 §3: converted to 7 bit (quoted-printable), then signed again.
    assert converted.data.isascii()
    assert "BODY=8BITMIME" not in converted.mail_params
    assert converted.data.count(b"DKIM-Signature:") == 2
    assert _verify_dkim(settings, converted.data)
    parsed = email.message_from_bytes(converted.data)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Grüße, Bob." in parsed.get_payload(decode=True).decode()
    assert inbox(settings) == []


def test_8bit_header_to_a_7bit_peer_bounces(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    old = peers["old"] = SmtpPeer("127.0.0.2", port)
    old.extensions = {"PIPELINING"}
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    raw_utf8_subject = MESSAGE.replace(b"Subject: hello", "Subject: Grüße".encode())
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"], message=raw_utf8_subject)
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce")
    assert delivery_status(dsn)[0]["Status"] == "5.6.3"
    assert old.messages == []


def test_smtputf8_address_needs_smtputf8_peer(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    capable = peers["mx"] = SmtpPeer("127.0.0.2", port)
    capable.extensions.add("SMTPUTF8")
    plain = peers["old"] = SmtpPeer("127.0.0.3", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    dns_server.set_zone("old.test", {"@": {"MX": ["10 mx.old.test."]}, "mx": {"A": "127.0.0.3"}})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["jörg@remote.test", "jörg@old.test"])
        (msg,) = wait_for(lambda: capable.messages, what="SMTPUTF8 delivery")
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce")
    assert "SMTPUTF8" in msg.mail_params
    assert msg.recipients == ["jörg@remote.test"]
    assert delivery_status(dsn)[0]["Status"] == "5.6.7"
    assert plain.messages == []


def test_message_over_peer_size_limit_bounces(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.extensions = {"PIPELINING", "8BITMIME", "SIZE 100"}
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce")
    assert delivery_status(dsn)[0]["Status"] == "5.3.4"
    assert peer.messages == []


def test_delay_warning_sent_once(
    tmp_path: Path,
    dns_server: DnsTestServer,
    port: int,
    peers: dict[str, SmtpPeer],
    store_backend: dict[str, str],
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.rcpt_reply = lambda a: "452 4.2.2 mailbox full"
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(
        tmp_path,
        dns_server.address,
        port,
        {"delivery": {"delay_warning": 1, "retry_initial": 1, "retry_max": 1}},
        store=store_backend,
    )
    with pbserver.RunningServer(settings) as running:
        qid = enqueue(running, ["bob@remote.test"])
        (warning,) = wait_for(lambda: inbox(settings), what="delay warning")
        wait_for(
            lambda: (
                (queue_entry(running, qid) or {"recipients": [{"attempts": 0}]})["recipients"][0][
                    "attempts"
                ]
                >= 4
            ),
            what="more attempts",
        )
        assert queue_entry(running, qid) is not None  # still queued
    assert len(inbox(settings)) == 1
    assert warning["Subject"] == "Delayed Mail (still being retried)"
    (block,) = delivery_status(warning)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.2.2"
    assert "Will-Retry-Until" in block


def test_bind_address_sets_the_source_address(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"delivery": {"bind_address": "127.0.0.9, ::1"}}
    )
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (msg,) = wait_for(lambda: peer.messages, what="delivery")
    assert msg.peer_ip == "127.0.0.9"


def test_failed_tls_handshake_falls_back_to_plaintext_only_when_tls_is_optional(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    broken = server_cert(settings, tmp_path, "mx.remote.test")
    with warnings.catch_warnings():  # deprecated on purpose: our client requires TLS 1.2+
        warnings.simplefilter("ignore", DeprecationWarning)
        broken.maximum_version = ssl.TLSVersion.TLSv1_1
    peer.starttls = broken
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test"])
        (msg,) = wait_for(lambda: peer.messages, what="plaintext delivery after TLS failure")
    assert not msg.tls
    assert peer.connections == 2

    encrypt = dataclasses.replace(
        settings, delivery=dataclasses.replace(settings.delivery, tls="encrypt")
    )
    with pbserver.RunningServer(encrypt) as running:
        qid = enqueue(running, ["carol@remote.test"])
        entry = wait_for(
            lambda: (e := queue_entry(running, qid)) and e["recipients"][0]["last_reply"] and e,
            what="deferral",
        )
    assert entry["recipients"][0]["last_reply"].startswith("4.7.5")
    assert len(peer.messages) == 1


def test_unreachable_destination_is_suspended_not_retried_per_message(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    peer.greeting = "421 4.3.2 service not available, closing"
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(
        tmp_path,
        dns_server.address,
        port,
        {"delivery": {"retry_initial": 60, "max_concurrency_per_destination": 1}},
    )
    with pbserver.RunningServer(settings) as running:
        first = enqueue(running, ["a@remote.test"])
        wait_for(lambda: queue_entry(running, first)["recipients"][0]["last_reply"])  # type: ignore[index]
        others = [enqueue(running, [f"{n}@remote.test"]) for n in ("b", "c")]
        replies = [
            wait_for(lambda q=q: queue_entry(running, q)["recipients"][0]["last_reply"])  # type: ignore[index]
            for q in others
        ]
        assert peer.connections == 1
        assert all("temporarily suspended" in r and "refused to talk" in r for r in replies)
        # An administrator's flush lifts the suspension.
        running.call(running.server.ctx.services.queue.control.flush({}))
        wait_for(lambda: peer.connections >= 2, what="attempt after flush")


def test_only_our_own_mail_is_signed(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    settings = queue_settings(tmp_path, dns_server.address, port)
    foreign = MESSAGE.replace(b"alice@example.test", b"carl@elsewhere.test")
    with pbserver.RunningServer(settings) as running:
        # Forwarded mail (an alias to a remote address): envelope and From are not ours.
        enqueue(running, ["a@remote.test"], message=foreign, sender="carl@elsewhere.test")
        # Our envelope sender, a foreign From: signing it would vouch for another domain.
        enqueue(running, ["b@remote.test"], message=foreign)
        # A spoofed From of our domain under a foreign envelope sender: not signed either.
        enqueue(running, ["c@remote.test"], sender="carl@elsewhere.test")
        wait_for(lambda: len(peer.messages) == 3, what="three deliveries")
    assert not any(b"DKIM-Signature" in m.data for m in peer.messages)


def test_total_concurrency_limit(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    hold = threading.Event()
    for i, ip in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        peer = peers[f"d{i}"] = SmtpPeer(ip, port)
        peer.hold_data = hold
        dns_server.set_zone(f"d{i}.test", {"@": {"MX": [f"10 mx.d{i}.test."]}, "mx": {"A": ip}})
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"delivery": {"max_concurrency": 2}}
    )
    try:
        with pbserver.RunningServer(settings) as running:
            for i in range(3):
                enqueue(running, [f"u@d{i}.test"])
            wait_for(lambda: sum(p.connections for p in peers.values()) == 2, what="two busy")
            time.sleep(0.5)
            assert sum(p.connections for p in peers.values()) == 2  # the third one waits
            hold.set()
            wait_for(lambda: all(p.messages for p in peers.values()), what="all delivered")
    finally:
        hold.set()


def test_implicit_mx_and_nonexistent_domain(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["host"] = SmtpPeer("127.0.0.2", port)
    # No MX at all: the domain's own address is the mail host (RFC 5321 §5.1).
    dns_server.set_zone("remote.test", {"@": {"A": "127.0.0.2"}})
    # A zone without the name: NXDOMAIN, a permanent failure.
    dns_server.set_zone("gone.test", {"www": {"A": "127.0.0.3"}})
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@remote.test", "x@nothere.gone.test"])
        (msg,) = wait_for(lambda: peer.messages, what="delivery to the implicit MX")
        (dsn,) = wait_for(lambda: inbox(settings), what="bounce for the missing domain")
    assert msg.recipients == ["bob@remote.test"]
    (block,) = delivery_status(dsn)
    assert block["Final-Recipient"] == "rfc822; x@nothere.gone.test"
    assert block["Status"] == "5.1.2"


def test_a_long_backlog_takes_turns_with_other_destinations(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    busy = peers["busy"] = SmtpPeer("127.0.0.2", port)
    other = peers["other"] = SmtpPeer("127.0.0.3", port)
    busy.hold_data = threading.Event()
    seen_when_other_arrived: list[int] = []

    def other_reply(msg: object) -> None:
        seen_when_other_arrived.append(len(busy.messages))

    other.data_reply = other_reply  # type: ignore[assignment]
    remote_zone(dns_server, ["10 mx.remote.test."], {"mx": "127.0.0.2"})
    dns_server.set_zone(
        "other.test", {"@": {"MX": ["10 mx.other.test."]}, "mx": {"A": "127.0.0.3"}}
    )
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"delivery": {"max_concurrency": 1}}
    )
    try:
        with pbserver.RunningServer(settings) as running:
            enqueue(running, ["first@remote.test"])
            wait_for(busy.data_started.is_set, what="the busy destination holds the slot")
            for i in range(24):
                enqueue(running, [f"u{i}@remote.test"])
            enqueue(running, ["x@other.test"])
            time.sleep(1.2)  # a scan has queued every job
            busy.hold_data.set()
            wait_for(lambda: other.messages and len(busy.messages) == 25, what="all sent")
    finally:
        busy.hold_data.set()
    # The other destination got the slot after one turn, not after the whole backlog.
    assert seen_when_other_arrived and seen_when_other_arrived[0] < 25


def test_unicode_domain_goes_as_a_label_without_smtputf8(
    tmp_path: Path, dns_server: DnsTestServer, port: int, peers: dict[str, SmtpPeer]
) -> None:
    peer = peers["mx"] = SmtpPeer("127.0.0.2", port)  # no SMTPUTF8
    dns_server.set_zone(
        "xn--bcher-kva.test", {"@": {"MX": ["10 mx.xn--bcher-kva.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    settings = queue_settings(tmp_path, dns_server.address, port)
    with pbserver.RunningServer(settings) as running:
        enqueue(running, ["bob@bücher.test"])
        (msg,) = wait_for(lambda: peer.messages, what="delivery")
    assert msg.recipients == ["bob@xn--bcher-kva.test"]
    assert "SMTPUTF8" not in msg.mail_params

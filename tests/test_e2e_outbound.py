"""End to end: alice submits on 587, bob (local) reads it over IMAP, carol's server (another
MX, found through DNS) receives it DKIM-signed with the keys ``pillarbox dns records``
publishes, and a remote 550 comes back to alice as a DSN she reads over IMAP. Sent is the
client's job: APPEND to Sent and read it back.

The remote server is ``tests.smtppeer.SmtpPeer`` on 127.0.0.2; ``remote.example``'s MX points
at it in the test DNS server. DKIM is checked with dkimpy asking that DNS server over the
wire; SPF/DMARC from the remote's point of view with ``pillarbox verify`` (the command a user
runs on a received message) against the same DNS.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    BOB,
    DOMAIN,
    REMOTE_DOMAIN,
    SENDER_DOMAIN,
    TRACE_FIELDS,
    SenderKey,
    client_tls,
    dns_txt,
    fetch_by_message_id,
    header_names,
    imap,
    marker,
    message,
    prepended,
    publish_our_zone,
    publish_remote_zone,
    publish_sender_zone,
    smtp_from_outside,
    submit,
    wait_for,
    world_settings,
)
from tests.smtppeer import Received, SmtpPeer, free_port_on

CAROL = f"carol@{REMOTE_DOMAIN}"
FORWARD_TARGET = f"carol-home@{REMOTE_DOMAIN}"
SENDER_KEY = SenderKey.generate()
DAVE = f"dave@{REMOTE_DOMAIN}"


@dataclass
class World:
    settings: Settings
    server: pbserver.RunningServer
    dns: DnsTestServer
    peer: SmtpPeer

    def submit(self, recipients: list[str], data: bytes, sender: str = ALICE) -> dict:
        return submit(self.settings, self.server.port("submission"), sender, recipients, data)

    def imap(self, user: str = ALICE):  # type: ignore[no-untyped-def]
        return imap(self.settings, self.server.port("imaps"), user)

    def remote_copy(self, mark: str) -> Received:
        def find() -> list[Received]:
            return [m for m in self.peer.messages if mark.encode() in m.data]

        (msg,) = wait_for(find, what=f"remote delivery of {mark}")
        return msg


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-outbound")
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name=f"mx.{REMOTE_DOMAIN}")
    peer.extensions |= {"SMTPUTF8", "DSN"}
    peer.rcpt_reply = lambda addr: (
        f"550 5.1.1 <{addr}>: mailbox unavailable here (e2e-{addr.split('@')[0]})"
        if addr.startswith("nosuch")
        else None
    )
    try:
        with DnsTestServer() as dns_server:
            settings = world_settings(tmp, dns_server, port)
            for user in (ALICE, BOB):
                pbserver.add_user(settings, user)
            pbserver.add_alias(settings, f"fwd@{DOMAIN}", FORWARD_TARGET)
            publish_our_zone(dns_server, settings)
            publish_remote_zone(dns_server)
            publish_sender_zone(dns_server, SENDER_KEY, "v=DMARC1; p=reject")
            with pbserver.RunningServer(settings) as server:
                yield World(settings, server, dns_server, peer)
    finally:
        peer.close()


def alice_message(mark: str, to: str) -> bytes:
    return message(mark, sender=f"Alice <{ALICE}>", to=to)


def verify_all_signatures(data: bytes, dns_server: DnsTestServer) -> list[bytes]:
    """The a= of every DKIM signature, each verified by dkimpy against the live DNS."""
    checker = dkim.DKIM(data)
    count = data.count(b"\nDKIM-Signature:") + data.startswith(b"DKIM-Signature:")
    algorithms = []
    for index in range(count):
        assert checker.verify(idx=index, dnsfunc=dns_txt(dns_server)), f"signature {index}"
        algorithms.append(checker.signature_fields[b"a"])
    return algorithms


def test_submission_local_and_remote_with_dkim_from_published_records(world: World) -> None:
    mark = marker()
    original = alice_message(mark, f"Bob <{BOB}>, Carol <{CAROL}>")
    assert world.submit([BOB, CAROL], original) == {}

    # carol's server got it, signed by keys that verify against the records we published
    remote = world.remote_copy(mark)
    assert remote.recipients == [CAROL]
    assert remote.sender == ALICE
    assert remote.helo == "mail.example.test"
    added = prepended(remote.data, original)
    assert set(header_names(added)) <= {"dkim-signature", "received"}, header_names(added)
    algorithms = verify_all_signatures(remote.data, world.dns)
    assert sorted(algorithms) == [b"ed25519-sha256", b"rsa-sha256"]
    # one byte changed in the body: dkimpy must now refuse it
    tampered = remote.data.replace(b"Hello " + mark.encode(), b"Hallo " + mark.encode())
    assert not dkim.verify(tampered, dnsfunc=dns_txt(world.dns))

    # bob reads his copy over IMAP: the original bytes, after our trace fields only
    with world.imap(BOB) as client:
        ((_, stored),) = wait_for(lambda: fetch_by_message_id(client, mark), what="bob's copy")
    head = prepended(stored, original)
    assert set(header_names(head)) <= TRACE_FIELDS | {"dkim-signature"}, header_names(head)
    received = " ".join(v for v in email.message_from_bytes(head + b"\r\n").get_all("Received", []))
    assert ALICE in received or "alice" in received, "Received must record the AUTH user"
    assert "TLS" in received


def test_receiver_sees_spf_dkim_dmarc_pass_with_pillarbox_verify(
    world: World, tmp_path: Path
) -> None:
    """What a receiving server would conclude from the published records and the connecting
    address it saw (the peer's view), with ``pillarbox verify --format json``."""
    mark = marker()
    original = alice_message(mark, CAROL)
    assert world.submit([CAROL], original) == {}
    remote = world.remote_copy(mark)
    path = tmp_path / "received.eml"
    path.write_bytes(remote.data)
    assert world.settings.source is not None
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pillarbox",
            "--config",
            str(world.settings.source),
            "verify",
            str(path),
            "--ip",
            remote.peer_ip,
            "--helo",
            remote.helo,
            "--mail-from",
            remote.sender,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    text = json.dumps(report)
    assert report["spf"]["result"] == "pass", text
    assert report["dmarc"]["result"] == "pass", text
    assert {d["result"] for d in report["dkim"]} == {"pass"}, text


def test_append_to_sent_keeps_bytes_and_special_use(world: World) -> None:
    mark = marker()
    original = alice_message(mark, CAROL)
    with world.imap() as client:
        sent = [name for flags, _, name in client.list_folders() if b"\\Sent" in flags]
        assert sent == ["Sent"]
        result = client.append("Sent", original, flags=[b"\\Seen"])
        assert b"APPENDUID" in result
        ((uid, stored),) = fetch_by_message_id(client, mark, "Sent")
        assert stored == original
        assert b"\\Seen" in client.get_flags([uid])[uid]
        appenduid = int(re.search(rb"APPENDUID \d+ (\d+)", result).group(1))  # type: ignore[union-attr]
        assert appenduid == uid


def test_remote_550_becomes_a_dsn_in_alices_inbox(world: World) -> None:
    mark = marker()
    nosuch = f"nosuch-{mark[:6]}@{REMOTE_DOMAIN}"
    original = alice_message(mark, f"{nosuch}, {DAVE}")
    assert world.submit([nosuch, DAVE], original) == {}
    assert world.remote_copy(mark).recipients == [DAVE]  # the good one still goes

    def bounce() -> list[bytes]:
        with world.imap() as client:
            client.select_folder("INBOX", readonly=True)
            uids = client.search(["BODY", f"e2e-nosuch-{mark[:6]}"])
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [v[b"BODY[]"] for v in fetched.values()]

    (dsn_bytes,) = wait_for(bounce, timeout=15, what="DSN in alice's INBOX")
    dsn = email.message_from_bytes(dsn_bytes, policy=email.policy.compat32)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Return-Path"] in ("<>", None)
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    assert status, "no message/delivery-status part"
    blocks = status[0].get_payload()
    assert isinstance(blocks, list)
    per_rcpt = [dict(b.items()) for b in blocks[1:] if isinstance(b, email.message.Message)]
    assert len(per_rcpt) == 1, per_rcpt  # dave was delivered: not in the report
    (block,) = per_rcpt
    assert nosuch in block["Final-Recipient"]
    assert block["Action"] == "failed" and block["Status"] == "5.1.1"
    diagnostic = re.sub(r"\s+", " ", block["Diagnostic-Code"])
    assert f"550 5.1.1 <{nosuch}>: mailbox unavailable here" in diagnostic
    assert f"<{mark}@e2e.test>".encode() in dsn_bytes  # the original (or its header) returned


def test_sendmail_cli_to_remote_is_signed_and_delivered(world: World) -> None:
    mark = marker()
    original = alice_message(mark, CAROL)
    assert world.settings.source is not None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pillarbox",
            "--config",
            str(world.settings.source),
            "sendmail",
            "-f",
            ALICE,
            CAROL,
        ],
        input=original,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    remote = world.remote_copy(mark)
    assert remote.recipients == [CAROL]
    assert remote.data.endswith(original)
    assert sorted(verify_all_signatures(remote.data, world.dns)) == [
        b"ed25519-sha256",
        b"rsa-sha256",
    ]


def test_dns_trouble_defers_then_delivers_and_a_missing_domain_bounces(world: World) -> None:
    """A SERVFAIL for the remote's MX is temporary: accepted, retried, delivered once DNS
    answers again. A domain that does not exist (NXDOMAIN) bounces with 5.1.2 at once."""
    mark = marker()
    flaky = "flaky.example"
    world.dns.set_zone(flaky, {"@": {"MX": [f"10 mx.{REMOTE_DOMAIN}."]}})
    world.dns.fail(flaky, "servfail", "MX")
    rcpt = f"erin@{flaky}"
    try:
        assert world.submit([rcpt], alice_message(mark, rcpt)) == {}
        time.sleep(1.5)  # at least one attempt fails on DNS
        assert not any(mark.encode() in m.data for m in world.peer.messages)
    finally:
        world.dns.clear_failures()
    assert world.remote_copy(mark).recipients == [rcpt]

    mark2 = marker()
    world.dns.set_zone("nxd.example", {"@": {"TXT": "v=spf1 -all"}})
    missing = f"frank@nope-{mark2[:6]}.nxd.example"
    assert world.submit([missing], alice_message(mark2, missing)) == {}

    def bounce() -> list[int]:
        with world.imap() as client:
            client.select_folder("INBOX", readonly=True)
            return client.search(["BODY", missing])

    wait_for(bounce, timeout=10, what="bounce for a missing domain")
    with world.imap() as client:
        client.select_folder("INBOX", readonly=True)
        (uid,) = client.search(["BODY", missing])
        dsn = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert b"Status: 5.1.2" in dsn


def test_five_megabyte_attachment_local_and_remote_byte_exact_and_signed(world: World) -> None:
    mark = marker()
    blob = base64.encodebytes(os.urandom(5 * 1024 * 1024 // 4 * 3)).replace(b"\n", b"\r\n")
    original = (
        (
            f"From: Alice <{ALICE}>\r\nTo: {BOB}, {CAROL}\r\nSubject: e2e {mark}\r\n"
            f"Message-ID: <{mark}@e2e.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b1\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="big.bin"\r\n\r\n'
        ).encode()
        + blob
        + b"--b1--\r\n"
    )
    start = time.monotonic()
    assert world.submit([BOB, CAROL], original) == {}
    remote = world.remote_copy(mark)
    elapsed = time.monotonic() - start
    prepended(remote.data, original)
    assert dkim.verify(remote.data, dnsfunc=dns_txt(world.dns))
    with world.imap(BOB) as client:
        ((uid, stored),) = fetch_by_message_id(client, mark)
        prepended(stored, original)
        part = client.fetch([uid], ["BODY.PEEK[2]<0.100>", "RFC822.SIZE"])[uid]
    assert part[b"BODY[2]<0>"] == blob[:100]
    assert part[b"RFC822.SIZE"] == len(stored)
    print(f"5 MB submission -> remote delivery in {elapsed:.2f}s")


def test_inbound_mail_to_a_forwarding_alias_reaches_the_remote_unaltered(world: World) -> None:
    """Mail from the internet to an alias pointing elsewhere is relayed (that is the alias's
    purpose, not an open relay): the original bytes after our trace fields, its DKIM
    signature still valid at the final destination."""
    mark = marker()
    original = SENDER_KEY.sign(message(mark, to=f"fwd@{DOMAIN}"))
    with smtp_from_outside(world.server.port("smtp")) as client:
        assert client.sendmail(f"someone@{SENDER_DOMAIN}", [f"fwd@{DOMAIN}"], original) == {}
    remote = world.remote_copy(mark)
    assert remote.recipients == [FORWARD_TARGET]
    added = prepended(remote.data, original)
    assert set(header_names(added)) <= TRACE_FIELDS | {
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
    assert dkim.verify(remote.data, dnsfunc=dns_txt(world.dns))
    print(f"forwarded with envelope sender <{remote.sender}>")


def submit_with_params(
    world: World, sender: str, rcpt: str, data: bytes, mail_opts: list[str], rcpt_opts: list[str]
) -> None:
    with smtplib.SMTP("127.0.0.1", world.server.port("submission"), timeout=10) as client:
        client.starttls(context=client_tls(world.settings))
        client.login(ALICE, pbserver.PASSWORD)
        assert client.sendmail(sender, [rcpt], data, mail_opts, rcpt_opts) == {}


def test_dsn_parameters_from_submission_shape_the_bounce(world: World) -> None:
    """RFC 3461 end to end: RET=HDRS and ENVID given on 587 decide the bounce that comes back
    to the tagged sender address (which lands in alice's INBOX)."""
    mark = marker()
    nosuch = f"nosuch-{mark[:6]}@{REMOTE_DOMAIN}"
    tagged = f"alice+shop@{DOMAIN}"
    data = message(mark, sender=f"Alice <{tagged}>", to=nosuch, body=f"SECRET-BODY-{mark}\r\n")
    submit_with_params(
        world,
        tagged,
        nosuch,
        data,
        ["RET=HDRS", f"ENVID=env-{mark[:8]}"],
        ["NOTIFY=FAILURE", f"ORCPT=rfc822;{nosuch}"],
    )

    def bounce() -> list[bytes]:
        with world.imap() as client:
            client.select_folder("INBOX", readonly=True)
            uids = client.search(["BODY", nosuch])
            return [v[b"BODY[]"] for v in client.fetch(uids, ["BODY.PEEK[]"]).values()]

    (dsn,) = wait_for(bounce, timeout=15, what="the bounce in alice's INBOX")
    report = email.message_from_bytes(dsn, policy=email.policy.compat32)
    types = [p.get_content_type() for p in report.walk()]
    assert "text/rfc822-headers" in types and "message/rfc822" not in types, types
    assert f"SECRET-BODY-{mark}".encode() not in dsn  # RET=HDRS: no body returned
    assert re.search(rb"Original-Envelope-Id: *env-" + mark[:8].encode(), dsn)
    assert re.search(rb"Original-Recipient: *rfc822; *" + re.escape(nosuch.encode()), dsn)


def test_dsn_parameters_from_submission_are_passed_to_a_dsn_capable_mx(world: World) -> None:
    mark = marker()
    data = alice_message(mark, CAROL)
    submit_with_params(
        world,
        ALICE,
        CAROL,
        data,
        ["RET=FULL", f"ENVID=env-{mark[:8]}"],
        ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{CAROL}"],
    )
    remote = world.remote_copy(mark)
    mail = " ".join(remote.mail_params).upper()
    assert "RET=FULL" in mail and f"ENVID=ENV-{mark[:8]}".upper() in mail, remote.mail_params
    rcpt = " ".join(remote.rcpt_params[CAROL]).upper()
    assert "NOTIFY=SUCCESS,FAILURE" in rcpt and f"ORCPT=RFC822;{CAROL}".upper() in rcpt, rcpt


# Keep last in this module: it changes the signing keys of the module's server.
def test_dkim_rotation_while_running_keeps_every_signature_verifiable(world: World) -> None:
    """The admin's rotation, as RFC 6376 §3.1 practice has it: stage a new pair (published,
    not yet signing), publish, switch; the running server signs with the new selectors at
    once and mail signed before the switch still verifies (the old pair stays published)."""
    assert world.settings.source is not None

    def cli(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pillarbox", "--config", str(world.settings.source), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr

    def selectors(data: bytes) -> set[str]:
        """The s= of every DKIM-Signature field."""
        fields = email.message_from_bytes(data).get_all("DKIM-Signature", [])
        return {m.group(1) for f in fields if (m := re.search(r"\bs=\s*([\w.-]+)", str(f)))}

    before_mark = marker()
    assert world.submit([CAROL], alice_message(before_mark, CAROL)) == {}
    old = selectors(world.remote_copy(before_mark).data)

    cli("dkim", "rotate", DOMAIN, "--stage")
    publish_our_zone(world.dns, world.settings)
    staged_mark = marker()
    assert world.submit([CAROL], alice_message(staged_mark, CAROL)) == {}
    assert selectors(world.remote_copy(staged_mark).data) == old  # staged keys do not sign

    cli("dkim", "rotate", DOMAIN)
    publish_our_zone(world.dns, world.settings)
    after_mark = marker()
    assert world.submit([CAROL], alice_message(after_mark, CAROL)) == {}
    after = world.remote_copy(after_mark).data
    new = selectors(after)
    assert len(new) == 2 and not new & old, (old, new)
    assert sorted(verify_all_signatures(after, world.dns)) == [b"ed25519-sha256", b"rsa-sha256"]
    # mail signed before the switch still verifies against what is published now
    verify_all_signatures(world.remote_copy(before_mark).data, world.dns)

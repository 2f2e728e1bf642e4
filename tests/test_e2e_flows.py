"""End to end: the everyday flows that cross components, as a user or an admin meets them.

- A message delivered by SMTP (25 and 587) or APPEND reads back consistently over IMAP:
  RFC822.SIZE = the bytes of BODY[], BODY[TEXT] = what was sent, BODYSTRUCTURE and ENVELOPE
  agree with it.
- IDLE is told of every kind of arrival: a local submission, a bounce the queue generates,
  a DMARC-quarantined message in Junk.
- The admin CLI (user add/passwd/del, alias add) changes a running server at once.
- ``sendmail -t`` drops Bcc; 465 with aiosmtplib reaches the remote MX; the null sender is
  accepted from the internet; duplicate recipients get one copy.
"""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import dkim
import pytest
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    BOB,
    DOMAIN,
    PASSWORD,
    REMOTE_DOMAIN,
    SENDER_DOMAIN,
    TIMEOUT,
    SenderKey,
    client_tls,
    dns_txt,
    fetch_by_message_id,
    marker,
    message,
    our_records,
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
SENDER = f"someone@{SENDER_DOMAIN}"
QUARANTINE_DOMAIN = "sloppy.example"


@dataclass
class World:
    settings: Settings
    server: pbserver.RunningServer
    dns: DnsTestServer
    peer: SmtpPeer
    key: SenderKey

    def port(self, name: str) -> int:
        return self.server.port(name)

    def imap(self, user: str = ALICE, password: str = PASSWORD) -> IMAPClient:
        client = IMAPClient(
            "127.0.0.1",
            self.port("imaps"),
            ssl=True,
            ssl_context=client_tls(self.settings),
            timeout=TIMEOUT,
        )
        client.login(user, password)
        return client

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        assert self.settings.source is not None
        return subprocess.run(
            [sys.executable, "-m", "pillarbox", "--config", str(self.settings.source), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def remote_copies(self, mark: str) -> list[Received]:
        return [m for m in self.peer.messages if mark.encode() in m.data]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-flows")
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name=f"mx.{REMOTE_DOMAIN}")
    peer.rcpt_reply = lambda a: "550 5.1.1 no such user here" if a.startswith("nosuch") else None
    key = SenderKey.generate()
    try:
        with DnsTestServer() as dns_server:
            settings = world_settings(tmp, dns_server, port)
            for user in (ALICE, BOB):
                pbserver.add_user(settings, user)
            pbserver.add_alias(settings, f"team@{DOMAIN}", ALICE, BOB)
            publish_our_zone(dns_server, settings)
            publish_remote_zone(dns_server)
            publish_sender_zone(dns_server, key, "v=DMARC1; p=reject")
            dns_server.set_zone(
                QUARANTINE_DOMAIN,
                {"@": {"TXT": "v=spf1 -all"}, "_dmarc": {"TXT": "v=DMARC1; p=quarantine"}},
            )
            with pbserver.RunningServer(settings) as server:
                yield World(settings, server, dns_server, peer, key)
    finally:
        peer.close()


# -- consistency of what IMAP reports ---------------------------------------------------------


def check_consistent(client: IMAPClient, uid: int, original: bytes) -> None:
    items = client.fetch(
        [uid],
        ["RFC822.SIZE", "BODY.PEEK[]", "BODY.PEEK[TEXT]", "BODY.PEEK[HEADER]", "BODYSTRUCTURE"],
    )[uid]
    full = items[b"BODY[]"]
    assert items[b"RFC822.SIZE"] == len(full)
    head, body = original.split(b"\r\n\r\n", 1)
    assert items[b"BODY[TEXT]"] == body
    assert items[b"BODY[HEADER]"].endswith(head + b"\r\n\r\n")
    assert full == items[b"BODY[HEADER]"] + items[b"BODY[TEXT]"]
    structure = items[b"BODYSTRUCTURE"]
    assert (structure[0].lower(), structure[1].lower()) == (b"text", b"plain")
    assert structure[6] == len(body)  # body size in octets (RFC 3501 §7.4.2)


def test_imap_sizes_and_sections_agree_for_every_way_in(world: World) -> None:
    via_mx, via_submission, via_append = marker(), marker(), marker()
    originals = {
        via_mx: world.key.sign(message(via_mx)),
        via_submission: message(via_submission, sender=f"Bob <{BOB}>"),
        via_append: message(via_append),
    }
    with smtp_from_outside(world.port("smtp")) as client:
        assert client.sendmail(SENDER, [ALICE], originals[via_mx]) == {}
    submit(
        world.settings, world.port("submission"), BOB, [ALICE], originals[via_submission], user=BOB
    )
    with world.imap() as client:
        client.append("INBOX", originals[via_append])
        for mark, original in originals.items():
            ((uid, stored),) = fetch_by_message_id(client, mark)
            prepended(stored, original)
            check_consistent(client, uid, original)
            envelope = client.fetch([uid], ["ENVELOPE"])[uid][b"ENVELOPE"]
            assert envelope.message_id == f"<{mark}@e2e.test>".encode()
            assert envelope.subject == f"e2e {mark}".encode()


# -- IDLE ------------------------------------------------------------------------------------


def idle_until_exists(client: IMAPClient, action: Any, within: float = 3.0) -> float:
    """Run ``action`` while ``client`` IDLEs; seconds until the EXISTS came."""
    client.idle()
    try:
        action()
        start = time.monotonic()
        while time.monotonic() - start < within:
            if any(r[1:2] == (b"EXISTS",) for r in client.idle_check(timeout=0.2)):
                return time.monotonic() - start
    finally:
        client.idle_done()
    raise AssertionError(f"no EXISTS within {within} s")


def test_idle_is_told_of_a_local_submission(world: World) -> None:
    mark = marker()
    with world.imap() as alice:
        alice.select_folder("INBOX")
        idle_until_exists(
            alice,
            lambda: submit(
                world.settings,
                world.port("submission"),
                BOB,
                [ALICE],
                message(mark, sender=BOB),
                user=BOB,
            ),
            within=2.0,
        )


def test_idle_is_told_of_a_bounce(world: World) -> None:
    mark = marker()
    nosuch = f"nosuch-{mark[:6]}@{REMOTE_DOMAIN}"
    with world.imap() as alice:
        alice.select_folder("INBOX")

        def send() -> None:
            data = message(mark, sender=ALICE, to=nosuch)
            submit(world.settings, world.port("submission"), ALICE, [nosuch], data)

        idle_until_exists(alice, send, within=8.0)
        uids = alice.search(["BODY", nosuch])
        assert uids, "the EXISTS was not the bounce"


def test_idle_in_junk_is_told_of_quarantined_mail(world: World) -> None:
    mark = marker()
    data = message(mark, sender=f"Promo <promo@{QUARANTINE_DOMAIN}>")
    with world.imap() as alice:
        alice.select_folder("Junk")

        def send() -> None:
            with smtp_from_outside(world.port("smtp")) as client:
                client.sendmail(f"promo@{QUARANTINE_DOMAIN}", [ALICE], data)

        idle_until_exists(alice, send, within=2.0)
        assert fetch_by_message_id(alice, mark, "Junk")
        assert fetch_by_message_id(alice, mark, "INBOX") == []


# -- admin CLI against a running server --------------------------------------------------------


def smtp_auth_ok(world: World, user: str, password: str) -> bool:
    with smtplib.SMTP("127.0.0.1", world.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=client_tls(world.settings))
        try:
            client.login(user, password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


def imap_login_ok(world: World, user: str, password: str) -> bool:
    try:
        world.imap(user, password).logout()
    except imaplib.IMAP4.error:
        return False
    return True


def test_cli_account_changes_apply_to_the_running_server(world: World) -> None:
    dave = f"dave-{marker()[:6]}@{DOMAIN}"
    new_password = "another long passphrase"
    added = world.cli("user", "add", dave, "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    mark = marker()
    with smtp_from_outside(world.port("smtp")) as client:
        assert client.sendmail(SENDER, [dave], world.key.sign(message(mark, to=dave))) == {}
    with world.imap(dave) as client:
        assert fetch_by_message_id(client, mark)

    alias = f"friends-{mark[:6]}@{DOMAIN}"
    aliased = world.cli("alias", "add", alias, f"{dave},{BOB}")
    assert aliased.returncode == 0, aliased.stderr
    mark2 = marker()
    with smtp_from_outside(world.port("smtp")) as client:
        assert client.sendmail(SENDER, [alias], world.key.sign(message(mark2, to=alias))) == {}
    for user in (dave, BOB):
        with world.imap(user) as client:
            assert fetch_by_message_id(client, mark2), user

    changed = world.cli("user", "passwd", dave, "--password-stdin", stdin=new_password + "\n")
    assert changed.returncode == 0, changed.stderr
    assert not imap_login_ok(world, dave, PASSWORD)
    assert not smtp_auth_ok(world, dave, PASSWORD)
    assert imap_login_ok(world, dave, new_password)
    assert smtp_auth_ok(world, dave, new_password)

    deleted = world.cli("user", "del", dave)
    assert deleted.returncode == 0, deleted.stderr
    assert not imap_login_ok(world, dave, new_password)
    with smtp_from_outside(world.port("smtp")) as client:
        client.mail(SENDER)
        code, _ = client.rcpt(dave)
    assert code == 550


# -- submission paths ------------------------------------------------------------------------


def test_sendmail_t_drops_bcc_and_delivers_to_every_header_recipient(world: World) -> None:
    mark = marker()
    text = (
        f"From: Alice <{ALICE}>\nTo: Bob <{BOB}>\nBcc: {CAROL}\nSubject: e2e {mark}\n"
        f"Message-ID: <{mark}@e2e.test>\n\nhello from cron\n"
    )
    done = world.cli("sendmail", "-t", "-f", ALICE, stdin=text)
    assert done.returncode == 0, done.stderr
    (remote,) = wait_for(lambda: world.remote_copies(mark), what="the Bcc copy at the remote")
    assert remote.recipients == [CAROL]
    assert b"\nBcc:" not in remote.data and not remote.data.startswith(b"Bcc:")
    with world.imap(BOB) as client:
        ((_, stored),) = wait_for(lambda: fetch_by_message_id(client, mark), what="bob's copy")
    assert b"\nBcc:" not in stored
    assert stored.endswith(b"\r\n\r\nhello from cron\r\n")  # LF turned into CRLF


def test_implicit_tls_465_with_aiosmtplib_reaches_the_remote_signed(world: World) -> None:
    mark = marker()
    data = message(mark, sender=f"Alice <{ALICE}>", to=CAROL)

    async def send() -> None:
        await aiosmtplib.send(
            data,
            sender=ALICE,
            recipients=[CAROL],
            hostname="127.0.0.1",
            port=world.port("submissions"),
            use_tls=True,
            tls_context=client_tls(world.settings),
            username=ALICE,
            password=PASSWORD,
            timeout=TIMEOUT,
        )

    asyncio.run(send())
    (remote,) = wait_for(lambda: world.remote_copies(mark), what="remote delivery")
    assert remote.data.endswith(data)
    assert dkim.verify(remote.data, dnsfunc=dns_txt(world.dns))


def test_unknown_local_recipient_on_submission_is_refused_at_rcpt(world: World) -> None:
    with smtplib.SMTP("127.0.0.1", world.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=client_tls(world.settings))
        client.login(ALICE, PASSWORD)
        client.mail(ALICE)
        code, text = client.rcpt(f"nobody-{marker()[:6]}@{DOMAIN}")
    assert code == 550 and b"5.1.1" in text, (code, text)


# -- port 25 corner cases ----------------------------------------------------------------------


def test_null_sender_from_the_internet_is_accepted(world: World) -> None:
    """RFC 5321 §4.5.5: bounces (MAIL FROM:<>) must be accepted."""
    mark = marker()
    original = world.key.sign(message(mark))
    with smtp_from_outside(world.port("smtp")) as client:
        assert client.sendmail("", [ALICE], original) == {}
    with world.imap() as client:
        ((_, stored),) = fetch_by_message_id(client, mark)
    assert stored.startswith(b"Return-Path: <>\r\n")


def count_copies(world: World, user: str, mark: str) -> int:
    with world.imap(user) as client:
        return len(fetch_by_message_id(client, mark))


def test_duplicate_recipients_get_one_copy(world: World) -> None:
    mark = marker()
    original = world.key.sign(message(mark))
    with smtp_from_outside(world.port("smtp")) as client:
        refused = client.sendmail(SENDER, [ALICE, ALICE, ALICE.upper()], original)
    assert refused == {}
    assert count_copies(world, ALICE, mark) == 1


def test_alias_and_its_member_in_one_transaction_get_one_copy(world: World) -> None:
    """Postfix's cleanup removes duplicates after alias expansion; a user on a team alias who
    is also named directly (To: alice, Cc: team) should get the message once."""
    mark = marker()
    original = world.key.sign(message(mark))
    with smtp_from_outside(world.port("smtp")) as client:
        assert client.sendmail(SENDER, [ALICE, f"team@{DOMAIN}"], original) == {}
    assert count_copies(world, BOB, mark) == 1
    assert count_copies(world, ALICE, mark) == 1


def test_postmaster_of_every_domain_is_deliverable_out_of_the_box(world: World) -> None:
    """A fresh install (init + user add) publishes ``rua=mailto:postmaster@DOMAIN`` for TLS
    reports (``dns records``) and uses postmaster@ as the ACME contact; RFC 5321 §4.5.1 says
    a server MUST accept mail for postmaster. With no alias configured, it must still land
    in some user's INBOX (Postfix's default aliases send it to root)."""
    published = [
        r["value"] for r in our_records(world.settings) if r["name"].startswith("_smtp._tls.")
    ]
    assert any(f"postmaster@{DOMAIN}" in v for v in published), published
    mark = marker()
    with smtp_from_outside(world.port("smtp")) as client:
        for rcpt in (f"postmaster@{DOMAIN}", "Postmaster"):
            client.mail(SENDER)
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
            client.rset()
        assert (
            client.sendmail(SENDER, [f"postmaster@{DOMAIN}"], world.key.sign(message(mark))) == {}
        )
    assert count_copies(world, ALICE, mark) + count_copies(world, BOB, mark) == 1


def test_quoted_local_part_reaches_the_same_mailbox(world: World) -> None:
    """RFC 5321 §4.1.2: Local-part = Dot-string / Quoted-string; "alice" and alice are the
    same local part (§2.4: only the quoting differs). Syntax is valid: never 501."""
    mark = marker()
    with smtp_from_outside(world.port("smtp")) as client:
        client.mail(SENDER)
        code, text = client.rcpt(f'"alice"@{DOMAIN}')
        assert code == 250, (code, text)
        code, text = client.data(world.key.sign(message(mark)))
        assert code == 250, (code, text)
    assert count_copies(world, ALICE, mark) == 1


# -- POP3 and IMAP on one mailbox -------------------------------------------------------------


def pop3(world: World, user: str) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(
        "127.0.0.1", world.port("pop3s"), context=client_tls(world.settings), timeout=TIMEOUT
    )
    client.user(user)
    client.pass_(PASSWORD)
    return client


def pop3_find(client: poplib.POP3_SSL, mark: str) -> tuple[int, bytes] | None:
    """(message number, bytes) of the message whose Message-ID holds ``mark``."""
    _, listing, _ = client.list()
    for entry in listing:
        number = int(entry.split()[0])
        _, lines, _ = client.retr(number)
        data = b"\r\n".join(lines) + b"\r\n"
        if f"<{mark}@e2e.test>".encode() in data:
            return number, data
    return None


def test_pop3_and_imap_agree_on_one_mailbox(world: World) -> None:
    kept, popped = marker(), marker()
    with smtp_from_outside(world.port("smtp")) as client:
        for mark in (kept, popped):
            assert client.sendmail(SENDER, [BOB], world.key.sign(message(mark, to=BOB))) == {}
    with world.imap(BOB) as imap_client:
        ((_, over_imap),) = fetch_by_message_id(imap_client, popped)
    pop = pop3(world, BOB)
    try:
        found = pop3_find(pop, popped)
        assert found is not None, "POP3 does not see a message IMAP sees"
        number, over_pop3 = found
        assert over_pop3 == over_imap  # same bytes (poplib undoes the dot-stuffing)
        uidl = pop.uidl(number).split()[-1]
        pop.dele(number)
        pop.quit()
    finally:
        pop.close()
    with world.imap(BOB) as imap_client:
        assert fetch_by_message_id(imap_client, popped) == []
        assert fetch_by_message_id(imap_client, kept)
    pop = pop3(world, BOB)
    try:
        assert pop3_find(pop, popped) is None
        assert uidl not in b" ".join(pop.uidl()[1])
    finally:
        pop.quit()


def test_search_body_covers_attached_messages_and_delivery_reports(world: World) -> None:
    """RFC 3501 §6.4.4: BODY matches "the body of the message", which includes an attached
    message/rfc822 (its header too: forward-as-attachment) and a DSN's
    message/delivery-status (RFC 3464), e.g. the Original-Envelope-Id a sender searches."""
    mark = marker()
    forwarded_subject = f"fwdsubj{mark[:8]}"
    envid = f"envid{mark[:8]}"
    outer = (
        f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: e2e {mark}\r\n"
        f"Message-ID: <{mark}@e2e.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: someone@elsewhere.test\r\nSubject: {forwarded_subject}\r\n\r\ninner body\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.elsewhere.test\r\nOriginal-Envelope-Id: {envid}\r\n\r\n"
        "Final-Recipient: rfc822; x@elsewhere.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--b--\r\n"
    ).encode()
    with world.imap() as client:
        client.append("INBOX", outer)
        client.select_folder("INBOX", readonly=True)
        (uid,) = client.search(["HEADER", "Message-ID", mark])
        assert client.search(["BODY", "inner body"]) and uid in client.search(
            ["BODY", "inner body"]
        )
        assert uid in client.search(["BODY", forwarded_subject])
        assert uid in client.search(["TEXT", envid])

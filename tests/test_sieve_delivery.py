"""Sieve at local delivery, end to end: SMTP in over loopback to a real server, then the
folder and flags over IMAP (imaplib), the reject at DATA, redirects and vacation replies
through the outbound queue to a real SMTP peer (tests/smtppeer.py), failures kept."""

from __future__ import annotations

import email
import logging
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pillarbox.spam.reputation import ReputationStore
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.imaphelp import TIMEOUT, login
from tests.queuehelpers import queue_settings, wait_for
from tests.sievehelp import activate_script, sieve_cli
from tests.smtppeer import SmtpPeer, free_port_on

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@remote.test"


@dataclass
class World:
    server: pbserver.RunningServer
    peer: SmtpPeer
    events: list[logging.LogRecord]

    def script(self, text: str, user: str = ALICE) -> None:
        activate_script(self.server.settings, user, text)

    def send(self, body: bytes, to: list[str] | None = None, sender: str = CAROL) -> None:
        with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=TIMEOUT) as smtp:
            smtp.sendmail(sender, to or [ALICE], body)

    def event(self, name: str, **fields: str) -> logging.LogRecord:
        def found() -> logging.LogRecord | None:
            for record in self.events:
                values = getattr(record, "fields", {})
                if record.getMessage() == name and all(
                    str(values.get(k)) == v for k, v in fields.items()
                ):
                    return record
            return None

        return wait_for(found, what=f"log event {name}")  # type: ignore[no-any-return]


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]):
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture
def world(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[World]:
    port = free_port_on("127.0.0.3")
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.3"}}
    )
    settings = queue_settings(
        tmp_path, dns_server.address, port, {"mailauth": {"verify_inbound": False}}
    )
    pbserver.add_user(settings, BOB)
    events: list[logging.LogRecord] = []
    handler = _Collect(events)
    for name in ("pillarbox.sieve", "pillarbox.delivery"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        with (
            SmtpPeer("127.0.0.3", port, name="mx.remote.test") as peer,
            pbserver.RunningServer(settings) as server,
        ):
            yield World(server, peer, events)
    finally:
        for name in ("pillarbox.sieve", "pillarbox.delivery"):
            logging.getLogger(name).removeHandler(handler)


def mail(subject: str, *, to: str = ALICE, extra: str = "", body: str = "Hello.") -> bytes:
    return (
        f"From: Carol <{CAROL}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\r\n{extra}\r\n{body}\r\n"
    ).encode()


def folder_flags(server: pbserver.RunningServer, folder: str, user: str = ALICE) -> list[str]:
    """The FLAGS of every message in ``folder``, as IMAP reports them."""
    with login(server, user) as imap:
        typ, _ = imap.select(f'"{folder}"', readonly=True)
        assert typ == "OK", folder
        typ, data = imap.fetch("1:*", "(FLAGS)")
        if data == [None]:
            return []
        return [item.decode() for item in data if isinstance(item, bytes)]


def count(server: pbserver.RunningServer, folder: str, user: str = ALICE) -> int:
    with login(server, user) as imap:
        typ, data = imap.select(f'"{folder}"', readonly=True)
        return int(data[0]) if typ == "OK" and data[0] else 0


def test_the_cli_activates_and_deactivates_for_the_very_next_message(world: World) -> None:
    # The server answers "has this user a script?" from memory; `pillarbox sieve` runs in
    # another process and tells it (control socket) before returning, so no message after
    # the command is delivered as if nothing had changed.
    settings = world.server.settings
    world.send(mail("before"))
    activate_script(settings, ALICE, 'require "fileinto";\r\nfileinto "Later";\r\n')
    world.send(mail("filtered"))
    assert count(world.server, "Later") == 1 and count(world.server, "INBOX") == 1
    assert sieve_cli(settings, "activate", ALICE, "--none") == 0
    world.send(mail("after"))
    assert count(world.server, "Later") == 1 and count(world.server, "INBOX") == 2
    assert sieve_cli(settings, "activate", ALICE, "main") == 0
    world.send(mail("again"))
    assert count(world.server, "Later") == 2


def test_fileinto_a_new_folder_with_flags_and_keywords(world: World) -> None:
    world.script(
        'require ["fileinto", "imap4flags", "mailbox"];\n'
        'if header :contains "subject" "report" {\n'
        '  addflag "\\\\Flagged";\n'
        '  fileinto :create :flags ["\\\\Seen", "$Work"] "Lists/Reports";\n'
        "}\n"
        'if allof (header :contains "subject" "plain", mailboxexists "Lists/Reports")'
        ' { addflag "$Later"; }\n'
    )
    world.send(mail("weekly report"))
    world.send(mail("plain note"))
    # The folder did not exist: delivery made it, IMAP lists it.
    with login(world.server) as imap:
        typ, listing = imap.list()
        assert typ == "OK"
        assert any(b'"Lists/Reports"' in line or b" Lists/Reports" in line for line in listing)
    (reports,) = folder_flags(world.server, "Lists/Reports")
    assert "\\Seen" in reports and "$Work" in reports and "\\Flagged" not in reports
    (plain,) = folder_flags(world.server, "INBOX")
    assert "$Later" in plain and "\\Seen" not in plain  # the implicit keep has the flags


def test_mailboxexists_asks_the_store_for_a_folder_made_over_imap(world: World) -> None:
    """RFC 5490 §3.1: a folder the user created (no mail in it yet) exists for the script;
    a missing one, or a name no folder can have, does not."""
    with login(world.server) as imap:
        assert imap.create("Projects")[0] == "OK"
    world.script(
        'require ["mailbox", "imap4flags"];\n'
        'if mailboxexists "Projects" { addflag "$HaveProjects"; }\n'
        'if mailboxexists "Missing" { addflag "$HaveMissing"; }\n'
        'if mailboxexists "a/../../b" { addflag "$HaveBad"; }\n'
    )
    world.send(mail("asking"))
    (flags,) = folder_flags(world.server, "INBOX")
    assert "$HaveProjects" in flags
    assert "$HaveMissing" not in flags and "$HaveBad" not in flags


def test_script_overrides_the_spam_folder_and_discard_stores_nothing(world: World) -> None:
    """The spam verdict's folder is the implicit keep; a script that reads our
    X-Pillarbox-Spam field can file the mail elsewhere (a forged field from outside is
    replaced by ours, so it cannot steer the script)."""
    store = ReputationStore(world.server.settings.data_dir / "spam.db")
    try:
        store.set_thresholds(ALICE, -100, 900)  # everything counts as junk for Alice
    finally:
        store.close()
    world.server.call(world.server.server.ctx.control.invoke("spam.changed", {}))
    world.script(
        'require "fileinto";\n'
        'if allof (header :contains "x-pillarbox-spam" "verdict=junk",\n'
        '          header :is "subject" "from my boss") { fileinto "INBOX"; stop; }\n'
        'if header :is "subject" "drop me" { discard; }\n'
    )
    world.send(mail("from my boss", extra="X-Pillarbox-Spam: verdict=ham; score=0\r\n"))
    world.send(mail("an offer", extra="X-Pillarbox-Spam: verdict=ham; score=0\r\n"))
    world.send(mail("drop me"))
    world.event("sieve discarded", user=ALICE)
    assert count(world.server, "INBOX") == 1  # the script's fileinto
    assert count(world.server, "Junk") == 1  # the implicit keep: the verdict's folder


def test_reject_is_a_550_at_data(world: World) -> None:
    world.script('require "reject";\nif header :contains "subject" "buy" { reject "No ads."; }')
    with pytest.raises(smtplib.SMTPDataError) as refused:
        world.send(mail("buy now"))
    assert refused.value.smtp_code == 550
    assert b"5.7.1 No ads." in refused.value.smtp_error
    world.send(mail("hello"))  # the session and server carry on; other mail arrives
    assert count(world.server, "INBOX") == 1


def test_reject_of_one_recipient_among_two_is_a_bounce(world: World) -> None:
    world.script('require "reject";\nreject "Not for me.";')
    world.send(mail("to both"), to=[ALICE, BOB])
    assert count(world.server, "INBOX", BOB) == 1
    assert count(world.server, "INBOX", ALICE) == 0
    (bounce,) = wait_for(lambda: world.peer.messages, what="the bounce at the peer")
    assert bounce.sender == "" and bounce.recipients == [CAROL]
    assert b"Not for me." in bounce.data and b"5.7.1" in bounce.data


def test_redirect_goes_out_through_the_queue(world: World) -> None:
    world.script('require "copy";\nredirect :copy "dave@remote.test";')
    world.send(mail("pass it on"))
    (copy,) = wait_for(lambda: world.peer.messages, what="the redirected copy")
    assert copy.sender == CAROL and copy.recipients == ["dave@remote.test"]
    assert copy.data.startswith(b"Delivered-To: alice@example.test\r\n")
    assert count(world.server, "INBOX") == 1


def test_vacation_replies_once_per_days_and_never_to_lists(world: World) -> None:
    world.script(
        'require "vacation";\n'
        'vacation :days 2 :subject "Away" :addresses ["alice@example.test"] "Back Monday.";'
    )
    world.send(mail("first"))
    (reply,) = wait_for(lambda: world.peer.messages, what="the vacation reply")
    assert reply.sender == "" and reply.recipients == [CAROL]
    parsed = email.message_from_bytes(reply.data)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Subject"] == "Away"
    assert parsed["In-Reply-To"] == "<first@remote.test>"
    assert "<first@remote.test>" in parsed["References"]
    assert "Back Monday." in parsed.get_payload()
    world.send(mail("second"))
    world.event("vacation not sent", reason="already replied within 2 days")
    world.send(mail("list post", extra="List-Id: <l.remote.test>\r\n"), sender="dan@remote.test")
    world.event("vacation not sent", reason="a list message")
    world.send(mail("not to me", to="someone@remote.test"), sender="eve@remote.test")
    world.event("vacation not sent", reason="none of the user's addresses is in To/Cc")
    assert len(world.peer.messages) == 1
    assert count(world.server, "INBOX") == 4  # vacation never takes the message away


def test_a_failing_script_delivers_to_inbox_and_logs_why(world: World) -> None:
    world.script("".join(f'redirect "r{i}@remote.test";\n' for i in range(5)))
    world.send(mail("still arrives"))
    record = world.event("sieve failed, kept", user=ALICE, folder="INBOX")
    fields = getattr(record, "fields", {})
    assert "redirects" in fields["error"] and fields["queue_id"]
    assert count(world.server, "INBOX") == 1
    assert world.peer.messages == []


def test_a_reject_off_the_smtp_path_is_a_bounce_not_an_error(world: World) -> None:
    # Alice redirects to Bob (a local delivery no SMTP client waits for); Bob rejects.
    world.script(f'redirect "{BOB}";')
    world.script('require "reject";\nreject "Bob is not taking mail.";', user=BOB)
    world.send(mail("relayed"))
    world.event("sieve redirected", user=ALICE)
    (bounce,) = wait_for(lambda: world.peer.messages, what="Bob's bounce at the peer")
    assert bounce.sender == "" and bounce.recipients == [CAROL]
    assert b"Bob is not taking mail." in bounce.data
    assert count(world.server, "INBOX", BOB) == 0 and count(world.server, "INBOX") == 0

"""End to end: one user cannot reach another's mail, and nobody can relay through us.

IMAP: bob tries every mailbox-name trick against alice's Maildir (relative paths, home and
shared namespaces, URL and modified-UTF-7 encodings of "." and "/", absolute paths, NUL,
Maildir++ "." prefixes) with SELECT, EXAMINE, STATUS, APPEND, COPY, MOVE, RENAME, DELETE and
LIST. Afterwards alice's mail and folders must be exactly as before (on disk and as alice
sees them over IMAP), nothing may exist outside bob's own Maildir, and no reply to bob may
mention alice's secret folder or message.

SMTP: relaying to remote.example (whose MX is a peer on 127.0.0.2 that would record any
relayed message) from port 25 unauthenticated, with address tricks, from 587 without AUTH;
alice sending as bob on 587 (envelope and From: tricks); mail on port 25 forging our own
domain is refused by the DMARC record we publish.
"""

from __future__ import annotations

import hashlib
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    BOB,
    DOMAIN,
    REMOTE_DOMAIN,
    TIMEOUT,
    client_tls,
    imap,
    marker,
    message,
    publish_our_zone,
    publish_remote_zone,
    smtp_from_outside,
    submit,
)
from tests.imaphelp import Raw
from tests.smtppeer import SmtpPeer, free_port_on


def close(raw: Raw) -> None:
    """Really close (Raw.close leaves the socket open while its makefile lives)."""
    raw.file.close()
    raw.close()


SECRET_FOLDER = "SecretAliceFolder"
SECRET_SUBJECT = "alice-private-subject-7f3a"


@dataclass
class World:
    settings: Settings
    server: pbserver.RunningServer
    peer: SmtpPeer

    def alice_root(self) -> Path:
        return self.settings.mail_dir / DOMAIN / "alice"

    def bob_root(self) -> Path:
        return self.settings.mail_dir / DOMAIN / "bob"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-isolation")
    port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", port, name=f"mx.{REMOTE_DOMAIN}")
    try:
        with DnsTestServer() as dns_server:
            from tests.e2e_world import world_settings

            settings = world_settings(tmp, dns_server, port)
            for user in (ALICE, BOB):
                pbserver.add_user(settings, user)
            publish_our_zone(dns_server, settings)
            publish_remote_zone(dns_server)
            with pbserver.RunningServer(settings) as server:
                with imap(settings, server.port("imaps")) as alice:
                    alice.create_folder(SECRET_FOLDER)
                    secret = message(marker(), subject=SECRET_SUBJECT)
                    alice.append("INBOX", secret)
                    alice.append(SECRET_FOLDER, secret)
                with imap(settings, server.port("imaps"), BOB) as bob:
                    bob.append("INBOX", message(marker(), to=BOB, subject="bob's own"))
                yield World(settings, server, peer)
    finally:
        peer.close()


# -- IMAP --------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or "dir") of everything under ``root``, except the
    Maildir tmp/ scratch area and the SQLite index files (which the server rewrites on its
    own; what alice sees through them is checked over IMAP)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.parent.name == "tmp" or path.name.startswith("pillarbox-index.sqlite"):
            continue
        try:
            out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:  # vanished while we looked (bob's own session at work)
            continue
    return out


def outside_bob(world: World) -> dict[str, str]:
    """Everything under the mail dir that is not in bob's Maildir."""
    snap = snapshot(world.settings.mail_dir)
    return {k: v for k, v in snap.items() if not k.startswith(f"{DOMAIN}/bob")}


def name_tricks(world: World) -> list[bytes]:
    alice_abs = str(world.alice_root()).encode()
    return [
        b'"../alice"',
        b'"../../example.test/alice"',
        b'"INBOX/../../alice"',
        b'"~alice"',
        b'"~alice/INBOX"',
        b'"~/../alice"',
        b'"#shared/alice"',
        b'"#user/alice"',
        b'"#user/alice/INBOX"',
        b'"Other Users/alice"',
        b'"%2e%2e/alice"',
        b'"..%2falice"',
        b'"' + alice_abs + b'"',
        b'"' + alice_abs + b"/." + SECRET_FOLDER.encode() + b'"',
        b'"/alice"',
        b'"..' + SECRET_FOLDER.encode() + b'"',
        b'".' + SECRET_FOLDER.encode() + b'"',
        b'"../alice/.' + SECRET_FOLDER.encode() + b'"',
        b'"..\\\\alice"',
        b'"&AC8-alice"',  # modified UTF-7 "/alice"
        b'"..&AC8-alice"',  # "../alice"
        b'"&AC4ALgAv-alice"',  # "../alice" entirely encoded
        b'"&AC4ALg-/alice"',
        b'"&-AC4ALg-/alice"',
        b"{9+}\r\n..\x00/alice",  # NUL inside a literal
        b"{12+}\r\nINBOX\x00/alice",
        b'"INBOX.."',
        b'"./../alice"',
        b'"*"',
        b'"%"',
    ]


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 2)[1]


class BobSession:
    """bob's IMAP session; reconnects (and retries the command once) when the server ends
    it, as it may after too many BADs."""

    def __init__(self, world: World):
        self.world = world
        self.raw = self._connect()

    def _connect(self) -> Raw:
        raw = Raw(self.world.server)
        raw.login(BOB)
        return raw

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        try:
            return self.raw.cmd(tag, text)
        except (ConnectionError, OSError):
            close(self.raw)
            self.raw = self._connect()
            return self.raw.cmd(tag, text)

    def close(self) -> None:
        close(self.raw)


def try_name(bob: BobSession, i: int, name: bytes) -> list[bytes]:
    """Every command that takes a mailbox name, with ``name``."""
    replies: list[bytes] = []
    for verb, tail in (
        (b"SELECT", b""),
        (b"EXAMINE", b""),
        (b"STATUS", b" (MESSAGES UIDNEXT)"),
        (b"SUBSCRIBE", b""),
    ):
        lines = bob.cmd(b"T%d" % i, verb + b" " + name + tail)
        replies += lines
        if verb in (b"SELECT", b"EXAMINE") and tagged(lines) == b"OK":
            # Only bob's own (possibly new, empty) mailbox may be selected.
            replies += bob.cmd(b"F%d" % i, b"FETCH 1:* (BODY.PEEK[HEADER])")
    replies += bob.cmd(b"A%d" % i, b"APPEND " + name + b" {4+}\r\nhi\r\n")
    replies += bob.cmd(b"S%d" % i, b"SELECT INBOX")
    for verb in (b"COPY", b"MOVE", b"UID COPY"):
        replies += bob.cmd(b"C%d" % i, verb + b" 1 " + name)
    replies += bob.cmd(b"R%d" % i, b"RENAME " + name + b" Loot%d" % i)
    replies += bob.cmd(b"D%d" % i, b"DELETE " + name)
    return replies


def test_bob_cannot_reach_alices_mailboxes_by_any_name(world: World) -> None:
    alice_before = snapshot(world.alice_root())
    others_before = outside_bob(world)
    replies: list[bytes] = []
    session = BobSession(world)
    try:
        for i, name in enumerate(name_tricks(world)):
            replies += try_name(session, i, name)
    finally:
        session.close()
    bob = Raw(world.server)
    try:
        bob.login(BOB)
        for ref, pattern in (
            (b'""', b'"*"'),
            (b'""', b'"%"'),
            (b'""', b'"%/%/%"'),
            (b'"../"', b'"*"'),
            (b'""', b'"../*"'),
            (b'"~alice"', b'"*"'),
            (b'"#shared"', b'"*"'),
            (b'"/"', b'"*"'),
            (b'""', b'"' + str(world.alice_root()).encode() + b'/*"'),
        ):
            replies += bob.cmd(b"L", b"LIST " + ref + b" " + pattern)
            replies += bob.cmd(b"L", b"LSUB " + ref + b" " + pattern)
        replies += bob.cmd(b"N", b"NAMESPACE")
        listed = bob.cmd(b"Z", b'LIST "" "*"')
        assert listed[-1].startswith(b"Z OK")
    finally:
        close(bob)

    # Data about a mailbox comes in untagged responses (LIST, STATUS, FETCH ...); a tagged NO
    # may echo the name bob typed, which is no leak.
    # LSUB may list what bob himself subscribed to (RFC 3501 §6.3.6 allows subscribing to
    # names that do not exist); LIST below must show only his own mailboxes.
    data = [
        r
        for r in replies
        if r.startswith(b"* ") and not r.startswith((b"* BAD", b"* NO", b"* LSUB"))
    ]
    leaked = [r for r in data if SECRET_FOLDER.encode() in r] + [
        r for r in replies if SECRET_SUBJECT.encode() in r
    ]
    assert leaked == []
    own = {line.rsplit(b" ", 1)[1].strip(b'"\r\n') for line in listed[:-1]}
    assert own == {b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"}, own
    assert snapshot(world.alice_root()) == alice_before
    assert outside_bob(world) == others_before

    with imap(world.settings, world.server.port("imaps")) as alice:
        names = sorted(name for _, _, name in alice.list_folders())
        assert SECRET_FOLDER in names and not any(n.startswith("Loot") for n in names)
        for folder in ("INBOX", SECRET_FOLDER):
            assert alice.folder_status(folder, ["MESSAGES"])[b"MESSAGES"] == 1


@pytest.mark.parametrize(
    ("verb", "name"), [(b"SUBSCRIBE", b'"../alice"'), (b"UNSUBSCRIBE", b'"a//b"')]
)
def test_subscribe_to_an_invalid_name_is_a_clear_error(
    world: World, verb: bytes, name: bytes
) -> None:
    """RFC 3501 §6.3.6: a name that cannot be a mailbox is NO (or BAD) with the reason,
    never an internal error (store.names.BadMailboxName escaping from
    store/index.py subscribe through imap/session_mailboxes.py do_subscribe)."""
    bob = Raw(world.server)
    try:
        bob.login(BOB)
        (line,) = bob.cmd(b"S", verb + b" " + name)
    finally:
        close(bob)
    assert line.startswith((b"S NO", b"S BAD")), line
    assert b"SERVERBUG" not in line and b"internal" not in line.lower(), line


def test_bob_cannot_log_in_as_alice_or_authorize_as_her(world: World) -> None:
    bob = Raw(world.server)
    try:
        # SASL PLAIN with authzid=alice, authcid=bob: proxy authorisation must be refused.
        import base64

        token = base64.b64encode(f"{ALICE}\0{BOB}\0{pbserver.PASSWORD}".encode())
        lines = bob.cmd(b"A", b"AUTHENTICATE PLAIN " + token)
        if lines[-1].startswith(b"A OK"):
            status = bob.cmd(b"S", b'STATUS "' + SECRET_FOLDER.encode() + b'" (MESSAGES)')
            assert not status[-1].startswith(b"S OK"), "bob got into alice's mailbox via authzid"
        else:
            assert lines[-1].startswith(b"A NO"), lines
        lines = bob.cmd(b"L", b"LOGIN " + ALICE.encode() + b' "' + b"wrong" + b'"')
        assert lines[-1].startswith(b"L NO")
    finally:
        close(bob)


# -- SMTP relay ------------------------------------------------------------------------------


RELAY_TRICKS = [
    f"carol@{REMOTE_DOMAIN}",
    f"CAROL@{REMOTE_DOMAIN.upper()}",
    f"carol@{REMOTE_DOMAIN}.",
    f"carol%{REMOTE_DOMAIN}@{DOMAIN}",
    f"@{DOMAIN}:carol@{REMOTE_DOMAIN}",
    f'"carol@{REMOTE_DOMAIN}"@{DOMAIN}',
    f"carol@{REMOTE_DOMAIN}@{DOMAIN}",
    f"{REMOTE_DOMAIN}!carol@{DOMAIN}",
    "carol@[127.0.0.2]",
    f"carol@mail.{DOMAIN}",
    f"carol@sub.{DOMAIN}",
]


def rcpt_replies(client: smtplib.SMTP, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    code, reply = client.mail("attacker@elsewhere.invalid")
    assert code == 250, reply
    return {r: client.rcpt(r) for r in recipients}


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_no_relay_from_port_25_by_any_address_trick(world: World, rcpt: str) -> None:
    before = len(world.peer.messages)
    with smtp_from_outside(world.server.port("smtp")) as client:
        (reply,) = rcpt_replies(client, [rcpt]).values()
        if reply[0] < 400:
            client.data(message(marker()))
    assert 500 <= reply[0] < 600, reply
    assert len(world.peer.messages) == before


def test_no_relay_from_submission_without_auth(world: World) -> None:
    with smtplib.SMTP("127.0.0.1", world.server.port("submission"), timeout=TIMEOUT) as client:
        client.ehlo("laptop.local")
        assert not client.has_extn("auth"), "AUTH offered before STARTTLS"
        code, _ = client.mail(ALICE)
        assert code >= 500
        client.starttls(context=client_tls(world.settings))
        client.ehlo("laptop.local")
        assert client.has_extn("auth")
        code, text = client.mail(ALICE)
        assert code == 530, text
        code, text = client.rcpt(f"carol@{REMOTE_DOMAIN}")
        assert code >= 500, text


def from_tricks() -> list[str]:
    return [
        f"From: Bob <{BOB}>",
        f"From: <{ALICE}>, <{BOB}>",
        f'From: "{ALICE}" <{BOB}>',
        f"From: {BOB} ({ALICE})",
        f"From: =?utf-8?q?{ALICE.replace('@', '=40')}?= <{BOB}>",
        f"From: <{ALICE}>\r\nFrom: <{BOB}>",
        f"From: Bob <{BOB.upper()}>",
        f"From: friends: <{BOB}>;",
        f"FROM:<{BOB}>",
        f"From:\r\n <{BOB}>",
    ]


def alice_on_587(world: World) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", world.server.port("submission"), timeout=TIMEOUT)
    client.starttls(context=client_tls(world.settings))
    client.login(ALICE, pbserver.PASSWORD)
    return client


def test_alice_cannot_send_as_bob_in_the_from_header(world: World) -> None:
    """Every trick in one authenticated session (a refused DATA leaves the session usable)."""
    got_through = {}
    marks = {}
    with alice_on_587(world) as client:
        for from_line in from_tricks():
            mark = marks[from_line] = marker()
            data = (
                f"{from_line}\r\nTo: carol@{REMOTE_DOMAIN}\r\nSubject: {mark}\r\n"
                f"Message-ID: <{mark}@e2e.test>\r\n\r\nhello\r\n"
            ).encode()
            try:
                client.sendmail(ALICE, [f"carol@{REMOTE_DOMAIN}"], data)
            except smtplib.SMTPDataError as refused:
                if refused.smtp_code not in (550, 553) or b"5.7.1" not in refused.smtp_error:
                    got_through[from_line] = (refused.smtp_code, refused.smtp_error)
            else:
                got_through[from_line] = (250, b"accepted")
    assert got_through == {}
    sent = [m for m in marks.values() if any(m.encode() in r.data for r in world.peer.messages)]
    assert sent == []


def test_alice_cannot_use_bob_as_envelope_sender(world: World) -> None:
    accepted = {}
    with alice_on_587(world) as client:
        for sender in (BOB, f"bob+x@{DOMAIN}", BOB.upper(), "bob", "", f"{BOB} SIZE=10"):
            code, text = client.mail(sender)
            if code == 250 and sender:  # MAIL FROM:<> is a bounce, allowed; From: decides
                accepted[sender] = (code, text)
            client.rset()
    assert accepted == {}


def test_alice_may_use_her_own_tagged_address(world: World) -> None:
    """The positive control for the two tests above."""
    mark = marker()
    tagged_addr = f"alice+shop@{DOMAIN}"
    data = message(mark, sender=f"Alice <{tagged_addr}>", to=f"carol@{REMOTE_DOMAIN}")
    assert (
        submit(
            world.settings,
            world.server.port("submission"),
            tagged_addr,
            [f"carol@{REMOTE_DOMAIN}"],
            data,
        )
        == {}
    )


def test_outside_mail_forging_our_domain_is_refused_by_our_dmarc(world: World) -> None:
    """Our published records (SPF "mx -all", DMARC p=reject) protect our users: mail on port 25
    from a random address claiming to be from alice@example.test is refused."""
    mark = marker()
    data = message(mark, sender=f"Alice <{ALICE}>", to=BOB)
    with (
        smtp_from_outside(world.server.port("smtp")) as client,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        client.sendmail(ALICE, [BOB], data)
    assert refused.value.smtp_code == 550
    with imap(world.settings, world.server.port("imaps"), BOB) as bob:
        bob.select_folder("INBOX", readonly=True)
        assert bob.search(["HEADER", "Message-ID", mark]) == []


def test_forged_authentication_results_from_a_user_never_reach_another(world: World) -> None:
    """alice cannot make bob's client believe a message passed our checks: an
    Authentication-Results claiming our authserv-id is removed on submission too."""
    mark = marker()
    forged = (
        b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.example;"
        b" dmarc=pass header.from=bank.example\r\n"
    )
    data = forged + message(mark, sender=f"Alice <{ALICE}>", to=BOB)
    assert submit(world.settings, world.server.port("submission"), ALICE, [BOB], data) == {}
    with imap(world.settings, world.server.port("imaps"), BOB) as bob:
        bob.select_folder("INBOX", readonly=True)
        (uid,) = bob.search(["HEADER", "Message-ID", mark])
        stored = bob.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert b"bank.example" not in stored

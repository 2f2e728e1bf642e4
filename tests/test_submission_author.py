"""From-header spoofing on submission, over real sockets: 587 (STARTTLS) and 465 (implicit
TLS) with smtplib and aiosmtplib, the send-as grants through the real CLI, and what the
accepted messages look like to an IMAP client (imapclient's ENVELOPE)."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator

import aiosmtplib
import pytest
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered

TIMEOUT = 10
ALICE = "alice@example.test"
BOB = "bob@example.test"

# Each of these, sent by alice, would show bob (or nobody we know) as the author somewhere:
# in a mail client's From line, in DMARC's From domain, or in our own IMAP ENVELOPE.
SPOOFS = {
    "display name is another address": f"From: {ALICE} <{BOB}>",
    "display name shows another address": f'From: "{BOB}" <{ALICE}>',
    "encoded display name": f"From: =?utf-8?q?bob=40example=2Etest?= <{ALICE}>",
    "base64 display name": f"From: =?utf-8?b?Ym9iQGV4YW1wbGUudGVzdA==?= <{ALICE}>",
    "comment shows another address": f"From: {ALICE} ({BOB})",
    "second From field": f"From: {ALICE}\r\nFrom: {BOB}",
    "obsolete second From field": f"From: {ALICE}\r\nFROM : {BOB}",
    "two mailboxes": f"From: {ALICE}, {BOB}",
    "two mailboxes, own Sender": f"From: {BOB}, {ALICE}\r\nSender: {ALICE}",
    "someone else's Sender": f"From: {ALICE}\r\nSender: {BOB}",
    "group": f"From: Team: {ALICE}, {BOB};",
    "encoded word in addr-spec": f"From: =?utf-8?q?bob?=@example.test <{ALICE}>",
    "text after the angle address": f"From: <{ALICE}>{BOB}",
    "other domain": "From: Alice <alice@elsewhere.test>",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path_factory.mktemp("author") / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 1.0},
                "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
            },
        )
        for address in (ALICE, BOB, "carol@example.test"):
            pbserver.add_user(settings, address)
        pbserver.add_alias(settings, "sales@example.test", ALICE)
        with pbserver.RunningServer(settings) as running:
            yield running


def tls_context(server: pbserver.RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.settings.tls.ca))


def message(author_fields: str, mark: str) -> bytes:
    return (
        f"{author_fields}\r\nTo: {BOB}\r\nSubject: {mark}\r\n"
        f"Message-ID: <{mark}@example.test>\r\n\r\nbody {mark}\r\n"
    ).encode()


def submit_587(server: pbserver.RunningServer, data: bytes, user: str = ALICE) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=tls_context(server))
        client.login(user, pbserver.PASSWORD)
        client.mail(user)
        client.rcpt(BOB)
        return client.data(data)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert settings.source is not None
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def stored_count(settings: Settings, user: str, mark: str) -> int:
    return sum(mark.encode() in p.read_bytes() for p in delivered(settings, user))


def envelope_from(server: pbserver.RunningServer, user: str, mark: str) -> list[str]:
    """The From addresses imapclient's ENVELOPE shows for the message with ``mark``."""
    with IMAPClient("127.0.0.1", port=server.port("imaps"), ssl_context=tls_context(server)) as c:
        c.login(f"{user}@example.test", pbserver.PASSWORD)
        c.select_folder("INBOX", readonly=True)
        (uid,) = c.search(["SUBJECT", mark])
        envelope = c.fetch([uid], ["ENVELOPE"])[uid][b"ENVELOPE"]
        return [f"{a.mailbox.decode()}@{a.host.decode()}" for a in envelope.from_]


@pytest.mark.parametrize("case", sorted(SPOOFS))
def test_spoofed_author_is_refused_on_587(server: pbserver.RunningServer, case: str) -> None:
    mark = uuid.uuid4().hex
    code, text = submit_587(server, message(SPOOFS[case], mark))
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert stored_count(server.settings, "bob", mark) == 0


def test_refusal_names_the_address(server: pbserver.RunningServer) -> None:
    code, text = submit_587(server, message(f"From: Alice <{BOB}>", uuid.uuid4().hex))
    assert code == 550 and BOB.encode() in text and b"not yours" in text


async def test_spoofed_author_is_refused_on_465(server: pbserver.RunningServer) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=server.port("submissions"), use_tls=True,
        tls_context=tls_context(server), timeout=TIMEOUT,
    )  # fmt: skip
    async with client:
        await client.login(ALICE, pbserver.PASSWORD)
        for case in ("display name is another address", "second From field"):
            mark = uuid.uuid4().hex
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await client.sendmail(ALICE, [BOB], message(SPOOFS[case], mark))
            assert refused.value.code == 550 and refused.value.message.startswith("5.7.1")
            # The session goes on: the next (honest) message is taken.
            errors, _ = await client.sendmail(ALICE, [BOB], message(f"From: {ALICE}", mark))
            assert errors == {}


@pytest.mark.parametrize(
    "author_fields, shown",
    [
        (f"From: Alice Example <{ALICE}>", [ALICE]),
        ("From: Alice <alice+lists@example.test>", ["alice+lists@example.test"]),
        ("From: Sales <sales@example.test>", ["sales@example.test"]),
        (f"From: sales@example.test, {ALICE}\r\nSender: {ALICE}", ["sales@example.test", ALICE]),
        (f'From: "{ALICE}" <{ALICE}>', [ALICE]),
        (f"From: =?utf-8?q?Al=C3=AFce?= <{ALICE}>", [ALICE]),
    ],
)
def test_own_addresses_pass_and_imap_shows_them(
    server: pbserver.RunningServer, author_fields: str, shown: list[str]
) -> None:
    mark = uuid.uuid4().hex
    code, text = submit_587(server, message(author_fields, mark))
    assert code == 250, text
    assert envelope_from(server, "bob", mark) == shown


def test_send_as_grants_from_the_cli(server: pbserver.RunningServer) -> None:
    settings = server.settings
    carol = "carol@example.test"
    author = "From: Support <support@partner.test>"  # not ours, not carol's
    assert submit_587(server, message(author, uuid.uuid4().hex), user=carol)[0] == 550

    added = cli(settings, "user", "sendas", "add", carol, "@partner.test")
    assert added.returncode == 0, added.stderr
    listed = cli(settings, "user", "sendas", "list", carol)
    assert "@partner.test\t(granted)" in listed.stdout and carol in listed.stdout
    mark = uuid.uuid4().hex
    assert submit_587(server, message(author, mark), user=carol)[0] == 250
    assert envelope_from(server, "bob", mark) == ["support@partner.test"]
    # A grant for one domain is no grant for another, nor for our own users.
    code, _ = submit_587(server, message(f"From: {BOB}", uuid.uuid4().hex), user=carol)
    assert code == 550

    deleted = cli(settings, "user", "sendas", "del", carol, "@partner.test")
    assert deleted.returncode == 0, deleted.stderr
    assert submit_587(server, message(author, uuid.uuid4().hex), user=carol)[0] == 550
    missing = cli(settings, "user", "sendas", "del", carol, "@partner.test")
    assert missing.returncode != 0 and "no send-as grant" in missing.stderr


def test_send_as_grant_covers_the_envelope_sender(server: pbserver.RunningServer) -> None:
    carol = "carol@example.test"
    assert cli(server.settings, "user", "sendas", "add", carol, "news@partner.test").returncode == 0
    try:
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as client:
            client.starttls(context=tls_context(server))
            client.login(carol, pbserver.PASSWORD)
            assert client.mail("news@partner.test")[0] == 250
            client.rset()
            code, text = client.mail("other@partner.test")
            assert code == 553 and b"other@partner.test" in text
    finally:
        cli(server.settings, "user", "sendas", "del", carol, "news@partner.test")


def test_unknown_user_and_bad_pattern_are_clear_errors(server: pbserver.RunningServer) -> None:
    unknown = cli(server.settings, "user", "sendas", "add", "nobody@example.test", "@x.test")
    assert unknown.returncode != 0 and "no such user" in unknown.stderr
    bad = cli(server.settings, "user", "sendas", "add", ALICE, "not an address")
    assert bad.returncode != 0 and "invalid" in bad.stderr

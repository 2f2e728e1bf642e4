"""Submission on 587 (STARTTLS) and 465 (implicit TLS): TLS before AUTH, AUTH before MAIL,
sender ownership (envelope and From:), remote recipients into the outbound queue."""

from __future__ import annotations

import base64
import shutil
import smtplib
import ssl
import subprocess
import uuid
from collections.abc import Iterator

import aiosmtplib
import pytest

from pillarbox import control
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.mailfiles import delivered

TIMEOUT = 10
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def sub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path_factory.mktemp("submission") / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 1.0},
                "limits": {"auth_failure_delay": 0.05},
                # Remote delivery must not succeed here: the mail stays in the queue.
                "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
            },
        )
        for user in ("alice", "bob"):
            pbserver.add_user(settings, f"{user}@example.test")
        pbserver.add_alias(settings, "sales@example.test", ALICE)
        with pbserver.RunningServer(settings) as running:
            yield running


def tls_context(server: pbserver.RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.settings.tls.ca))


def logged_in(server: pbserver.RunningServer, user: str = ALICE) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT)
    client.starttls(context=tls_context(server))
    client.login(user, pbserver.PASSWORD)
    return client


def message(mark: str, sender: str = ALICE, to: str = "bob@example.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {mark}\r\nMessage-ID: <{mark}@example.test>\r\n"
        f"\r\nbody {mark}\r\n"
    ).encode()


def stored(server: pbserver.RunningServer, user: str, mark: str) -> bytes:
    files = delivered(server.settings, user)
    found = [p.read_bytes() for p in files if mark.encode() in p.read_bytes()]
    assert len(found) == 1
    return found[0]


def test_plaintext_session_offers_starttls_not_auth(sub: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", sub.port("submission"), timeout=TIMEOUT) as client:
        client.ehlo("laptop.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        # AUTH before STARTTLS: RFC 3207 / RFC 4954 §4.
        assert (
            client.docmd("AUTH PLAIN", base64.b64encode(b"\0alice@example.test\0x").decode())[0]
            == 530
        )
        assert client.mail(ALICE) == (530, b"5.7.0 Must issue a STARTTLS command first")


def test_mail_without_auth_after_starttls(sub: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", sub.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=tls_context(sub))
        client.ehlo("laptop.test")
        assert "PLAIN" in client.esmtp_features["auth"]
        assert client.mail(ALICE) == (530, b"5.7.0 Authentication required")


def test_wrong_password_then_right_one(sub: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", sub.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=tls_context(sub))
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(ALICE, "wrong password")
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (535, b"5.7.8")
        client.login(ALICE, pbserver.PASSWORD)
        assert client.docmd("AUTH", "PLAIN")[0] == 503  # already authenticated


def test_auth_login_mechanism_and_cancel(sub: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", sub.port("submission"), timeout=TIMEOUT) as client:
        client.starttls(context=tls_context(sub))
        client.ehlo("laptop.test")
        assert client.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
        assert client.docmd("*")[0] == 501  # RFC 4954 §4: cancelled
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        client.user, client.password = ALICE, pbserver.PASSWORD
        assert client.auth("LOGIN", client.auth_login)[0] == 235


def test_submission_to_local_user_records_tls_and_user(sub: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    with logged_in(sub) as client:
        client.sendmail(ALICE, ["bob@example.test"], message(mark))
    data = stored(sub, "bob", mark)
    assert b"(Authenticated sender: alice@example.test)" in data
    assert b"with ESMTPSA id" in data and b"(using TLSv1" in data


def test_sender_spoofing_is_refused(sub: pbserver.RunningServer) -> None:
    with logged_in(sub) as client:
        code, text = client.mail("bob@example.test")
        assert (code, text[:5]) == (553, b"5.7.1") and b"bob@example.test" in text
        client.rset()
        client.mail(ALICE)
        client.rcpt("bob@example.test")
        code, text = client.data(message(uuid.uuid4().hex, sender="Bob <bob@example.test>"))
        assert (code, text[:5]) == (550, b"5.7.1")
        client.mail(ALICE)
        client.rcpt("bob@example.test")
        assert client.data(b"Subject: no from\r\n\r\nx\r\n")[0] == 550


@pytest.mark.parametrize("address", ["alice+news@example.test", "sales@example.test"])
def test_own_tags_and_aliases_are_allowed(sub: pbserver.RunningServer, address: str) -> None:
    mark = uuid.uuid4().hex
    with logged_in(sub) as client:
        client.sendmail(address, ["bob@example.test"], message(mark, sender=f"Me <{address}>"))
    assert f"Return-Path: <{address}>".encode() in stored(sub, "bob", mark)


def test_remote_recipient_goes_to_the_queue(sub: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    with logged_in(sub) as client:
        client.ehlo("laptop.test")
        client.mail(ALICE, ["RET=HDRS", "ENVID=env" + mark[:8]])
        client.rcpt("friend@remote.test", ["NOTIFY=FAILURE,DELAY"])
        code, text = client.data(message(mark, to="friend@remote.test"))
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[-1]
    entry = control.call(sub.settings.control_socket, "queue.show", {"id": queue_id}, timeout=5)
    assert entry["envid"] == "env" + mark[:8] and entry["ret"] == "HDRS"
    assert [r["address"] for r in entry["recipients"]] == ["friend@remote.test"]


async def test_implicit_tls_submission_with_aiosmtplib(sub: pbserver.RunningServer) -> None:
    mark = uuid.uuid4().hex
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=sub.port("submissions"), use_tls=True,
        tls_context=tls_context(sub), timeout=TIMEOUT,
    )  # fmt: skip
    async with client:
        await client.login(ALICE, pbserver.PASSWORD)
        errors, _ = await client.sendmail(ALICE, ["bob@example.test"], message(mark))
        assert errors == {}
    assert b"with ESMTPSA" in stored(sub, "bob", mark)


def test_swaks_auth_plain_on_587(sub: pbserver.RunningServer) -> None:
    if not shutil.which("swaks"):
        pytest.skip("swaks not installed")
    mark = uuid.uuid4().hex
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{sub.port('submission')}", "--tls",
         "--tls-ca-path", str(sub.settings.tls.ca), "--tls-verify",
         "--tls-sni", "mail.example.test",
         "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", pbserver.PASSWORD,
         "--from", ALICE, "--to", "bob@example.test", "--header", f"Subject: {mark}",
         "--header", f"From: {ALICE}", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"(Authenticated sender: alice@example.test)" in stored(sub, "bob", mark)

"""End to end: the server process as an admin runs it (``pillarbox serve`` under a service
manager): SIGTERM finishes what is in flight, SIGHUP applies a new config and refuses a
broken one, both without losing mail.
"""

from __future__ import annotations

import signal
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    DOMAIN,
    SENDER_DOMAIN,
    SenderKey,
    fetch_by_message_id,
    imap,
    maildir_files,
    marker,
    message,
    publish_our_zone,
    publish_sender_zone,
    smtp_from_outside,
    wait_for,
    world_settings,
)

SENDER = f"someone@{SENDER_DOMAIN}"


def restart(settings: Settings) -> pbserver.SubprocessServer:
    log = settings.data_dir / "serve.log"
    if log.exists():
        log.rename(settings.data_dir / f"serve.{time.monotonic_ns()}.log")
    return pbserver.SubprocessServer(settings)


@pytest.fixture
def settings(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[Settings]:
    settings = world_settings(tmp_path, dns_server, peer_port=1)
    pbserver.add_user(settings, ALICE)
    publish_our_zone(dns_server, settings)
    publish_sender_zone(dns_server, SenderKey.generate(), "v=DMARC1; p=none")
    yield settings


class RawSmtp:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith("220")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return "\n".join(lines)

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def sigterm_mid_data(settings: Settings) -> tuple[str, int]:
    """Send half a message, SIGTERM, send the rest: (reply to the final dot, copies stored)."""
    mark = marker()
    data = message(mark)
    server = restart(settings)
    smtp = RawSmtp(server.port("smtp"))
    try:
        assert smtp.cmd("EHLO out.sender.example").startswith("250")
        assert smtp.cmd(f"MAIL FROM:<{SENDER}>").startswith("250")
        assert smtp.cmd(f"RCPT TO:<{ALICE}>").startswith("250")
        assert smtp.cmd("DATA").startswith("354")
        half = len(data) // 2
        smtp.sock.sendall(data[:half])
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New connections are no longer accepted
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=2).recv(1)
        try:
            smtp.sock.sendall(data[half:] + b".\r\n")
            reply = smtp.reply()
        except (ConnectionError, OSError):
            reply = "(connection closed)"
        assert server.proc.wait(15) == 0
    finally:
        smtp.close()
        server.stop()
    stored = [p for p in maildir_files(settings, ALICE) if mark.encode() in p.read_bytes()]
    return reply, len(stored)


def test_sigterm_mid_data_never_stores_a_partial_or_unacknowledged_message(
    settings: Settings,
) -> None:
    reply, stored = sigterm_mid_data(settings)
    assert stored == (1 if reply.startswith("250") else 0), (reply, stored)


def test_sigterm_finishes_a_data_transfer_in_flight(settings: Settings) -> None:
    """INTERFACE.md: SIGTERM is graceful: stop accepting, finish sessions in flight. A client
    half-way through DATA gets its 250 (within limits.shutdown_grace), then 421."""
    reply, stored = sigterm_mid_data(settings)
    assert reply.startswith("250"), reply
    assert stored == 1


def edit_config(settings: Settings, table: str, key: str, value: str) -> None:
    assert settings.source is not None
    raw = tomllib.loads(settings.source.read_text())
    raw.setdefault(table, {})[key] = value
    settings.source.write_text(pbserver.dump_toml(raw))


def test_sighup_applies_a_new_delimiter_and_refuses_a_broken_config(settings: Settings) -> None:
    with restart(settings) as server:
        with smtp_from_outside(server.port("smtp")) as client:
            client.mail(SENDER)
            assert client.rcpt(f"alice-news@{DOMAIN}")[0] == 550  # "+" is the delimiter
        edit_config(settings, "delivery", "recipient_delimiter", "-")
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=reloaded" in server.log(), timeout=10, what="reload")
        mark = marker()
        with smtp_from_outside(server.port("smtp")) as client:
            assert client.sendmail(SENDER, [f"alice-news@{DOMAIN}"], message(mark)) == {}

        assert settings.source is not None
        good = settings.source.read_text()
        settings.source.write_text(good + "\nthis is = not [valid toml\n")
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in server.log(), timeout=10, what="refusal")
        settings.source.write_text(good)
        assert server.proc.poll() is None, "a broken config killed the server"
        mark2 = marker()
        with smtp_from_outside(server.port("smtp")) as client:
            assert client.sendmail(SENDER, [f"alice-news@{DOMAIN}"], message(mark2)) == {}
        with imap(settings, server.port("imaps")) as reader:
            assert fetch_by_message_id(reader, mark) and fetch_by_message_id(reader, mark2)


def test_passwords_never_reach_the_log(tmp_path: Path, dns_server: DnsTestServer) -> None:
    """Even at log_level = "debug", no password (plain or base64, right or wrong) from SMTP
    AUTH PLAIN/LOGIN, IMAP LOGIN or AUTHENTICATE PLAIN is written to the log."""
    import base64
    import imaplib
    import smtplib

    from tests.e2e_world import client_tls

    settings = world_settings(tmp_path, dns_server, peer_port=1, overrides={"log_level": "debug"})
    pbserver.add_user(settings, ALICE)
    wrong = "Wrong-Secret-Passphrase-42"
    with restart(settings) as server:
        for password in (pbserver.PASSWORD, wrong):
            for mechanism in ("PLAIN", "LOGIN"):
                with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as smtp:
                    smtp.starttls(context=client_tls(settings))
                    smtp.ehlo("laptop.local")
                    smtp.user, smtp.password = ALICE, password
                    auth = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                    try:
                        smtp.auth(mechanism, auth)
                    except smtplib.SMTPAuthenticationError:
                        assert password == wrong
            for use_authenticate in (False, True):
                client = imaplib.IMAP4_SSL(
                    "127.0.0.1", server.port("imaps"), ssl_context=client_tls(settings), timeout=10
                )
                try:
                    if use_authenticate:
                        token = f"\0{ALICE}\0{password}".encode()

                        def respond(_: bytes, t: bytes = token) -> bytes:
                            return t

                        client.authenticate("PLAIN", respond)
                    else:
                        client.login(ALICE, password)
                    client.logout()
                except imaplib.IMAP4.error:
                    assert password == wrong
        log = server.log()
    assert wrong not in log and pbserver.PASSWORD not in log
    for password in (pbserver.PASSWORD, wrong):
        for secret in (password.encode(), f"\0{ALICE}\0{password}".encode()):
            needle = base64.b64encode(secret).decode()
            assert needle not in log, "base64 of a password in the log"
    assert log.count("auth") >= 4, "no authentication events logged at all"


def test_shutdown_with_a_stuck_client_logs_no_traceback(settings: Settings) -> None:
    """A client that stops mid-DATA is cut off after limits.shutdown_grace; the log says so
    in one structured line, never with a Python traceback (what an admin sees in journald)."""
    assert settings.source is not None
    raw = tomllib.loads(settings.source.read_text())
    raw["limits"]["shutdown_grace"] = 1
    settings.source.write_text(pbserver.dump_toml(raw))
    server = restart(settings)
    smtp = RawSmtp(server.port("smtp"))
    try:
        assert smtp.cmd("EHLO out.sender.example").startswith("250")
        assert smtp.cmd(f"MAIL FROM:<{SENDER}>").startswith("250")
        assert smtp.cmd(f"RCPT TO:<{ALICE}>").startswith("250")
        assert smtp.cmd("DATA").startswith("354")
        smtp.sock.sendall(b"Subject: stuck\r\n\r\nhalf a mess")
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    finally:
        smtp.close()
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "Exception in callback" not in log, log[-2000:]

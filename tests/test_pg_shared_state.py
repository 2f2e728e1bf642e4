"""Sieve scripts and spam learning shared by two `pillarbox serve` nodes on one PostgreSQL
database: real server processes, real clients (sievelib for ManageSieve, smtplib,
imaplib), the real PostgreSQL of tests/pg.py. Each node has its own data dir (the
mailbox index is not shared yet), so each message is read back from the node that
delivered it."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import imaphelp, pbserver

ALICE = f"alice@{pbserver.DOMAIN}"
FILEINTO = (
    'require "fileinto";\r\nif header :contains "Subject" "report" {\r\n'
    '  fileinto "Reports";\r\n}\r\n'
)


def node(
    tmp_path: Path, name: str, dsn: str, overrides: dict[str, object] | None = None
) -> Settings:
    return pbserver.make_settings(
        tmp_path / name, {"store": {"backend": "postgresql", "dsn": dsn}, **(overrides or {})}
    )


def send(port: int, subject: str, sender: str = "carol@remote.test") -> None:
    message = (
        f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\nHello.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(sender, [ALICE], message.encode())


def subjects(server: pbserver.SubprocessServer, mailbox: str) -> list[str]:
    with imaphelp.login(server) as client:  # type: ignore[arg-type]
        typ, _ = client.select(f'"{mailbox}"', readonly=True)
        if typ != "OK":
            return []
        typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK" or data == [None]:
            return []
        return sorted(
            part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)
        )


def wait_for_mail(server: pbserver.SubprocessServer, mailbox: str, subject: str) -> None:
    deadline = time.monotonic() + 10
    while subject not in subjects(server, mailbox):
        assert time.monotonic() < deadline, f"{subject!r} never reached {mailbox}"
        time.sleep(0.1)


def test_a_script_uploaded_on_node_a_files_mail_delivered_by_node_b(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sievelib.managesieve import Client

    a, b = node(tmp_path, "a", pg_dsn), node(tmp_path, "b", pg_dsn)
    pbserver.add_user(a, ALICE)  # in PostgreSQL: both nodes know her
    # sievelib verifies the certificate against the default store: make it the dev CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(a.tls.ca))
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        send(node_b.port("smtp"), "report one")  # no script yet: INBOX
        wait_for_mail(node_b, "INBOX", "report one")

        client = Client("127.0.0.1", node_a.port("managesieve"), srvhostname=pbserver.HOSTNAME)
        assert client.connect(ALICE, pbserver.PASSWORD, starttls=True, authmech="PLAIN")
        try:
            assert client.putscript("filters", FILEINTO)
            assert client.setactive("filters")
        finally:
            client.logout()
        # Node B lists what node A stored (one database), then files by it.
        other = Client("127.0.0.1", node_b.port("managesieve"), srvhostname=pbserver.HOSTNAME)
        assert other.connect(ALICE, pbserver.PASSWORD, starttls=True, authmech="PLAIN")
        try:
            assert other.listscripts() == ("filters", [])
        finally:
            other.logout()
        send(node_b.port("smtp"), "report two")
        wait_for_mail(node_b, "Reports", "report two")
        assert subjects(node_b, "INBOX") == ["report one"]
        log_b = node_b.log()
    assert "sieve " in log_b and "fileinto" in log_b
    # Nothing of it went to the nodes' own SQLite files.
    assert not (b.database_path.exists() and b"filters" in b.database_path.read_bytes())

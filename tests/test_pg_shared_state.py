"""Sieve scripts and spam learning shared by two `pillarbox serve` nodes on one PostgreSQL
database: real server processes, real clients (sievelib for ManageSieve, smtplib,
imaplib), the real PostgreSQL of tests/pg.py. Each node has its own data dir but the
nodes share the mail directory (node B's is a link to node A's), as nodes on one shared
filesystem do, and the mailbox index is in the database: either node reads any message."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import imaphelp, pbserver
from tests.dnsserver import DnsTestServer

ALICE = f"alice@{pbserver.DOMAIN}"
FILEINTO = (
    'require "fileinto";\r\nif header :contains "Subject" "report" {\r\n'
    '  fileinto "Reports";\r\n}\r\n'
)


def node(
    tmp_path: Path, name: str, dsn: str, overrides: dict[str, object] | None = None
) -> Settings:
    settings = pbserver.make_settings(
        tmp_path / name, {"store": {"backend": "postgresql", "dsn": dsn}, **(overrides or {})}
    )
    if name != "a":
        share_mail_dir(settings, tmp_path / "a")
    return settings


def share_mail_dir(settings: Settings, first: Path) -> None:
    """This node's mail directory is the first node's (one shared filesystem)."""
    shared = first / "mail"
    shared.mkdir(exist_ok=True)
    shutil.rmtree(settings.mail_dir, ignore_errors=True)
    settings.mail_dir.symlink_to(shared, target_is_directory=True)


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


def move_to_junk(server: pbserver.SubprocessServer, subject: str) -> None:
    with imaphelp.login(server) as client:  # type: ignore[arg-type]
        client.select("INBOX")
        typ, data = client.uid("SEARCH", "SUBJECT", subject)
        assert typ == "OK" and data[0], (subject, data)
        typ, _ = client.uid("MOVE", data[0].decode().split()[-1], "Junk")
        assert typ == "OK"


def learnt(settings: Settings) -> str:
    """What `pillarbox user spam` says alice taught (read from the shared database)."""
    done = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "user", "spam",
         ALICE], capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.rsplit("learnt ", 1)[1].strip()


def spam_field(server: pbserver.SubprocessServer, mailbox: str, subject: str) -> str:
    with imaphelp.login(server) as client:  # type: ignore[arg-type]
        client.select(f'"{mailbox}"', readonly=True)
        typ, data = client.uid("SEARCH", "SUBJECT", subject)
        assert typ == "OK" and data[0], (mailbox, subject, data)
        uid = data[0].decode().split()[-1]
        typ, parts = client.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (X-Pillarbox-Spam)])")
        assert typ == "OK" and isinstance(parts[0], tuple)
        return " ".join(parts[0][1].decode().split())


def test_moves_to_junk_on_two_nodes_at_once_teach_one_shared_reputation(
    tmp_path: Path, pg_dsn: str, dns_server: DnsTestServer
) -> None:
    dns_server.set_zone("promo.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})
    overrides: dict[str, object] = {
        "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        "spam": {"junk_threshold": 5.0, "reject_threshold": 15.0},
    }
    a, b = node(tmp_path, "a", pg_dsn, overrides), node(tmp_path, "b", pg_dsn, overrides)
    pbserver.add_user(a, ALICE)
    per_node = 4
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        nodes = {"a": node_a, "b": node_b}
        for name, running in nodes.items():
            for n in range(per_node):
                send(running.port("smtp"), f"deal-{name}{n}", sender="deals@promo.example")
            wait_for_mail(running, "INBOX", f"deal-{name}{per_node - 1}")
        # Every move in its own IMAP session, all at once, half on each node.
        moves = [
            threading.Thread(target=move_to_junk, args=(running, f"deal-{name}{n}"))
            for name, running in nodes.items()
            for n in range(per_node)
        ]
        for thread in moves:
            thread.start()
        for thread in moves:
            thread.join()
        # One index: both nodes see every move.
        moved = sorted(f"deal-{name}{n}" for name in nodes for n in range(per_node))
        assert subjects(node_a, "Junk") == subjects(node_b, "Junk") == moved
        deadline = time.monotonic() + 10
        while (taught := learnt(a)) != f"{2 * per_node} spam, 0 ham":
            assert time.monotonic() < deadline, f"learnt {taught}"
            time.sleep(0.2)
        # Node B scores by what was taught through both nodes: the sender's reputation
        # (2 x per_node lessons) files the next one in Junk.
        time.sleep(5.5)  # the engine re-reads totals every SETTINGS_TTL (5 s)
        send(node_b.port("smtp"), "deal-next", sender="deals@promo.example")
        wait_for_mail(node_b, "Junk", "deal-next")
        field = spam_field(node_b, "Junk", "deal-next")
    assert "REPUTATION_SENDER" in field and "verdict=junk" in field, field

"""Sieve ``mailboxexists`` (RFC 5490 §3.1) on the PostgreSQL mail store, across nodes: a
folder alice creates over IMAP on node A (no mail in it, so no directory anywhere) exists
for the script that files the mail node B delivers; a missing folder does not. Real
``pillarbox serve`` nodes on one database (tests/pg.py), the script stored with
``pillarbox sieve put`` (into PostgreSQL), real clients (imapclient, smtplib)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import imaphelp, pbserver

ALICE = f"alice@{pbserver.DOMAIN}"
pytestmark = pytest.mark.on_disk  # `pillarbox serve` children: the store their config says

SCRIPT = """require ["mailbox", "imap4flags"];
if mailboxexists "Projects/2027" { addflag "$HaveProjects"; }
if mailboxexists "Missing" { addflag "$HaveMissing"; }
if mailboxexists "a/../../b" { addflag "$HaveBad"; }
"""


def node(tmp_path: Path, name: str, dsn: str) -> Settings:
    return pbserver.make_settings(tmp_path / name, {"store": {"backend": "postgresql", "dsn": dsn}})


def imap(server: pbserver.SubprocessServer) -> IMAPClient:
    return imaphelp.imapclient_login(server)


def test_mailboxexists_sees_a_folder_created_over_imap_on_another_node(
    tmp_path: Path, pg_dsn: str
) -> None:
    a, b = node(tmp_path, "a", pg_dsn), node(tmp_path, "b", pg_dsn)
    pbserver.add_user(a, ALICE)
    script = tmp_path / "main.sieve"
    script.write_text(SCRIPT)
    assert a.source is not None
    put = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(a.source), "sieve", "put",
         ALICE, str(script), "--activate"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        client = imap(node_a)
        try:
            client.create_folder("Projects/2027")
        finally:
            client.logout()
        message = f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: asking\r\n\r\nHi.\r\n"
        with smtplib.SMTP("127.0.0.1", node_b.port("smtp"), timeout=15) as smtp:
            smtp.sendmail("carol@remote.test", [ALICE], message.encode())
        client = imap(node_a)
        try:
            client.select_folder("INBOX", readonly=True)
            (flags,) = client.get_flags(client.search("ALL")).values()
        finally:
            client.logout()
    assert b"$HaveProjects" in flags
    assert b"$HaveMissing" not in flags and b"$HaveBad" not in flags

"""The mailbox index in PostgreSQL under two `pillarbox serve` nodes (issue 16): real server
processes on one database (tests/pg.py) and one mail directory (node B's is a link to
node A's, as nodes on a shared filesystem), real clients (smtplib, imapclient, imaplib).

- an IMAP IDLE on node A hears of a message delivered through node B within a second
  (NOTIFY at B's commit, A's listener wakes the session);
- deliveries through both nodes at once get strictly ascending UIDs, none twice, none
  skipped, and every message once;
- a node killed with SIGKILL in the middle of a stream of deliveries loses none that it
  answered 250, and leaves no row without its file.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import imaphelp, pbserver

ALICE = f"alice@{pbserver.DOMAIN}"
pytestmark = pytest.mark.on_disk  # `pillarbox serve` children: the store their config says


def node(tmp_path: Path, name: str, dsn: str) -> Settings:
    settings = pbserver.make_settings(
        tmp_path / name, {"store": {"backend": "postgresql", "dsn": dsn}}
    )
    if name != "a":
        shared = tmp_path / "a" / "mail"
        shared.mkdir(exist_ok=True)
        shutil.rmtree(settings.mail_dir, ignore_errors=True)
        settings.mail_dir.symlink_to(shared, target_is_directory=True)
    return settings


def send(port: int, subject: str) -> None:
    message = (
        f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@remote.test>\r\n\r\nHello {subject}.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.sendmail("carol@remote.test", [ALICE], message.encode())


def imap(server: pbserver.SubprocessServer) -> IMAPClient:
    return imaphelp.imapclient_login(server)


def inbox(server: pbserver.SubprocessServer) -> dict[int, tuple[str, bytes]]:
    """UID -> (subject, whole message) of every INBOX message, read through ``server``."""
    client = imap(server)
    try:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]", "ENVELOPE"])
        return {
            uid: (fetched[uid][b"ENVELOPE"].subject.decode(), fetched[uid][b"BODY[]"])
            for uid in sorted(fetched)
        }
    finally:
        client.logout()


def test_idle_on_node_a_hears_of_mail_delivered_through_node_b_within_a_second(
    tmp_path: Path, pg_dsn: str
) -> None:
    a, b = node(tmp_path, "a", pg_dsn), node(tmp_path, "b", pg_dsn)
    pbserver.add_user(a, ALICE)
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        idler = imap(node_a)
        try:
            idler.select_folder("INBOX")
            for number in range(3):
                idler.idle()
                send(node_b.port("smtp"), f"across-{number}")
                answered = time.monotonic()  # B said 250: the message is committed
                told: list[object] = []
                while not told and time.monotonic() - answered < 5:
                    told = [r for r in idler.idle_check(timeout=0.1) if r[1:2] == (b"EXISTS",)]
                heard = time.monotonic() - answered
                idler.idle_done()
                assert told == [(number + 1, b"EXISTS")], told
                assert heard < 1.0, f"node A heard of B's delivery {heard:.2f} s after the 250"
        finally:
            idler.logout()
        messages = inbox(node_a)
    assert [subject for subject, _ in messages.values()] == [f"across-{n}" for n in range(3)]
    assert all(b"Hello across-" in data for _, data in messages.values())


def test_deliveries_through_both_nodes_at_once_get_strictly_ascending_uids(
    tmp_path: Path, pg_dsn: str
) -> None:
    a, b = node(tmp_path, "a", pg_dsn), node(tmp_path, "b", pg_dsn)
    pbserver.add_user(a, ALICE)
    per_thread, threads_per_node = 10, 3
    failures: list[BaseException] = []
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:

        def sender(server: pbserver.SubprocessServer, label: str) -> None:
            try:
                for number in range(per_thread):
                    send(server.port("smtp"), f"{label}-{number}")
            except BaseException as exc:
                failures.append(exc)

        threads = [
            threading.Thread(target=sender, args=(server, f"{name}{t}"))
            for name, server in (("a", node_a), ("b", node_b))
            for t in range(threads_per_node)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        seen_by = {name: inbox(server) for name, server in (("a", node_a), ("b", node_b))}
        client = imap(node_b)
        try:
            status = client.folder_status("INBOX", ["MESSAGES", "UIDNEXT"])
        finally:
            client.logout()
    total = per_thread * threads_per_node * 2
    assert seen_by["a"] == seen_by["b"]  # one index, the same files
    uids = list(seen_by["a"])
    assert uids == list(range(1, total + 1))  # ascending in sequence order, no gap, no twin
    subjects = sorted(subject for subject, _ in seen_by["a"].values())
    labels = [f"{name}{t}" for name in "ab" for t in range(threads_per_node)]
    assert subjects == sorted(f"{label}-{n}" for label in labels for n in range(per_thread))
    # One sender's messages in its own order: each got its UID when it was committed.
    for label in labels:
        own = [uid for uid, (subject, _) in seen_by["a"].items() if subject.startswith(label + "-")]
        numbers = [int(seen_by["a"][uid][0].rsplit("-", 1)[1]) for uid in own]
        assert numbers == sorted(numbers)
    assert status[b"MESSAGES"] == total and status[b"UIDNEXT"] == total + 1


def test_kill_9_of_a_node_mid_delivery_loses_nothing_it_answered(
    tmp_path: Path, pg_dsn: str
) -> None:
    a, b = node(tmp_path, "a", pg_dsn), node(tmp_path, "b", pg_dsn)
    pbserver.add_user(a, ALICE)
    answered: list[str] = []
    stop = threading.Event()
    with pbserver.SubprocessServer(b) as node_b:
        node_a = pbserver.SubprocessServer(a)
        port = node_a.port("smtp")

        def sender(label: str) -> None:
            number = 0
            while not stop.is_set():
                subject = f"{label}-{number}"
                try:
                    send(port, subject)
                except (OSError, smtplib.SMTPException):
                    return  # node A is gone: this one was never answered 250
                answered.append(subject)
                number += 1

        threads = [threading.Thread(target=sender, args=(f"k{t}",)) for t in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(answered) < 20:
            assert time.monotonic() < deadline, "node A answered too few deliveries"
            time.sleep(0.01)
        node_a.stop(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join()
        messages = inbox(node_b)  # every row's file read back through the surviving node
        send(node_b.port("smtp"), "after")  # the index still takes mail, past the dead one
        after = inbox(node_b)
    subjects = [subject for subject, _ in messages.values()]
    assert set(answered) <= set(subjects), set(answered) - set(subjects)
    assert len(subjects) == len(set(subjects))  # nothing twice
    assert all(data.startswith(b"Return-Path:") for _, data in messages.values())
    uids = list(after)
    assert uids == sorted(uids) and after[uids[-1]][0] == "after"

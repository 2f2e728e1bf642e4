"""End to end: what a user's IMAP client remembers stays true across restarts.

A real ``pillarbox serve`` gets mail over SMTP and APPEND, the client sets flags and
keywords, and then the server is stopped gracefully, killed -9, and restarted after its
index file was deleted. Every time UIDVALIDITY, UIDNEXT, every UID, its flags and keywords
must be exactly what the client last saw. The Maildir on disk must say the same in Dovecot's
terms (``:2,`` letters, ``dovecot-keywords``), so other tools agree.

A mailbox of a few thousand messages (dropped into the Maildir by "another tool", as in a
migration) must stay responsive: SELECT + UID FETCH 1:* (FLAGS) in under a second, also
right after a restart.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer
from tests.e2e_world import (
    ALICE,
    SENDER_DOMAIN,
    SenderKey,
    imap,
    marker,
    message,
    publish_our_zone,
    publish_sender_zone,
    smtp_from_outside,
    world_settings,
)
from tests.imaphelp import Raw

FOLDERS = ("INBOX", "Projects/2026")
AnyServer = pbserver.RunningServer | pbserver.SubprocessServer
State = dict[str, tuple[int, int, dict[int, frozenset[bytes]]]]


def restart(settings: Settings) -> pbserver.SubprocessServer:
    log = settings.data_dir / "serve.log"
    if log.exists():
        log.rename(settings.data_dir / f"serve.{time.monotonic_ns()}.log")
    return pbserver.SubprocessServer(settings)


def state(client: IMAPClient) -> State:
    """Per folder: UIDVALIDITY, UIDNEXT and UID -> flags (without the per-session \\Recent)."""
    out: State = {}
    for folder in FOLDERS:
        info = client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        flags = client.get_flags(uids) if uids else {}
        out[folder] = (
            info[b"UIDVALIDITY"],
            info[b"UIDNEXT"],
            {uid: frozenset(f for f in fl if f != b"\\Recent") for uid, fl in flags.items()},
        )
    return out


@pytest.fixture
def settings(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[Settings]:
    settings = world_settings(tmp_path, dns_server, peer_port=1)
    pbserver.add_user(settings, ALICE)
    publish_our_zone(dns_server, settings)
    publish_sender_zone(dns_server, SenderKey.generate(), "v=DMARC1; p=none")
    yield settings


def populate(server: AnyServer, settings: Settings) -> None:
    with smtp_from_outside(server.port("smtp")) as client:
        for _ in range(4):
            assert client.sendmail(f"x@{SENDER_DOMAIN}", [ALICE], message(marker())) == {}
    with imap(settings, server.port("imaps")) as client:
        client.create_folder("Projects/2026")
        for _ in range(3):
            client.append("Projects/2026", message(marker()), flags=[b"$Work"])
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        client.add_flags(uids[0], [b"\\Seen", b"\\Flagged", b"$Forwarded", b"Custom_Keyword"])
        client.add_flags(uids[1], [b"\\Answered", b"$Label1"])
        client.add_flags(uids[2], [b"\\Deleted"])  # not expunged: must stay flagged
        client.add_flags(uids[3], [b"\\Deleted"])
        client.uid_expunge([uids[3]])
        client.select_folder("Projects/2026")
        uids = client.search(["ALL"])
        client.add_flags(uids[1], [b"\\Seen", b"\\Draft"])
        client.remove_flags(uids[2], [b"$Work"])


def test_restart_kill_and_lost_index_keep_uids_flags_and_keywords(settings: Settings) -> None:
    # In-process servers for the graceful steps (fast); a real process for the kill -9.
    with pbserver.RunningServer(settings) as running:
        populate(running, settings)
        with imap(settings, running.port("imaps")) as client:
            before = state(client)
    check_flags_on_disk_like_dovecot(settings)
    inbox = before["INBOX"][2]
    assert len(inbox) == 3 and before["INBOX"][1] == 5  # 4 delivered, 1 expunged
    assert sorted(map(sorted, inbox.values())) == sorted(
        [
            sorted([b"\\Seen", b"\\Flagged", b"$Forwarded", b"Custom_Keyword"]),
            sorted([b"\\Answered", b"$Label1"]),
            [b"\\Deleted"],
        ]
    )

    # 1. graceful restart (into a `pillarbox serve` process)
    server = restart(settings)
    try:
        with imap(settings, server.port("imaps")) as client:
            assert state(client) == before
            # 2. more changes, acknowledged, then kill -9 at once
            client.select_folder("Projects/2026")
            uid = min(client.search(["ALL"]))
            client.add_flags(uid, [b"\\Flagged", b"Late_Keyword"])
            client.append("Projects/2026", message(marker()), flags=[b"\\Seen"])
            after_changes = state(client)
    finally:
        server.stop(signal.SIGKILL)
    with (
        pbserver.RunningServer(settings) as running,
        imap(settings, running.port("imaps")) as client,
    ):
        assert state(client) == after_changes
    # 3. the index is lost (a restore from a Maildir-only backup): UIDs come back from
    # dovecot-uidlist, flags from file names, keywords from dovecot-keywords.
    maildir = settings.mail_dir / "example.test" / "alice"
    index_files = list(maildir.glob("pillarbox-index.sqlite*"))
    assert index_files, "no index file where the store documents it"
    for path in index_files:
        path.unlink()
    with (
        pbserver.RunningServer(settings) as running,
        imap(settings, running.port("imaps")) as client,
    ):
        assert state(client) == after_changes


def check_flags_on_disk_like_dovecot(settings: Settings) -> None:
    """The INBOX of ``populate`` on disk: ``:2,`` letters and ``dovecot-keywords`` indexes."""
    maildir = settings.mail_dir / "example.test" / "alice"
    letters = sorted(p.name.rsplit(":2,", 1)[1] for p in (maildir / "cur").iterdir())
    keywords: dict[str, str] = dict(
        (line.split(" ", 1)[1], line.split(" ", 1)[0])
        for line in (maildir / "dovecot-keywords").read_text().splitlines()
        if line.strip()
    )

    def letter(name: str) -> str:
        return chr(ord("a") + int(keywords[name]))

    seen_flagged = "FS" + "".join(sorted(letter(k) for k in ("$Forwarded", "Custom_Keyword")))
    answered = "R" + letter("$Label1")
    assert sorted(letters) == sorted([seen_flagged, answered, "T"])


# -- a big mailbox -----------------------------------------------------------------------------

BIG = 3000


def drop_messages(settings: Settings, count: int) -> None:
    """Write ``count`` messages into alice's new/ the way another delivery agent would."""
    new = settings.mail_dir / "example.test" / "alice" / "new"
    new.mkdir(parents=True, exist_ok=True)
    base = int(time.time()) - count
    for i in range(count):
        mark = f"big{i:05d}"
        (new / f"{base + i}.M{i}P1.import").write_bytes(
            message(mark, subject=f"bulk {i}" + (" needle" if i == BIG // 2 else ""))
        )


def timed(raw: Raw, tag: bytes, command: bytes) -> tuple[float, list[bytes]]:
    start = time.perf_counter()
    lines = raw.cmd(tag, command)
    elapsed = time.perf_counter() - start
    assert lines[-1].startswith(tag + b" OK"), lines[-1]
    return elapsed, lines


def select_and_fetch_flags(server: pbserver.RunningServer) -> dict[str, float]:
    raw = Raw(server)
    try:
        raw.login()
        select, lines = timed(raw, b"S", b"SELECT INBOX")
        assert b"* %d EXISTS\r\n" % BIG in lines
        fetch, lines = timed(raw, b"F", b"UID FETCH 1:* (FLAGS)")
        assert len(lines) == BIG + 1
        search, lines = timed(raw, b"Q", b"UID SEARCH SUBJECT needle")
        assert re.match(rb"\* SEARCH \d+\r\n$", lines[0]), lines[0]
        return {"select": select, "fetch_flags": fetch, "search_subject": search}
    finally:
        raw.file.close()
        raw.close()


def test_a_mailbox_of_thousands_stays_responsive(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    drop_messages(settings, BIG)
    with pbserver.RunningServer(settings) as server:
        start = time.perf_counter()
        first = select_and_fetch_flags(server)  # indexes the 3000 new files
        first_total = time.perf_counter() - start
        warm = select_and_fetch_flags(server)
    with pbserver.RunningServer(settings) as server:
        cold = select_and_fetch_flags(server)
    print(f"{BIG} messages: first open {first_total:.2f}s {first}; warm {warm}; restart {cold}")
    assert warm["select"] + warm["fetch_flags"] < 1.0, warm
    assert cold["select"] + cold["fetch_flags"] < 1.0, cold
    assert warm["search_subject"] < 1.0 and cold["search_subject"] < 1.0
    assert first_total < 30, "indexing 3000 small messages took more than 30 s"


def deliver(server: AnyServer, count: int) -> list[str]:
    marks = [marker() for _ in range(count)]
    with smtp_from_outside(server.port("smtp")) as client:
        for mark in marks:
            assert client.sendmail(f"x@{SENDER_DOMAIN}", [ALICE], message(mark)) == {}
    return marks


def uid_of(client: IMAPClient, mark: str) -> int:
    client.select_folder("INBOX", readonly=True)
    (uid,) = client.search(["HEADER", "Message-ID", mark])
    return int(uid)


def expunge_highest(client: IMAPClient) -> tuple[int, int]:
    """Expunge the highest UID of INBOX; (UIDVALIDITY, that UID)."""
    info = client.select_folder("INBOX")
    highest = max(client.search(["ALL"]))
    client.add_flags([highest], [b"\\Deleted"])
    client.expunge()
    return info[b"UIDVALIDITY"], highest


def test_uids_of_expunged_messages_are_never_reused(settings: Settings) -> None:
    """RFC 3501 §2.3.1.1: UIDs strictly ascend; an expunged highest UID must not come back
    for the next message under the same UIDVALIDITY, after a SIGTERM, a kill -9, or the
    loss of the index."""
    with pbserver.RunningServer(settings) as running:
        deliver(running, 3)
        with imap(settings, running.port("imaps")) as client:
            validity, highest = expunge_highest(client)
    for how in ("sigterm", "kill", "lost-index"):
        # a real process where it gets killed; in-process servers (faster) elsewhere
        server: AnyServer = restart(settings) if how == "kill" else pbserver.RunningServer(settings)
        try:
            (mark,) = deliver(server, 1)
            with imap(settings, server.port("imaps")) as client:
                new_uid = uid_of(client, mark)
                now_validity = client.select_folder("INBOX")[b"UIDVALIDITY"]
                assert now_validity != validity or new_uid > highest, (how, highest, new_uid)
                validity, highest = expunge_highest(client)
        finally:
            if isinstance(server, pbserver.SubprocessServer):
                server.stop(signal.SIGKILL)
            else:
                server.stop()
        if how == "kill":
            for path in (settings.mail_dir / "example.test" / "alice").glob("pillarbox-index*"):
                path.unlink()

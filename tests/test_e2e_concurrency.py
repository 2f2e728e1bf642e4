"""End to end: one mailbox under concurrent load from SMTP and many IMAP sessions.

Four SMTP sessions deliver while eight IMAP sessions of the same user poll, search,
flag, fetch and copy at random. No command may fail, every session's view may only grow
(no expunges happen), and at the end every session agrees on the same UIDs and flags, and
every delivered message is there exactly once.
"""

from __future__ import annotations

import random
import smtplib
import threading
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from tests import pbserver
from tests.e2e_world import ALICE, imap, marker, message

MESSAGES_PER_SENDER = 20
SENDERS = 4
READERS = 8


def test_many_sessions_and_deliveries_agree(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    pbserver.add_user(settings, ALICE)
    errors: list[str] = []
    delivered: list[str] = []
    stop = threading.Event()

    with pbserver.RunningServer(settings) as server:
        port = server.port("imaps")

        def send() -> None:
            try:
                with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=20) as client:
                    client.ehlo("x.test")
                    for _ in range(MESSAGES_PER_SENDER):
                        mark = marker()
                        client.sendmail("x@elsewhere.test", [ALICE], message(mark))
                        delivered.append(mark)
            except Exception as exc:
                errors.append(f"smtp: {exc!r}")

        def read(k: int) -> None:
            rng = random.Random(k)
            try:
                client = imap(settings, port)
                exists = client.select_folder("INBOX")[b"EXISTS"]
                while not stop.is_set():
                    seen = client.noop()[1]
                    for item in seen:
                        if item[1:2] == (b"EXISTS",):
                            assert item[0] >= exists, f"EXISTS went from {exists} to {item[0]}"
                            exists = item[0]
                    uids = client.search(["ALL"])
                    if not uids:
                        continue
                    pick = rng.sample(uids, min(4, len(uids)))
                    client.add_flags(pick, [b"\\Seen", f"kw{k}".encode()])
                    client.fetch(pick, ["FLAGS", "ENVELOPE", "BODY.PEEK[HEADER]"])
                    if k % 4 == 0:
                        client.remove_flags(pick[:1], [b"\\Seen"])
                    if k % 6 == 0:
                        client.copy(pick[:1], "Archive")
                client.logout()
            except Exception as exc:
                errors.append(f"imap {k}: {exc!r}")

        readers = [threading.Thread(target=read, args=(k,)) for k in range(READERS)]
        senders = [threading.Thread(target=send) for _ in range(SENDERS)]
        for thread in readers + senders:
            thread.start()
        for thread in senders:
            thread.join(60)
        stop.set()
        for thread in readers:
            thread.join(30)
        assert errors == []

        views = [imap(settings, port) for _ in range(2)]
        try:
            snapshots = [snapshot(client) for client in views]
        finally:
            for client in views:
                client.logout()
    assert snapshots[0] == snapshots[1]
    marks = sorted(snapshots[0]["marks"])
    assert marks == sorted(delivered)
    assert len(set(snapshots[0]["flags"])) == len(delivered)  # one UID per message


def snapshot(client: IMAPClient) -> dict[str, list[Any]]:
    client.select_folder("INBOX", readonly=True)
    data = client.fetch(client.search(["ALL"]), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    flags = sorted((uid, tuple(sorted(v[b"FLAGS"]))) for uid, v in data.items())
    marks = [
        v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split("<")[1].split("@")[0]
        for v in data.values()
    ]
    return {"flags": flags, "marks": marks}

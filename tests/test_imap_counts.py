"""STATUS and SELECT's counters match the messages, whatever changed them.

``store/counts.py`` keeps UNSEEN, DELETED and DELETED-STORAGE in counters updated by
triggers and finds the first unseen message through a partial index. Here every way a
message or its flags change (APPEND with flags, STORE add/remove/replace, COPY, MOVE,
EXPUNGE, a Maildir tool renaming a file behind the server's back, delivery into ``new/``)
is followed by STATUS and SELECT, and their answers are checked against what a client
counts itself from ``FETCH 1:* (FLAGS RFC822.SIZE)``.
"""

from __future__ import annotations

import imaplib
import os
import re

import pytest

from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.imaphelp import ALICE, login, message

_FETCH = re.compile(rb"(\d+) \(FLAGS \(([^)]*)\) RFC822\.SIZE (\d+)\)")
_STATUS = re.compile(rb"\(([^)]*)\)\s*$")


def _counted(client: imaplib.IMAP4_SSL, box: str) -> dict[str, int]:
    """The STATUS items as the client counts them from the messages themselves."""
    _, data = client.select(box, readonly=True)
    rows = []
    if int(data[0]):  # FETCH 1:* of an empty mailbox is BAD
        _, data = client.fetch("1:*", "(FLAGS RFC822.SIZE)")
        rows = [m.groups() for item in data if item and (m := _FETCH.search(item))]
    flags = [set(f.split()) for _, f, _ in rows]
    sizes = [int(s) for _, _, s in rows]
    unseen = [int(n) for (n, _, _), f in zip(rows, flags, strict=True) if b"\\Seen" not in f]
    first_unseen = unseen[0] if unseen else 0
    client.close()
    deleted = [b"\\Deleted" in f for f in flags]
    return {
        "MESSAGES": len(rows),
        "UNSEEN": sum(b"\\Seen" not in f for f in flags),
        "DELETED": sum(deleted),
        "SIZE": sum(sizes),
        "DELETED-STORAGE": sum(s for s, d in zip(sizes, deleted, strict=True) if d),
        "first unseen": first_unseen,
    }


def _status(client: imaplib.IMAP4_SSL, box: str) -> dict[str, int]:
    typ, data = client.status(box, "(MESSAGES UNSEEN DELETED SIZE DELETED-STORAGE)")
    assert typ == "OK", data
    match = _STATUS.search(data[0])
    assert match is not None, data
    words = match.group(1).split()
    found = {k.decode(): int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
    client.select(box, readonly=True)
    unseen = client.untagged_responses.get("UNSEEN", [b"0"])[0]
    found["first unseen"] = int(unseen)
    client.close()
    return found


def _check(client: imaplib.IMAP4_SSL, *boxes: str) -> None:
    for box in boxes:
        assert _status(client, box) == _counted(client, box), box


def test_counters_follow_every_kind_of_change(server: pbserver.RunningServer) -> None:
    with login(server) as client:
        client.create("Other")
        for i, flags in enumerate(["", "(\\Seen)", "(\\Seen \\Deleted)", "(\\Deleted)", ""]):
            client.append("INBOX", flags or None, None, message(f"m{i}", "x" * (100 * i)))
        _check(client, "INBOX", "Other")

        client.select("INBOX")
        client.store("1", "+FLAGS", "(\\Seen)")
        client.store("2", "-FLAGS", "(\\Seen)")
        client.store("3", "FLAGS", "(\\Flagged)")  # replace: \Seen and \Deleted go
        client.store("1:5", "+FLAGS", "($Keyword)")  # no counter moves
        client.unselect()  # not CLOSE: that would expunge
        _check(client, "INBOX")

        client.select("INBOX")
        client.copy("1:3", "Other")
        client.store("4", "+FLAGS", "(\\Seen)")
        client.uid("MOVE", "4:5", "Other")
        client.unselect()
        _check(client, "INBOX", "Other")

        client.select("Other")
        client.store("1:*", "+FLAGS", "(\\Deleted)")
        client.store("2", "-FLAGS", "(\\Deleted)")
        client.expunge()
        client.close()
        _check(client, "INBOX", "Other")


@pytest.mark.on_disk  # a Maildir tool works on the files: the Maildir + SQLite store only
def test_counters_follow_changes_behind_the_servers_back(server: pbserver.RunningServer) -> None:
    with login(server) as client:
        for i, flags in enumerate(["", "(\\Seen)", "(\\Seen \\Deleted)", "(\\Deleted)"]):
            client.append("INBOX", flags or None, None, message(f"m{i}", "x" * (100 * i)))
        _check(client, "INBOX")
        # A Maildir tool marks every message of INBOX read, behind the server's back.
        cur = user_maildir(server.settings.mail_dir, ALICE) / "cur"
        for name in os.listdir(cur):
            base, _, info = name.partition(":2,")
            if "S" not in info:
                os.rename(cur / name, cur / f"{base}:2,{''.join(sorted(info + 'S'))}")
        _check(client, "INBOX")
        # ... and mail arrives in new/.
        new = cur.parent / "new"
        (new / "1700000000.M1P1.elsewhere,S=60").write_bytes(message("delivered"))
        _check(client, "INBOX")
        assert _status(client, "INBOX")["first unseen"] > 0

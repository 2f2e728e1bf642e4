"""A kill -9 during the first SELECT of a Maildir copied in leaves a correct index.

That SELECT inserts its rows in one transaction with the insert triggers suspended
(store.bulkrows): the counters, the quota usage and the full-text list are brought up to
date once for the whole batch, and the triggers are created again, before the commit. A
process killed in the middle must leave the triggers in place and no half-counted rows,
so that the next server indexes the Maildir again and answers as an intact one would.

A child process opens the user's index and SELECTs; it kills itself (SIGKILL, nothing
flushed) at a chosen point. Then the real server serves the Maildir over IMAP.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pillarbox.store import bulkrows, uidlist
from pillarbox.store.index import INDEX_FILE, UserIndex
from tests import pbserver
from tests.imaphelp import ALICE, Raw
from tests.mailfiles import maildir

pytestmark = pytest.mark.on_disk  # the Maildir is copied in and its index read directly

COUNT = 1200  # past lazyparse.INLINE_MAX, and more than two batches of sync's 500 rows
IN_NEW = 100  # the newest, still in new/
IN_CUR = range(COUNT - IN_NEW)  # only these have flags (a file in new/ has no info yet)
SEEN = {i for i in IN_CUR if i % 3}
DELETED = {i for i in IN_CUR if i % 50 == 0}

# The child: the SELECT, killed where the parent says (a module attribute it wraps).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pillarbox.store import lazyparse
    from pillarbox.store.index import UserIndex
    from pillarbox.store.sync import MaildirSync

    point, root = sys.argv[1], Path(sys.argv[2])
    module, name, calls = {
        "mid-batch": (lazyparse, "insert_small", 2),  # rows inserted, triggers dropped
        # The batch committed; dovecot-uidlist and cur/'s mtime not written yet.
        "after-commit": (MaildirSync, "_insert_bulk", 1),
    }[point]
    real, seen = getattr(module, name), []

    def killing(*args, **kwargs):
        seen.append(1)
        result = real(*args, **kwargs)
        if len(seen) == calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    index = UserIndex(root)
    setattr(module, name, killing)
    with index.lock:
        index.select("INBOX", False)
    sys.exit("the SELECT finished: it was never killed")
    """
)


_SIZES: dict[int, int] = {}


def _copied_in(root: Path) -> int:
    """COUNT CRLF messages with Maildir flags, as another server left them; their bytes."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(COUNT):
        data = (
            f"From: Sender {i % 7} <s{i % 7}@example.org>\r\nTo: {ALICE}\r\n"
            f"Subject: copied {i}\r\nDate: 2 Mar 2021 10:00:00 +0000\r\n\r\n"
            f"body {i}\r\n" + "text\r\n" * (i % 9)
        ).encode()
        total += len(data)
        _SIZES[i] = len(data)
        base = f"{1_600_000_000 + i}.M{i}P1.copied,S={len(data)}"
        letters = ("S" if i in SEEN else "") + ("T" if i in DELETED else "")
        if i >= COUNT - IN_NEW:
            (root / "new" / base).write_bytes(data)
        else:
            (root / "cur" / f"{base}:2,{letters}").write_bytes(data)
    return total


def _triggers(root: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{root / INDEX_FILE}?mode=ro", uri=True)
    try:
        return dict(
            conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        )
    finally:
        conn.close()


def _status(raw: Raw) -> bytes:
    lines = raw.cmd(b"st", b"STATUS INBOX (MESSAGES UNSEEN SIZE DELETED)")
    assert lines[-1].startswith(b"st OK"), lines
    return lines[0]


@pytest.mark.parametrize("point", ["mid-batch", "after-commit"])
def test_kill_9_in_the_first_select_leaves_a_correct_index(tmp_path: Path, point: str) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    root = maildir(settings, ALICE)
    shutil.rmtree(root, ignore_errors=True)
    total = _copied_in(root)

    # An intact index of the same Maildir: what the triggers must look like afterwards.
    intact = tmp_path / "intact"
    shutil.copytree(root, intact)
    index = UserIndex(intact)
    with index.lock:
        index.select("INBOX", True)
    index.close()

    child = subprocess.run(
        [sys.executable, "-c", CHILD, point, str(root)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    assert child.returncode == -9, child.stderr
    # Every trigger is there, as written by the migrations (the DROPs were rolled back, or
    # the CREATEs committed with the rows).
    triggers = _triggers(root)
    assert triggers == _triggers(intact)
    assert set(bulkrows.BATCH_OF) <= set(triggers)

    with pbserver.RunningServer(settings) as server:
        raw = Raw(server)
        try:
            raw.login(ALICE)
            selected = raw.cmd(b"s", b"SELECT INBOX")
            assert b"* %d EXISTS\r\n" % COUNT in selected, selected
            unseen, deleted = COUNT - len(SEEN), len(DELETED)
            assert _status(raw) == (
                b'* STATUS "INBOX" (MESSAGES %d UNSEEN %d SIZE %d DELETED %d)\r\n'
                % (COUNT, unseen, total, deleted)
            )
            # The triggers follow changes again: a STORE and an EXPUNGE move the counters.
            assert raw.cmd(b"f", b"STORE 1:3 +FLAGS.SILENT (\\Seen)")[-1].startswith(b"f OK")
            assert raw.cmd(b"x", b"EXPUNGE")[-1].startswith(b"x OK")
            left = [i for i in range(COUNT) if i not in DELETED]
            unseen = sum(1 for i in left if i not in SEEN and i >= 3)
            size = total - sum(_SIZES[i] for i in DELETED)
            assert _status(raw) == (
                b'* STATUS "INBOX" (MESSAGES %d UNSEEN %d SIZE %d DELETED 0)\r\n'
                % (len(left), unseen, size)
            )
        finally:
            raw.close()


def test_the_first_select_of_a_copied_in_maildir_records_every_uid_in_dovecot_uidlist(
    tmp_path: Path,
) -> None:
    """The bulk insert still writes dovecot-uidlist: a UID is kept there as well as in the
    index, so a lost or rebuilt index (or Dovecot reading the same Maildir) gives every
    message the UID that clients have already seen."""
    root = tmp_path / "box"
    _copied_in(root)
    index = UserIndex(root)
    with index.lock:
        index.select("INBOX", True)
    index.close()
    listed = uidlist.read(root)
    assert listed is not None
    assert listed.next_uid == COUNT + 1
    assert sorted(listed.uids.values()) == list(range(1, COUNT + 1))
    bases = {f.name.split(":2,")[0] for sub in ("cur", "new") for f in (root / sub).iterdir()}
    assert set(listed.uids) == bases

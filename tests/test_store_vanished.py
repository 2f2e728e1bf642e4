"""Expunge tombstones in the mailbox index (store.vanished): exact answers, bounded growth,
the conservative answer below the floor, foreign deletions, and the upgrade of an index made
before tombstones existed. No network: the index over a real Maildir."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from pillarbox.store import vanished
from pillarbox.store.index import INDEX_FILE, UserIndex
from pillarbox.store.maildir import deliver

MSG = b"From: a@example.org\r\nSubject: %d\r\n\r\nbody\r\n"
ALL = [(1, 2**32 - 1)]


def mailbox_of(tmp_path: Path, count: int) -> UserIndex:
    root = tmp_path / "alice"
    index = UserIndex(root)
    for i in range(count):
        deliver(root, [MSG % i])
    assert len(index.select("INBOX", False).uids) == count
    return index


def expunge(index: UserIndex, uids: list[int]) -> int:
    """Flag ``uids`` \\Deleted and expunge them; the mailbox's HIGHESTMODSEQ afterwards."""
    for uid in uids:
        index.store("INBOX", [(uid, uid)], "add", ("\\Deleted",), None)
    assert sorted(index.expunge("INBOX", None)) == sorted(uids)
    return index.status("INBOX").highestmodseq


def uids_of(ranges: list[tuple[int, int]]) -> set[int]:
    return {uid for lo, hi in ranges for uid in range(lo, hi + 1)}


def tombstone_rows(index: UserIndex) -> int:
    return int(index.conn.execute("SELECT count(*) FROM vanished").fetchone()[0])


def test_exact_answers_by_modseq_and_uid_range(tmp_path: Path) -> None:
    index = mailbox_of(tmp_path, 10)
    start = index.status("INBOX").highestmodseq
    first = expunge(index, [2, 3])
    second = expunge(index, [7])
    assert second > first > start  # every expunge is a change of its own (RFC 7162 §3.2.7)
    assert index.vanished("INBOX", start, ALL) == [(2, 3), (7, 7)]
    assert index.vanished("INBOX", first, ALL) == [(7, 7)]
    assert index.vanished("INBOX", second, ALL) == []
    assert index.vanished("INBOX", start, [(3, 6)]) == [(3, 3)]  # only within the set asked
    assert index.vanished("INBOX", start, [(11, 20)]) == []  # nothing at or past UIDNEXT


def test_a_file_removed_behind_our_back_is_a_tombstone_too(tmp_path: Path) -> None:
    index = mailbox_of(tmp_path, 3)
    before = index.status("INBOX").highestmodseq
    cur = tmp_path / "alice" / "cur"
    victim = sorted(os.listdir(cur))[1]
    os.unlink(cur / victim)
    os.utime(cur, ns=(1, 1))  # make sure the next sync sees cur/ changed
    assert list(index.select("INBOX", False).uids) == [1, 3]
    assert index.vanished("INBOX", before, ALL) == [(2, 2)]


def test_growth_is_bounded_and_old_questions_get_a_superset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vanished, "MAX_ROWS", 4)
    index = mailbox_of(tmp_path, 30)
    start = index.status("INBOX").highestmodseq
    marks = [expunge(index, [uid]) for uid in range(2, 22, 2)]  # ten expunges, ten rows
    assert tombstone_rows(index) <= 4 + 1
    floor = vanished.floor(index.conn, index.mailbox("INBOX").id)
    assert floor > start
    # Below the floor: every UID under UIDNEXT that is gone, never one that is present.
    answer = uids_of(index.vanished("INBOX", start, ALL))
    assert answer == set(range(2, 22, 2))
    present = set(index.select("INBOX", True).uids)
    assert not answer & present
    # At or above the floor the answer is still exact.
    recent = next(m for m in marks if m >= floor)
    expected = {uid for uid, m in zip(range(2, 22, 2), marks, strict=True) if m > recent}
    assert uids_of(index.vanished("INBOX", recent, ALL)) == expected


def test_one_scattered_expunge_too_big_to_keep_raises_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vanished, "MAX_ROWS", 4)
    index = mailbox_of(tmp_path, 12)
    start = index.status("INBOX").highestmodseq
    after = expunge(index, [1, 3, 5, 7, 9, 11])  # six ranges > four rows
    assert tombstone_rows(index) == 0
    assert uids_of(index.vanished("INBOX", start, ALL)) == {1, 3, 5, 7, 9, 11}
    assert index.vanished("INBOX", after, ALL) == []


def test_deleting_a_mailbox_forgets_its_tombstones(tmp_path: Path) -> None:
    index = mailbox_of(tmp_path, 0)
    index.create("Lists")
    index.append("Lists", MSG % 1, (), None)
    index.store("Lists", ALL, "add", ("\\Deleted",), None)
    index.expunge("Lists", None)
    assert tombstone_rows(index) == 1
    index.delete("Lists")
    assert tombstone_rows(index) == 0
    assert index.conn.execute("SELECT count(*) FROM vanished_floor").fetchone()[0] == 0


def test_an_index_from_before_tombstones_is_upgraded(tmp_path: Path) -> None:
    """An index made by a release without tombstones: its mailboxes' past expunges were
    never recorded, so their floor is their HIGHESTMODSEQ at the upgrade."""
    index = mailbox_of(tmp_path, 4)
    old_modseq = index.status("INBOX").highestmodseq
    index.close()
    path = tmp_path / "alice" / INDEX_FILE
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE vanished")
        conn.execute("DROP TABLE vanished_floor")
        conn.execute("DELETE FROM schema_versions WHERE component = ?", (vanished.COMPONENT,))
    conn.close()
    # What the older release did next: expunge UID 2, with nobody writing a tombstone.
    cur = tmp_path / "alice" / "cur"
    os.unlink(cur / sorted(os.listdir(cur))[1])
    os.utime(cur, ns=(1, 1))
    index = UserIndex(tmp_path / "alice")
    box = index.mailbox("INBOX")
    assert vanished.floor(index.conn, box.id) == old_modseq
    index.select("INBOX", False)  # notices the file is gone: a tombstone from now on
    after = index.status("INBOX").highestmodseq
    assert index.vanished("INBOX", old_modseq - 1, ALL) == [(2, 2)]  # below the floor
    assert index.vanished("INBOX", old_modseq, ALL) == [(2, 2)]  # exact
    assert index.vanished("INBOX", after, ALL) == []
    version = index.conn.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (vanished.COMPONENT,)
    ).fetchone()[0]
    assert version == len(vanished.MIGRATIONS)

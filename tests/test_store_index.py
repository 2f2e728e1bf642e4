"""The mailbox index over a Maildir: Dovecot layouts, repair, rebuild, names (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pillarbox.store import names
from pillarbox.store.index import INDEX_FILE, UserIndex
from pillarbox.store.maildir import deliver
from pillarbox.store.types import MailboxError

MSG = b"From: a@example.org\r\nSubject: %s\r\n\r\nbody\r\n"


def dovecot_maildir(root: Path) -> None:
    """A Maildir as Dovecot leaves it: uidlist, keywords, :2, flags, LF line endings."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "dovecot-uidlist").write_text(
        "3 V1600000000 N20 Gabcdef\n7 :1600000001.M1P1.old,S=40\n12 W50 :1600000002.M2P1.old,S=40\n"
    )
    (root / "dovecot-keywords").write_text("0 $Forwarded\n1 Work\n")
    (root / "cur" / "1600000001.M1P1.old,S=40:2,FSa").write_bytes(
        b"From: x@example.org\nSubject: first\n\nline one\nline two\n"
    )
    (root / "cur" / "1600000002.M2P1.old,S=40:2,b").write_bytes(MSG % b"second")
    (root / "new" / "1600000003.M3P1.old").write_bytes(MSG % b"third")
    sent = root / ".Sent"
    for sub in ("cur", "new", "tmp"):
        (sent / sub).mkdir(parents=True)
    (sent / "dovecot-uidlist").write_text("3 V1600000005 N3\n2 :1600000004.M4P1.old\n")
    (sent / "cur" / "1600000004.M4P1.old:2,RS").write_bytes(MSG % b"sent")
    (root / ".Lists.Python").mkdir()
    for sub in ("cur", "new", "tmp"):
        (root / ".Lists.Python" / sub).mkdir()


def flags_by_uid(index: UserIndex, name: str) -> dict[int, str]:
    index.select(name, True)
    return {row[0]: row[1] for row in index.fetch(name, [(1, 2**32 - 1)], data=False)}


def test_dovecot_maildir_opens_with_uids_flags_and_keywords(tmp_path: Path) -> None:
    root = tmp_path / "alice"
    dovecot_maildir(root)
    index = UserIndex(root)
    info = index.select("INBOX", False)
    assert info.uidvalidity == 1600000000
    assert list(info.uids) == [7, 12, 20]  # the new/ file gets N from the uidlist
    assert flags_by_uid(index, "INBOX") == {7: "\\Seen \\Flagged $Forwarded", 12: "Work", 20: ""}
    sent = index.select("Sent", True)
    assert (sent.uidvalidity, list(sent.uids)) == (1600000005, [2])
    assert flags_by_uid(index, "Sent") == {2: "\\Seen \\Answered"}
    listed = {m.name: m.special_use for m in index.list_mailboxes()}
    assert listed["Sent"] == "\\Sent" and "Lists/Python" in listed
    # LF-only files are served with CRLF and their size counts CRLF (RFC 3501 §2.3.4)
    content = index.read_message("INBOX", 7)
    assert content == b"From: x@example.org\r\nSubject: first\r\n\r\nline one\r\nline two\r\n"
    assert index.fetch("INBOX", [(7, 7)], data=False)[0][3] == len(content)
    assert not os.listdir(root / "new")  # moved to cur/ like Dovecot does
    index.close()


def test_restart_keeps_uids_and_flags(tmp_path: Path) -> None:
    root = tmp_path / "u"
    index = UserIndex(root)
    for i in range(3):
        index.append("INBOX", MSG % str(i).encode(), (), None)
    index.store("INBOX", [(2, 2)], "add", ("\\Flagged", "Todo"), None)
    before = index.select("INBOX", True)
    index.close()
    index = UserIndex(root)
    after = index.select("INBOX", True)
    assert (after.uidvalidity, list(after.uids)) == (before.uidvalidity, [1, 2, 3])
    assert flags_by_uid(index, "INBOX")[2] == "\\Flagged Todo"
    index.close()


def test_deleted_index_is_rebuilt_with_the_same_uids(tmp_path: Path) -> None:
    root = tmp_path / "u"
    index = UserIndex(root)
    for i in range(4):
        index.append("INBOX", MSG % str(i).encode(), ("\\Seen",) if i == 1 else (), None)
    index.store("INBOX", [(3, 3)], "add", ("\\Deleted",), None)
    index.expunge("INBOX", None)
    index.create("Projects/2024")
    index.append("Projects/2024", MSG % b"p", ("Urgent",), None)
    before = index.select("INBOX", True)
    project = index.select("Projects/2024", True)
    index.close()
    for path in root.glob(INDEX_FILE + "*"):
        path.unlink()
    index = UserIndex(root)
    after = index.select("INBOX", True)
    assert after.uidvalidity == before.uidvalidity
    assert list(after.uids) == [1, 2, 4]
    assert flags_by_uid(index, "INBOX") == {1: "", 2: "\\Seen", 4: ""}
    assert index.append("INBOX", MSG % b"new", (), None)[1] == 5  # no UID reuse
    rebuilt = index.select("Projects/2024", True)
    assert (rebuilt.uidvalidity, list(rebuilt.uids)) == (project.uidvalidity, [1])
    assert flags_by_uid(index, "Projects/2024") == {1: "Urgent"}
    index.close()


def test_foreign_changes_are_picked_up(tmp_path: Path) -> None:
    root = tmp_path / "u"
    index = UserIndex(root)
    for i in range(3):
        index.append("INBOX", MSG % str(i).encode(), (), None)
    first = index.select("INBOX", False)
    cur = root / "cur"
    files = sorted(os.listdir(cur))
    os.unlink(cur / files[0])  # another tool deleted message 1
    os.rename(cur / files[1], cur / (files[1] + "S"))  # ... and marked message 2 seen
    deliver(root, [MSG % b"foreign"], subdir="cur", info=":2,F")  # ... and added one to cur/
    deliver(root, [MSG % b"smtp"])  # SMTP delivered one into new/
    changes = index.changes("INBOX", 3, 3, first.highestmodseq, True, True)
    assert changes.present is not None and list(changes.present) == [2, 3]
    assert list(changes.new_uids) == [4, 5]
    assert (2, "\\Seen", changes.highestmodseq) in changes.flag_updates or any(
        u == 2 and f == "\\Seen" for u, f, _ in changes.flag_updates
    )
    assert flags_by_uid(index, "INBOX")[4] in ("\\Flagged", "")
    index.close()


def test_special_use_folders_exist_for_a_new_user(tmp_path: Path) -> None:
    index = UserIndex(tmp_path / "new")
    listed = {m.name: (m.special_use, m.subscribed) for m in index.list_mailboxes()}
    assert listed == {
        "INBOX": (None, True),
        "Drafts": ("\\Drafts", True),
        "Sent": ("\\Sent", True),
        "Trash": ("\\Trash", True),
        "Junk": ("\\Junk", True),
        "Archive": ("\\Archive", True),
    }
    assert (tmp_path / "new" / ".Sent" / "cur").is_dir()
    index.close()


@pytest.mark.parametrize(
    "bad",
    ["", "..", "a/../b", "/abs", "a//b", "trailing/", "nul\0x", "ctl\x01", "a/./b", "x" * 300],
)
def test_bad_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(names.BadMailboxName):
        names.folder_dir(bad)
    index = UserIndex(tmp_path / "u")
    with pytest.raises(MailboxError):
        index.create(bad)
    index.close()


@pytest.mark.parametrize(
    ("name", "directory"),
    [
        ("INBOX", ""),
        ("inbox", ""),
        ("Sent", ".Sent"),
        ("Lists/Python", ".Lists.Python"),
        ("a.b", ".a\\2eb"),
        ("..x", ".\\2e\\2ex"),
        ("Entwürfe", ".Entw&APw-rfe"),
        ("back\\slash", ".back\\5cslash"),
    ],
)
def test_names_map_to_directories_and_back(name: str, directory: str) -> None:
    assert names.folder_dir(name) == directory
    if directory:
        assert names.name_of_dir(directory) == name
        assert "/" not in directory and directory not in (".", "..")


def test_rename_and_delete_keep_other_mailboxes(tmp_path: Path) -> None:
    index = UserIndex(tmp_path / "u")
    index.create("A/B")
    index.append("A/B", MSG % b"x", (), None)
    index.rename("A", "C")
    listed = {m.name for m in index.list_mailboxes()}
    assert {"C", "C/B"} <= listed and not {"A", "A/B"} & listed
    assert list(index.select("C/B", True).uids) == [1]
    with pytest.raises(MailboxError) as exc:
        index.rename("C", "Sent")
    assert exc.value.code == "ALREADYEXISTS"
    index.delete("C/B")
    assert "C/B" not in {m.name for m in index.list_mailboxes()}
    with pytest.raises(MailboxError):
        index.delete("INBOX")
    index.close()


def test_rename_inbox_moves_messages(tmp_path: Path) -> None:
    index = UserIndex(tmp_path / "u")
    index.append("INBOX", MSG % b"1", (), None)
    index.rename("INBOX", "Old")
    assert len(index.select("INBOX", True).uids) == 0
    assert len(index.select("Old", True).uids) == 1
    index.close()


def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    other = UserIndex(tmp_path / "bob")
    other.append("INBOX", MSG % b"bob's", (), None)
    other.close()
    index = UserIndex(tmp_path / "alice")
    (tmp_path / "alice" / ".Evil").symlink_to(tmp_path / "bob")
    assert "Evil" not in {m.name for m in index.list_mailboxes()}
    with pytest.raises(MailboxError):
        index.select("Evil", True)
    index.close()


def test_store_implements_the_imap_backend_protocol() -> None:
    """The IMAP session only knows ``imap.backend.UserMail``; the store must provide it all."""
    import inspect

    from pillarbox.imap.backend import FLAG_TEXT, UserMail
    from pillarbox.store import flags
    from pillarbox.store.mailbox import UserMailboxes

    wanted = {n for n, v in vars(UserMail).items() if callable(v) and not n.startswith("_")}
    for name in wanted:
        mine = getattr(UserMailboxes, name)
        theirs = getattr(UserMail, name)
        assert list(inspect.signature(mine).parameters) == list(
            inspect.signature(theirs).parameters
        ), name
    assert FLAG_TEXT == flags.FLAG_TEXT  # the flag bits are part of the contract


def test_sync_lists_cur_only_after_foreign_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "u"
    index = UserIndex(root)
    for i in range(3):
        deliver(root, [MSG % str(i).encode()])  # SMTP-style, into new/
    index.select("INBOX", False)
    index.store("INBOX", [(1, 1)], "add", ("\\Seen",), None)
    scans: list[int] = []
    original = index.syncer.scan_cur
    monkeypatch.setattr(
        index.syncer, "scan_cur", lambda box, mtime: scans.append(1) or original(box, mtime)
    )
    for _ in range(3):
        index.select("INBOX", False)  # our own moves and renames never force a rescan
    deliver(root, [MSG % b"more"])
    assert len(index.select("INBOX", False).uids) == 4
    assert scans == []
    (root / "cur" / "foreign:2,S").write_bytes(MSG % b"foreign")  # another program
    assert len(index.select("INBOX", False).uids) == 5
    assert scans == [1]
    index.close()

"""``pillarbox import maildir|mbox`` and ``pillarbox export``: files other programs wrote or
will read. Dovecot writes the Maildir that is imported and serves the Maildir that is
exported; Python's ``mailbox`` module (an independent mbox reader) reads the mbox export.
"""

from __future__ import annotations

import mailbox
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import imaphelp, pbserver
from tests.transfer_help import Dovecot, Snapshot, append, contents, message, snapshot

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot(["source", "exported"])
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    pbserver.add_user(settings, BOB)
    return settings


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert settings.source is not None
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ours(settings: Settings, user: str = ALICE) -> Snapshot:
    with pbserver.RunningServer(settings) as server, imaphelp.login(server, user) as client:
        return snapshot(client)


def test_maildir_written_by_dovecot_imports_with_folders_flags_and_keywords(
    dovecot: Dovecot, settings: Settings
) -> None:
    client = dovecot.login("source")
    for n in range(1, 13):
        flags = ["\\Seen", "\\Seen \\Answered $Work", "\\Flagged NonJunk", ""][n % 4]
        append(client, "INBOX", message(n), flags, when=1.0e9 + n * 60)
    append(client, "Sent", message(1, "Sent"), "\\Seen", when=1.1e9)
    append(client, "Projects/2024", message(1, "Projects/2024"), "$Work \\Seen", when=1.2e9)
    remote = contents(snapshot(client))
    client.logout()
    maildir = dovecot.mail / "source"
    junk = maildir / "cur" / "1700000000.M1P1.host,S=8:2,S"
    junk.write_bytes(b"\x00\x01\x02binary\x00")

    done = cli(settings, "import", "maildir", str(maildir), "--to", ALICE)
    assert done.returncode == 1  # one item left out
    assert f"{junk}: not a message (binary data (NUL bytes), not a message); skipped" in (
        done.stderr
    )
    assert "INBOX: 12 copied" in done.stdout and "Projects/2024: 1 copied" in done.stdout
    local = contents(ours(settings))
    for name, messages in remote.items():
        assert local[name] == messages, name  # bodies, flags, keywords, INTERNALDATE

    junk.unlink()  # the owner removes the bad file; the re-run finishes, copying nothing
    again = cli(settings, "import", "maildir", str(maildir), "--to", ALICE)
    assert again.returncode == 0, again.stderr
    assert "0 message(s) copied, 14 already there" in again.stdout


MBOX = (
    b"From alice@example.org Sat Jan  3 01:05:34 2004\n"
    b"From: a@example.org\nSubject: one\nStatus: RO\nX-Status: AF\nX-Keywords: $Work\n\n"
    b">From the start.\n>>From quoted once.\n>>>From quoted twice.\n"
    b"\nFrom here on: not a From_ line\n\n"
    b"From - Sun Jan  4 10:00:00 2004\n"
    b"From: b@example.org\nSubject: two (Thunderbird)\nX-Mozilla-Status: 0005\n"
    b"X-Mozilla-Status2: 00000000\nX-Mozilla-Keys: $label1\n\nread and starred\n\n"
    b"From c@example.org Mon Jan  5 10:00:00 2004\n"
    b"From: c@example.org\nSubject: three\n\nunread\n\n"
    b"From d@example.org Tue Jan  6 10:00:00 2004\n"
    b"From: d@example.org\nSubject: four\n\nthis one is cut o"
)


def test_mbox_import_reads_quoting_and_flags_and_names_a_truncated_message(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "old.mbox"
    path.write_bytes(MBOX)
    done = cli(settings, "import", "mbox", str(path), "--to", ALICE, "--mailbox", "Old")
    assert done.returncode == 1
    assert (
        f"{path} message 4 (line 29): the file ends in the middle of this message (truncated)"
        in done.stderr
    )
    assert "3 message(s) copied" in done.stdout
    _, messages = ours(settings)["Old"]
    flags = [m[1] for m in messages]
    assert flags == [
        frozenset({"\\Seen", "\\Answered", "\\Flagged", "$Work"}),
        frozenset({"\\Seen", "\\Flagged", "$label1"}),
        frozenset(),
    ]
    first = messages[0][3]
    assert b"\r\n\r\nFrom the start.\r\n>From quoted once.\r\n>>From quoted twice.\r\n" in first
    assert first.endswith(b"\r\n\r\nFrom here on: not a From_ line\r\n")
    assert b"Status" not in first and b"X-Keywords" not in first  # flags live in the store
    assert messages[0][2] == 1073091934.0  # the From_ line's date (UTC) is INTERNALDATE

    path.write_bytes(MBOX + b"ff.\n")  # the whole file arrives; a re-run adds only message 4
    again = cli(settings, "import", "mbox", str(path), "--to", ALICE, "--mailbox", "Old")
    assert again.returncode == 0, again.stderr
    assert "1 message(s) copied, 3 already there" in again.stdout
    assert len(ours(settings)["Old"][1]) == 4


def fill_ours(settings: Settings) -> None:
    with pbserver.RunningServer(settings) as server, imaphelp.login(server) as client:
        for n in range(1, 9):
            flags = ["\\Seen", "\\Seen \\Flagged $Work", "\\Answered \\Draft", "Junk"][n % 4]
            append(client, "INBOX", message(n), flags, when=1.0e9 + n)
        append(client, "Lists/Python", message(1, "Lists/Python"), "\\Seen", when=1.1e9)
        append(client, "Ünïcode", message(1, "Ünïcode"), "$Later", when=1.2e9)
        client.select("INBOX")
        client.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
        client.expunge()  # a gap in the UIDs, which the export must keep


def test_export_maildir_is_served_by_dovecot_with_the_same_uids_and_flags(
    dovecot: Dovecot, settings: Settings
) -> None:
    fill_ours(settings)
    target = dovecot.mail / "exported"
    done = cli(settings, "export", ALICE, "--format", "maildir", str(target))
    assert done.returncode == 0, done.stderr
    assert "exported 9 message(s)" in done.stdout
    dovecot.own(target)
    client = dovecot.login("exported")
    served = snapshot(client)
    client.logout()
    mine = ours(settings)
    assert served == mine  # UIDVALIDITY, UIDs, flags, keywords, INTERNALDATE and bodies
    assert [m[0] for m in mine["INBOX"][1]][:3] == [1, 3, 4]

    again = cli(settings, "export", ALICE, "--format", "maildir", str(target))
    assert again.returncode == 1 and "is not an empty directory" in again.stderr


def test_export_mbox_reads_back_in_other_readers_and_reimports_the_same(
    settings: Settings, tmp_path: Path
) -> None:
    fill_ours(settings)
    out = tmp_path / "mbox"
    done = cli(settings, "export", ALICE, "--format", "mbox", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "Lists.sbd" / "Python").is_file()  # Thunderbird's layout
    inbox = mailbox.mbox(out / "INBOX")
    assert [m["Subject"] for m in inbox] == [f"INBOX {n}" for n in (1, 3, 4, 5, 6, 7, 8)]
    assert [m["Status"] for m in inbox][:2] == ["RO", "O"]
    assert inbox[4]["X-Status"] == "AT" and inbox[0]["X-Mozilla-Status"] == "0005"
    assert inbox[0]["X-Keywords"] == "$Work" and inbox[1]["X-Mozilla-Keys"] == "Junk"
    assert "From the start of a line." in inbox[0].get_payload()  # unquoted by the reader

    for name in ("INBOX", "Lists/Python", "Ünïcode", "Sent"):
        path = out.joinpath(*[p + ".sbd" for p in name.split("/")[:-1]], name.split("/")[-1])
        done = cli(settings, "import", "mbox", str(path), "--to", BOB, "--mailbox", name)
        assert done.returncode == 0, done.stderr
    mine, bobs = contents(ours(settings)), contents(ours(settings, BOB))
    for name in ("INBOX", "Lists/Python", "Ünïcode"):
        assert bobs[name] == mine[name], name

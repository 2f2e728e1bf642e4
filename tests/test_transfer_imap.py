"""``pillarbox import imap`` against a real Dovecot on loopback (tests/transfer_help.py).

The Dovecot account is filled over IMAP (APPEND with flags, keywords and dates), including
Gmail-style folders; the import runs as the real CLI (or the same code in-process where a
test needs a proxy), and the result is read back over IMAP from a real Pillarbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.transfer import imapsource
from pillarbox.transfer.progress import TransferProgress
from pillarbox.transfer.state import ImportState
from pillarbox.transfer.target import Destination, Report, TransferError, user_root
from tests import imaphelp, pbserver
from tests.transfer_help import Dovecot, append, contents, message, snapshot

ALICE = "alice@example.test"
USERS = ["gmailish", "dropper", "refuser", "tls"]


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot(USERS)
    yield server
    server.stop()


def fill_gmailish(dovecot: Dovecot, user: str) -> None:
    """INBOX, a nested label, a non-ASCII label, Gmail's Sent Mail and All Mail."""
    client = dovecot.login(user)
    try:
        for n in range(1, 26):
            flags = ["\\Seen", "\\Seen \\Flagged $Work", "\\Answered", "", "$Label1 Junk"][n % 5]
            append(client, "INBOX", message(n), flags, when=1.0e9 + n * 3600)
        for n in range(1, 6):
            append(client, "[Gmail]/Sent Mail", message(n, "Sent"), "\\Seen", when=1.1e9 + n)
            append(client, "[Gmail]/All Mail", message(n, "All"), "\\Seen", when=1.2e9 + n)
        append(client, "Lists/Python", message(1, "Lists/Python"), "\\Seen \\Draft", 1.3e9)
        append(client, "Café", message(1, "Café"), "$Work", when=1.4e9)
    finally:
        client.logout()


def run_cli(
    settings: Settings, dovecot: Dovecot, user: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    assert settings.source is not None
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pillarbox",
            "--config",
            str(settings.source),
            "import",
            "imap",
            "--host",
            "127.0.0.1",
            "--port",
            str(dovecot.imaps_port),
            "--user",
            user,
            "--password-stdin",
            "--to",
            ALICE,
            *extra,
        ],
        input="dovecot-secret\n",
        capture_output=True,
        text=True,
        env={**os.environ, "SSL_CERT_FILE": str(dovecot.ca_file)},
        timeout=60,
    )


def ours(settings: Settings) -> dict[str, object]:
    with pbserver.RunningServer(settings) as server, imaphelp.login(server) as client:
        return snapshot(client)


def expected_local(remote: dict[str, object]) -> dict[str, object]:
    """What the import should make of the Dovecot account: Gmail's Sent Mail is our Sent,
    All Mail is left out, the empty default folders exist."""
    names = {"[Gmail]/Sent Mail": "Sent", "[Gmail]/All Mail": None}
    local: dict[str, object] = {"Drafts": [], "Junk": [], "Trash": [], "Archive": []}
    local["Lists"] = []  # a parent is a mailbox of its own here, \\Noselect at Dovecot
    for name, value in remote.items():
        if names.get(name, name) is not None:
            local[names.get(name, name) or name] = value
    return local


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    return settings


def test_import_copies_every_folder_with_flags_keywords_and_dates(
    dovecot: Dovecot, settings: Settings
) -> None:
    fill_gmailish(dovecot, "gmailish")
    started = time.monotonic()
    done = run_cli(settings, dovecot, "gmailish")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    # Not a terminal: one plain line per folder, Gmail's names mapped, All Mail skipped.
    assert "INBOX: 25 copied, 0 already there" in done.stdout
    assert "[Gmail]/Sent Mail -> Sent: 5 copied" in done.stdout
    assert "Lists/Python: 1 copied" in done.stdout and "Café: 1 copied" in done.stdout
    assert "All Mail" not in done.stdout
    assert "32 message(s) copied, 0 already there" in done.stdout

    client = dovecot.login("gmailish")
    remote = contents(snapshot(client))
    client.logout()
    local = contents(ours(settings))  # type: ignore[arg-type]
    assert local == expected_local(remote)  # bodies, flags, keywords, INTERNALDATE
    assert any("$Work" in flags for flags, _, _ in local["INBOX"])
    print(f"\nimported 32 messages from Dovecot in {elapsed:.2f} s (CLI start included)")

    # A second run copies only what is new, and never a duplicate.
    client = dovecot.login("gmailish")
    for n in range(26, 29):
        append(client, "INBOX", message(n), "\\Seen", when=1.5e9 + n)
    client.logout()
    again = run_cli(settings, dovecot, "gmailish")
    assert again.returncode == 0, again.stderr
    assert "INBOX: 3 copied, 25 already there" in again.stdout
    assert "3 message(s) copied, 0 already there" in again.stdout
    local = contents(ours(settings))  # type: ignore[arg-type]
    assert len(local["INBOX"]) == 28

    # Even with the import state lost, nothing is stored twice (content digests).
    (settings.data_dir / "import-state.sqlite").unlink()
    third = run_cli(settings, dovecot, "gmailish")
    assert third.returncode == 0, third.stderr
    assert "0 message(s) copied, 35 already there" in third.stdout
    assert contents(ours(settings)) == local  # type: ignore[arg-type]


def test_only_the_named_mailboxes_and_all_mail_when_asked(
    dovecot: Dovecot, settings: Settings
) -> None:
    fill_gmailish(dovecot, "tls")
    done = run_cli(settings, dovecot, "tls", "--mailbox", "[Gmail]/All Mail", "Nope")
    assert done.returncode == 1
    assert "folder Nope: no such folder on the server" in done.stderr
    assert "[Gmail]/All Mail" in done.stdout and "5 copied" in done.stdout
    local = contents(ours(settings))  # type: ignore[arg-type]
    assert len(local["[Gmail]/All Mail"]) == 5 and local["INBOX"] == []


def _import_in_process(settings: Settings, account: imapsource.ImapAccount) -> Report:
    problems: list[str] = []
    report = Report(emit=problems.append)
    _, root = user_root(settings, ALICE)
    state = ImportState(settings.data_dir)
    try:
        with Destination(root) as dest, TransferProgress(tty=False) as progress:
            try:
                imapsource.ImapImport(account, dest, state, progress, report).run()
            except TransferError as exc:
                report.problem("run", str(exc))
    finally:
        state.close()
    return report


def _account(dovecot: Dovecot, user: str, port: int) -> imapsource.ImapAccount:
    return imapsource.ImapAccount(
        "127.0.0.1", port, "implicit", user, "dovecot-secret", ssl_context=dovecot.context()
    )


def test_dropped_connection_is_named_then_reconnect_or_rerun_finishes(
    dovecot: Dovecot, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.transfer_help import CuttingProxy

    client = dovecot.login("dropper")
    for n in range(1, 41):
        append(client, "INBOX", message(n, extra="x" * 2000), "\\Seen", when=1e9 + n)
    client.logout()
    monkeypatch.setattr(imapsource, "BATCH_MESSAGES", 10)  # several batches per folder

    # Cut mid-folder, then refuse: the run stops, naming the folder; part is copied.
    proxy = CuttingProxy(dovecot.imaps_port, cut_after=45_000, refuse_after_cut=True)
    report = _import_in_process(settings, _account(dovecot, "dropper", proxy.port))
    proxy.close()
    assert proxy.cuts == 1
    assert any(p.startswith("folder INBOX: connection lost") for p in report.problems)
    assert 0 < report.copied < 40

    # Cut once, reconnect allowed: the same run goes on and finishes.
    proxy = CuttingProxy(dovecot.imaps_port, cut_after=30_000)
    second = _import_in_process(settings, _account(dovecot, "dropper", proxy.port))
    proxy.close()
    assert any("reconnecting" in p for p in second.problems)
    assert report.copied + second.copied == 40

    # A plain re-run has nothing left to do; the mailbox has each message once.
    third = _import_in_process(settings, _account(dovecot, "dropper", dovecot.imaps_port))
    assert (third.copied, third.problems) == (0, [])
    local = contents(ours(settings))  # type: ignore[arg-type]
    bodies = [body for _, _, body in local["INBOX"]]
    assert len(bodies) == len(set(bodies)) == 40


def test_starttls_wrong_password_and_bad_certificate_are_clear(
    dovecot: Dovecot, settings: Settings
) -> None:
    fill_gmailish(dovecot, "refuser")
    starttls = imapsource.ImapAccount(
        "127.0.0.1", dovecot.imap_port, "starttls", "refuser", "dovecot-secret",
        ssl_context=dovecot.context(),
    )  # fmt: skip
    assert _import_in_process(settings, starttls).copied == 32
    wrong = imapsource.ImapAccount(
        "127.0.0.1", dovecot.imaps_port, "implicit", "refuser", "nope",
        ssl_context=dovecot.context(),
    )  # fmt: skip
    assert any("login as refuser failed" in p for p in _import_in_process(settings, wrong).problems)
    done = subprocess.run(  # no SSL_CERT_FILE: the self-signed certificate is refused
        [
            sys.executable,
            "-m",
            "pillarbox",
            "--config",
            str(settings.source),
            "import",
            "imap",
            "--host",
            "127.0.0.1",
            "--port",
            str(dovecot.imaps_port),
            "--user",
            "refuser",
            "--password-stdin",
            "--to",
            ALICE,
        ],
        input="dovecot-secret\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "TLS failed" in done.stderr and "CERTIFICATE_VERIFY_FAILED" in done.stderr

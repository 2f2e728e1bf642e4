"""`pillarbox store migrate --to postgresql`: an SQLite install built through the real
server (users and an alias by the CLI, a Sieve script by ManageSieve, mail queued for a
remote that defers, spam learnt from an IMAP move), migrated by the real command, then
`pillarbox serve` on PostgreSQL checked over the protocols. Also: the command refuses a
non-empty target without --force, and a run killed mid-way leaves nothing behind and a
second run finishes."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from pillarbox import config
from pillarbox.config import Settings
from pillarbox.spam.reputation import Lesson, ReputationStore, open_reputation
from pillarbox.store.sieve_scripts import SieveScripts, open_sieve_scripts
from tests import imaphelp, pbserver
from tests.dnsserver import DnsTestServer
from tests.queuehelpers import wait_for
from tests.smtppeer import SmtpPeer, free_port_on

DOMAIN = pbserver.DOMAIN
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
OLD_PASSWORD = "the old password"
FILEINTO = (
    'require "fileinto";\r\nif header :contains "Subject" "report" {\r\n'
    '  fileinto "Reports";\r\n}\r\n'
)


def pillarbox(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def migrate(settings: Settings, dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return pillarbox(settings, "store", "migrate", "--to", "postgresql", "--dsn", dsn, *extra)


def switch_to_postgresql(settings: Settings, dsn: str) -> Settings:
    """What the command's output says to put in the config."""
    raw = tomllib.loads(settings.source.read_text())
    raw = pbserver.merge(raw, {"store": {"backend": "postgresql", "dsn": dsn}})
    settings.source.write_text(pbserver.dump_toml(raw))
    return config.load(settings.source)


def send(port: int, subject: str, sender: str = "carol@remote.test", html: bool = False) -> None:
    kind = "Content-Type: text/html\r\n" if html else ""
    body = f"<html><body><p>Our weekly offers: {subject}.</p></body></html>" if html else "Hi."
    message = (
        f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@remote.test>\r\n"
        f"{kind}\r\n{body}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("out.promo.example")
        client.sendmail(sender, [ALICE], message.encode())


def submit_remote(settings: Settings, port: int) -> None:
    """Alice sends to a remote recipient (queued, then deferred by the remote)."""
    message = (
        f"From: {ALICE}\r\nTo: dave@remote.test\r\nSubject: outbound\r\n"
        "Message-ID: <outbound@example.test>\r\n\r\nFor the queue.\r\n"
    )
    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.starttls(context=context)
        client.login(ALICE, OLD_PASSWORD)
        client.sendmail(ALICE, ["dave@remote.test"], message.encode())


@contextmanager
def imap_login(server: pbserver.SubprocessServer) -> Iterator[imaplib.IMAP4_SSL]:
    client = imaphelp.imaps(server)  # type: ignore[arg-type]
    try:
        client.login(ALICE, OLD_PASSWORD)
        yield client
    finally:
        client.logout()


def folder_of(server: pbserver.SubprocessServer, subject: str) -> str | None:
    with imap_login(server) as client:
        for mailbox in ("INBOX", "Junk", "Reports"):
            if client.select(mailbox, readonly=True)[0] != "OK":
                continue
            typ, data = client.uid("SEARCH", "SUBJECT", subject)
            if typ == "OK" and data[0]:
                return mailbox
    return None


def move_to_junk(server: pbserver.SubprocessServer, subject: str) -> None:
    with imap_login(server) as client:
        client.select("INBOX")
        typ, data = client.uid("SEARCH", "SUBJECT", subject)
        assert typ == "OK" and data[0]
        assert client.uid("MOVE", data[0].decode().split()[-1], "Junk")[0] == "OK"


def upload_script(server: pbserver.SubprocessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from sievelib.managesieve import Client

    monkeypatch.setenv("SSL_CERT_FILE", str(server.settings.tls.ca))
    client = Client("127.0.0.1", server.port("managesieve"), srvhostname=pbserver.HOSTNAME)
    assert client.connect(ALICE, OLD_PASSWORD, starttls=True, authmech="PLAIN")
    try:
        assert client.putscript("filters", FILEINTO) and client.setactive("filters")
    finally:
        client.logout()


def sqlite_fingerprint(settings: Settings) -> dict[str, tuple[int, int]]:
    files = [settings.database_path, settings.data_dir / "spam.db", settings.queue_dir / "queue.db"]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()}


def test_an_sqlite_install_moves_to_postgresql_and_keeps_working(
    tmp_path: Path, pg_dsn: str, dns_server: DnsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer_port = free_port_on("127.0.0.2")
    peer = SmtpPeer("127.0.0.2", peer_port, name="mx.remote.test")
    peer.rcpt_reply = lambda address: "451 4.3.0 not now"
    dns_server.set_zone(
        "remote.test", {"@": {"MX": ["10 mx.remote.test."]}, "mx": {"A": "127.0.0.2"}}
    )
    dns_server.set_zone("promo.example", {"@": {"TXT": "v=spf1 ip4:127.0.0.1 -all"}})
    settings = pbserver.make_settings(
        tmp_path / "data",
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
            "spam": {"junk_threshold": 5.0, "reject_threshold": 15.0},
            "delivery": {"remote_port": peer_port, "retry_initial": 1, "retry_max": 2,
                         "queue_scan_interval": 1, "connect_timeout": 3, "mta_sts": False},
        },
    )  # fmt: skip
    try:
        # -- the SQLite install, built through the real server and CLI -------------------
        for user in (ALICE, BOB):
            done = pillarbox(settings, "user", "add", user, "--password-stdin",
                             stdin=OLD_PASSWORD + "\n")  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert (
            pillarbox(settings, "alias", "add", f"team@{DOMAIN}", f"{ALICE},{BOB}").returncode == 0
        )
        with pbserver.SubprocessServer(settings) as server:
            upload_script(server, monkeypatch)
            send(server.port("smtp"), "report-1")
            wait_for(lambda: folder_of(server, "report-1") == "Reports", what="filed by Sieve")
            send(server.port("smtp"), "news-1", sender="deals@promo.example", html=True)
            wait_for(lambda: folder_of(server, "news-1") == "INBOX", what="news-1 in INBOX")
            move_to_junk(server, "news-1")
            wait_for(lambda: "learnt 1 spam" in pillarbox(settings, "user", "spam", ALICE).stdout,
                     what="the move learnt")  # fmt: skip
            submit_remote(settings, server.port("submission"))
            wait_for(lambda: peer.connections >= 1, what="the remote deferred")
            wait_for(lambda: peer.connections >= 2, what="a retry on SQLite")
        listed = pillarbox(settings, "queue", "list").stdout
        assert "dave@remote.test" in listed, listed
        before = sqlite_fingerprint(settings)

        # -- the migration ---------------------------------------------------------------
        done = migrate(settings, pg_dsn)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "account_users: 2 rows" in out and "sieve_scripts: 1 rows" in out, out
        assert "queue_messages: 1 rows" in out and "spam_totals: 1 rows" in out, out
        assert 'backend = "postgresql"' in out and f'dsn = "{pg_dsn}"' in out
        assert "mailbox index" in out
        assert sqlite_fingerprint(settings) == before  # the SQLite files only read
        again = migrate(settings, pg_dsn)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again

        # -- the same install on PostgreSQL ----------------------------------------------
        settings = switch_to_postgresql(settings, pg_dsn)
        retries_before = peer.connections
        with pbserver.SubprocessServer(settings) as server:
            assert "dave@remote.test" in pillarbox(settings, "queue", "list").stdout
            # The old password, from the database now.
            with imap_login(server) as client:
                assert client.select("Reports")[0] == "OK"  # the mailbox index moved
            # The script moved: it still files.
            send(server.port("smtp"), "report-2")
            wait_for(lambda: folder_of(server, "report-2") == "Reports", what="filed on pg")
            # The alias moved.
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as client:
                client.ehlo("sender.test")
                client.mail("someone@sender.test")
                assert client.rcpt(f"team@{DOMAIN}")[0] == 250
            # The reputation moved: the sender's next newsletter goes to Junk.
            assert "learnt 1 spam" in pillarbox(settings, "user", "spam", ALICE).stdout
            send(server.port("smtp"), "news-2", sender="deals@promo.example", html=True)
            wait_for(lambda: folder_of(server, "news-2") == "Junk", what="news-2 in Junk")
            # The queue moved: the deferred message is retried, and now delivered.
            wait_for(lambda: peer.connections > retries_before, what="a retry on pg")
            peer.rcpt_reply = lambda address: None
            wait_for(lambda: any(b"For the queue." in m.data for m in peer.messages),
                     timeout=30, what="the deferred message delivered")  # fmt: skip
            wait_for(lambda: "dave@remote.test" not in pillarbox(settings, "queue", "list").stdout,
                     what="the queue emptied")  # fmt: skip
    finally:
        peer.close()


def test_a_running_server_and_a_non_empty_target_are_refused(tmp_path: Path, pg_dsn: str) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    other = pbserver.make_settings(
        tmp_path / "other", {"store": {"backend": "postgresql", "dsn": pg_dsn}}
    )
    pbserver.add_user(other, BOB)  # someone else's state in the target
    with pbserver.SubprocessServer(settings):
        running = migrate(settings, pg_dsn)
    assert running.returncode == 1 and "the server is running" in running.stderr
    refused = migrate(settings, pg_dsn)
    assert refused.returncode == 1
    assert "not empty" in refused.stderr and "account_users" in refused.stderr
    forced = migrate(settings, pg_dsn, "--force")
    assert forced.returncode == 0, forced.stderr
    with psycopg.connect(pg_dsn) as conn:
        users = conn.execute("SELECT address FROM account_users").fetchall()
    assert users == [(ALICE,)]


def test_a_run_killed_mid_way_leaves_nothing_and_a_second_run_finishes(
    tmp_path: Path, pg_dsn: str
) -> None:
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    store = ReputationStore(settings.data_dir / "spam.db")
    try:  # enough tokens that the copy is still running at its first progress line
        tokens = [f"token{n}" for n in range(400_000)]
        store.learn(ALICE, Lesson("a@b.example", "b.example", (), tokens), True)
    finally:
        store.close()
    command = [sys.executable, "-m", "pillarbox", "--config", str(settings.source),
               "store", "migrate", "--to", "postgresql", "--dsn", pg_dsn]  # fmt: skip
    seen: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as running:
        assert running.stdout is not None
        for line in running.stdout:
            seen.append(line)
            if "spam_tokens: 50000 rows ..." in line:
                running.send_signal(signal.SIGKILL)
                break
        assert running.wait(30) == -signal.SIGKILL, f"not killed mid-copy: {seen}"
    # Nothing was committed: not even the schema.
    with psycopg.connect(pg_dsn) as conn:
        deadline = time.monotonic() + 10
        while others := conn.execute(
            "SELECT pid, backend_type, state, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"  # not an autovacuum worker passing by
        ).fetchall():
            assert time.monotonic() < deadline, f"the killed run's session stays: {others}"
            time.sleep(0.05)
        assert conn.execute("SELECT to_regclass('account_users')").fetchone() == (None,)
    finished = migrate(settings, pg_dsn)
    assert finished.returncode == 0, finished.stderr
    assert "spam_tokens: 400000 rows" in finished.stdout
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM spam_tokens").fetchone() == (400_000,)
        assert conn.execute("SELECT address FROM account_users").fetchall() == [(ALICE,)]


def test_a_node_on_postgresql_from_before_imports_its_own_scripts_and_learning_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    # A node that ran on PostgreSQL when Sieve scripts and spam learning were still kept
    # in its own SQLite files (pillarbox.db, spam.db): after the upgrade they are in the
    # database, once, however often the stores are opened.
    settings = pbserver.make_settings(tmp_path / "data")
    pbserver.add_user(settings, ALICE)
    local = SieveScripts(settings.database_path)
    local.put(ALICE, "main", "keep;")
    local.set_active(ALICE, "main")
    local.close()
    learning = ReputationStore(settings.data_dir / "spam.db")
    learning.learn_message(ALICE, "<m@x>", Lesson("a@b.example", "b.example", (), ["w"]), True)
    learning.set_thresholds(ALICE, 3.0, None)
    learning.close()
    settings = switch_to_postgresql(settings, pg_dsn)
    for _ in range(2):
        scripts = open_sieve_scripts(settings)
        try:
            assert scripts.list(ALICE) == [("main", True)] and scripts.has_active(ALICE)
        finally:
            scripts.close()
        reputation = open_reputation(settings)
        try:
            assert reputation.trained_users() == {ALICE: (1, 0)}
            assert reputation.thresholds() == {ALICE: (3.0, None)}
            lesson = Lesson("a@b.example", "b.example", (), ["w"])
            assert not reputation.learn_message(ALICE, "<m@x>", lesson, True)  # learnt once
        finally:
            reputation.close()

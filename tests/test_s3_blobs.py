"""Message bodies in S3-compatible storage (``[store] blobs = "s3://..."``, issue 16): real
``pillarbox serve`` nodes on one PostgreSQL (tests/pg.py) and one S3 server (moto's, over
HTTP on loopback, tests/s3server.py), real clients (smtplib, imapclient, psycopg, boto3).

- an SMTP delivery puts one object and no file; IMAP FETCH returns the object's exact bytes;
- two nodes with no shared directory serve each other's messages; a COPY shares the object,
  which goes once the last message naming it is expunged;
- a node killed between its PUT and its commit answered no 250, left no row, and left an
  orphan that `pillarbox store blobs sweep` deletes once it is older than the orphan age;
- a body read again comes from the node's cache, not from S3 (GETs counted at the server);
- `pillarbox store blobs copy --to s3` moves an install's Maildir bodies into the bucket;
- the config refuses what cannot work, naming the key.
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from imapclient import IMAPClient

from pillarbox import config
from pillarbox.config import ConfigError, Settings
from tests import imaphelp, pbserver
from tests.s3server import S3Server, store_table

ALICE = f"alice@{pbserver.DOMAIN}"
PREFIX = f"mail/{pbserver.DOMAIN}/alice/"
pytestmark = pytest.mark.on_disk  # `pillarbox serve` children: the store their config says


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.bucket()


def node(tmp_path: Path, name: str, dsn: str, s3: S3Server, bucket: str, **store: Any) -> Settings:
    """A node's own data dir (no shared mail directory: the bodies are in the bucket)."""
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    table = {"backend": "postgresql", "dsn": dsn, **store_table(s3, bucket, tmp_path / name)}
    return pbserver.make_settings(tmp_path / name, {"store": {**table, **store}})


def message(subject: str) -> bytes:
    return (
        f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@remote.test>\r\n\r\nHello {subject}.\r\n"
    ).encode()


def send(server: pbserver.SubprocessServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=15) as client:
        client.sendmail("carol@remote.test", [ALICE], message(subject))


def imap(server: pbserver.SubprocessServer) -> IMAPClient:
    return imaphelp.imapclient_login(server)


def bodies(server: pbserver.SubprocessServer, folder: str = "INBOX") -> dict[int, bytes]:
    """UID -> BODY[] of every message in ``folder``, in a session of its own."""
    client = imap(server)
    try:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
        return {uid: fetched[uid][b"BODY[]"] for uid in sorted(fetched)}
    finally:
        client.logout()


def stored_files(mail_dir: Path) -> list[Path]:
    return [path for path in mail_dir.rglob("*") if path.is_file()] if mail_dir.exists() else []


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert settings.source is not None
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_smtp_delivery_puts_one_object_and_imap_fetch_returns_its_exact_bytes(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, bucket)
    pbserver.add_user(a, ALICE)
    with pbserver.SubprocessServer(a) as node_a:
        send(node_a, "first")
        (key,) = s3.keys(bucket, PREFIX)
        (fetched,) = bodies(node_a).values()
    stored = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert fetched == stored
    assert stored.startswith(b"Return-Path: <carol@remote.test>\r\n")  # the delivery's trace
    assert stored.endswith(message("first"))  # and the message as sent, byte for byte
    assert stored_files(a.mail_dir) == []  # no Maildir file anywhere


def test_two_nodes_share_a_message_and_a_copy_shares_its_object(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, bucket)
    b = node(tmp_path, "b", pg_dsn, s3, bucket)
    pbserver.add_user(a, ALICE)
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        send(node_b, "through-b")
        through_b = bodies(node_a)  # node A has no file of it: it reads the object
        assert list(through_b) == [1] and through_b[1].endswith(message("through-b"))
        client = imap(node_a)
        try:
            client.create_folder("Kept")
            client.select_folder("INBOX")
            client.copy([1], "Kept")
            client.delete_messages([1])
            client.expunge()
        finally:
            client.logout()
        assert len(s3.keys(bucket, PREFIX)) == 1  # the copy still names the object
        assert list(bodies(node_b, "Kept").values()) == [through_b[1]]
        client = imap(node_b)
        try:
            client.select_folder("Kept")
            client.delete_messages(client.search("ALL"))
            client.expunge()
        finally:
            client.logout()
        assert s3.keys(bucket, PREFIX) == []  # the last row gone, the object with it
    assert stored_files(a.mail_dir) == stored_files(b.mail_dir) == []


def lock_inbox(dsn: str) -> psycopg.Connection[Any]:
    """A transaction holding alice's INBOX row, as a slow writer on another node would:
    a delivery then waits for it between its PUT and its commit."""
    conn = psycopg.connect(dsn)
    conn.execute(
        "SELECT 1 FROM mail_mailboxes WHERE user_address = %s AND name = 'INBOX' FOR UPDATE",
        (ALICE,),
    )
    return conn


def test_kill_9_between_put_and_commit_leaves_an_orphan_the_sweeper_deletes(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, bucket, s3_orphan_age="2s")
    pbserver.add_user(a, ALICE)
    outcome: list[object] = []
    node_a = pbserver.SubprocessServer(a)
    try:
        imap(node_a).logout()  # alice's mailboxes exist, so the test can lock her INBOX
        holder = lock_inbox(pg_dsn)
        try:

            def deliver() -> None:
                try:
                    send(node_a, "doomed")
                    outcome.append("250")
                except Exception as exc:
                    outcome.append(exc)

            sender = threading.Thread(target=deliver)
            sender.start()
            wait_for_objects(s3, bucket, 1)  # the PUT is done
            wait_for_lock_waiter(pg_dsn)  # and the commit waits
            node_a.stop(signal.SIGKILL)
            sender.join(15)
        finally:
            holder.close()
    finally:
        node_a.stop()
    assert len(outcome) == 1 and outcome[0] != "250", outcome  # never answered 250
    (orphan,) = s3.keys(bucket, PREFIX)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT path FROM mail_messages").fetchall()
    assert rows == []  # no index row pointing at anything, let alone at nothing

    status = cli(a, "store", "blobs", "status")
    assert status.returncode == 0, status.stderr
    assert "index: 0 messages in the bucket" in status.stdout
    time.sleep(2.2)  # older than s3_orphan_age (by S3's clock, LastModified)
    swept = cli(a, "store", "blobs", "sweep")
    assert swept.returncode == 0, swept.stderr
    assert "1 orphans deleted" in swept.stdout, swept.stdout
    assert orphan not in s3.keys(bucket)

    with pbserver.SubprocessServer(a) as again:  # and the node takes mail as before
        send(again, "after")
        (after,) = bodies(again).values()
    assert after.endswith(message("after"))


def test_a_delivery_that_waited_past_half_the_orphan_age_fails_instead_of_committing(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    """The rule that keeps the sweeper off a body a row is about to name: a delivery still
    waiting for its commit half an orphan age after its PUT gets a 451 (the client sends
    it again), and its object is an orphan like any other."""
    a = node(tmp_path, "a", pg_dsn, s3, bucket, s3_orphan_age="2s")
    pbserver.add_user(a, ALICE)
    answers: dict[str, object] = {}
    with pbserver.SubprocessServer(a) as node_a:
        imap(node_a).logout()
        holder = lock_inbox(pg_dsn)
        try:

            def deliver(subject: str) -> None:
                try:
                    send(node_a, subject)
                    answers[subject] = 250
                except smtplib.SMTPDataError as exc:
                    answers[subject] = exc.smtp_code

            first = threading.Thread(target=deliver, args=("first",))
            first.start()
            wait_for_objects(s3, bucket, 1)
            wait_for_lock_waiter(pg_dsn)  # its transaction waits, past the deadline check
            second = threading.Thread(target=deliver, args=("second",))
            second.start()  # put, then queued behind the first for the next group commit
            wait_for_objects(s3, bucket, 2)
            time.sleep(1.2)  # past half of s3_orphan_age since the second's PUT
        finally:
            holder.close()
        first.join(15)
        second.join(15)
        assert answers == {"first": 250, "second": 451}, answers
        (kept,) = bodies(node_a).values()
    assert kept.endswith(message("first"))
    assert len(s3.keys(bucket, PREFIX)) == 2  # the second's object: an orphan to sweep
    time.sleep(2.1)
    swept = cli(a, "store", "blobs", "sweep")
    assert swept.returncode == 0 and "1 orphans deleted" in swept.stdout, swept.stdout
    assert len(s3.keys(bucket, PREFIX)) == 1


def wait_for_lock_waiter(dsn: str) -> None:
    """Until a transaction of the node waits on a lock in this database."""
    deadline = time.monotonic() + 15
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "no delivery waits on the INBOX lock"
            time.sleep(0.02)


def wait_for_objects(s3: S3Server, bucket: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(s3.keys(bucket, PREFIX)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} objects were put"
        time.sleep(0.05)


def test_a_body_read_again_comes_from_the_cache_without_a_get(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, bucket)
    b = node(tmp_path, "b", pg_dsn, s3, bucket)
    pbserver.add_user(a, ALICE)
    with pbserver.SubprocessServer(a) as node_a, pbserver.SubprocessServer(b) as node_b:
        send(node_b, "cached")
        (key,) = s3.keys(bucket, PREFIX)
        before = s3.count("GET", bucket)
        first = bodies(node_a)  # node A never saw it: one GET
        assert s3.count("GET", bucket) == before + 1
        again = bodies(node_a)  # a new session on A: from A's cache
        on_b = bodies(node_b)  # B cached it when it put it
        assert s3.count("GET", bucket) == before + 1
    assert first == again == on_b
    cached = list((a.data_dir / "blob-cache").iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == first[1]
    assert key.startswith(PREFIX)


def test_store_blobs_copy_moves_maildir_bodies_into_the_bucket(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    # An install on PostgreSQL with its bodies in Maildir files...
    maildir = pbserver.make_settings(
        tmp_path / "a", {"store": {"backend": "postgresql", "dsn": pg_dsn}}
    )
    pbserver.add_user(maildir, ALICE)
    with pbserver.SubprocessServer(maildir) as server:
        for number in range(5):
            send(server, f"old-{number}")
        before = bodies(server)
    assert len(stored_files(maildir.mail_dir)) == 5
    # ...moves them into the bucket, and then serves the same bytes from there.
    a = node(tmp_path, "a", pg_dsn, s3, bucket)
    copied = cli(a, "store", "blobs", "copy", "--to", "s3")
    assert copied.returncode == 0, copied.stderr
    assert "5 bodies" in copied.stdout, copied.stdout
    assert stored_files(a.mail_dir) == []
    assert len(s3.keys(bucket, PREFIX)) == 5
    again = cli(a, "store", "blobs", "copy", "--to", "s3")  # nothing left to copy
    assert again.returncode == 0 and "0 bodies" in again.stdout, again.stdout
    with pbserver.SubprocessServer(a) as server:
        assert bodies(server) == before


def test_store_blobs_status_says_what_is_wrong_with_the_bucket(
    tmp_path: Path, pg_dsn: str, s3: S3Server
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, "no-such-bucket")
    status = cli(a, "store", "blobs", "status")
    assert status.returncode == 1
    assert "s3://no-such-bucket/mail" in status.stderr, status.stderr
    assert "no such bucket" in status.stderr, status.stderr


def test_serve_refuses_to_start_on_a_bucket_that_is_not_there(
    tmp_path: Path, pg_dsn: str, s3: S3Server
) -> None:
    a = node(tmp_path, "a", pg_dsn, s3, "no-such-bucket")
    with pytest.raises(RuntimeError) as refused:
        pbserver.SubprocessServer(a).stop()
    assert "s3://no-such-bucket/mail" in str(refused.value)
    assert "no such bucket" in str(refused.value)


def test_an_append_over_quota_is_refused_and_leaves_no_object(
    tmp_path: Path, pg_dsn: str, s3: S3Server, bucket: str
) -> None:
    """RFC 9208 §4.3: NO [OVERQUOTA]; the body put before the refusal is taken back."""
    a = node(tmp_path, "a", pg_dsn, s3, bucket, quota="2K")
    pbserver.add_user(a, ALICE)
    with pbserver.SubprocessServer(a) as node_a:
        client = imap(node_a)
        try:
            client.append("INBOX", message("small"))
            assert len(s3.keys(bucket, PREFIX)) == 1
            with pytest.raises(IMAPClient.Error) as refused:
                client.append("INBOX", message("big") + b"x" * 4096 + b"\r\n")
            assert "OVERQUOTA" in str(refused.value)
        finally:
            client.logout()
        assert len(s3.keys(bucket, PREFIX)) == 1  # only the one that was taken
        (kept,) = bodies(node_a).values()
    assert kept == message("small")


def settings_of(tmp_path: Path, store: dict[str, Any]) -> Settings:
    raw = {"hostname": "mail.example.test", "domains": ["example.test"], "store": store}
    return config.from_dict(raw, base_dir=tmp_path, check_files=False)


@pytest.mark.parametrize(
    ("store", "key", "words"),
    [
        ({"blobs": "s3://bucket/mail"}, "store.blobs", 'backend = "postgresql"'),
        ({"blobs": "s3:/bucket"}, "store.blobs", "s3://bucket/prefix"),
        ({"blobs": "minio"}, "store.blobs", "s3://bucket/prefix"),
        ({"s3_endpoint": "http://127.0.0.1:9000"}, "store.s3_endpoint", 'blobs is "maildir"'),
        (
            {"backend": "postgresql", "dsn": "postgresql://x@h/d", "blobs": "s3://b",
             "s3_access_key": "AKIA"},
            "store.s3_secret_key_file", "both",
        ),
        (
            {"backend": "postgresql", "dsn": "postgresql://x@h/d", "blobs": "s3://b",
             "s3_orphan_age": "1s"},
            "store.s3_orphan_age", "at least 2 seconds",
        ),
        (
            {"backend": "postgresql", "dsn": "postgresql://x@h/d", "blobs": "s3://b",
             "s3_endpoint": "127.0.0.1:9000"},
            "store.s3_endpoint", "https://",
        ),
    ],
)  # fmt: skip
def test_config_refuses_what_cannot_work(
    tmp_path: Path, store: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_of(tmp_path, store)
    assert refused.value.key == key
    assert words in str(refused.value)


def test_config_wants_the_secret_key_file_to_exist(tmp_path: Path) -> None:
    store = {
        "backend": "postgresql", "dsn": "postgresql://x@h/d", "blobs": "s3://b/p",
        "s3_access_key": "AKIA", "s3_secret_key_file": "missing-secret",
    }  # fmt: skip
    settings = settings_of(tmp_path, store)  # without the file checks: fine
    assert settings.store.s3_secret_key_file == tmp_path / "missing-secret"
    with pytest.raises(ConfigError) as refused:
        config.from_dict(
            {"hostname": "mail.example.test", "domains": ["example.test"], "store": store,
             "tls": {"acme": True, "acme_email": "a@example.test"}},
            base_dir=tmp_path,
        )  # fmt: skip
    assert refused.value.key == "store.s3_secret_key_file"


async def test_the_cache_stays_under_its_limit_and_survives_a_restart(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """The LRU itself, on the real S3 server: bodies of 100 bytes, a limit of 1,000."""
    from pillarbox.blobs.cache import CachedBlobs
    from pillarbox.blobs.s3 import S3Blobs, S3Location

    secret = tmp_path / "secret"
    secret.write_text("pillarbox-test-secret")
    where = S3Location(bucket, "c", s3.endpoint, "us-east-1", "pillarbox-test", secret)
    cache = CachedBlobs(S3Blobs(where), tmp_path / "cache", 1000)
    await cache.open()
    bodies = {f"k{n}": bytes([65 + n]) * 100 for n in range(15)}
    for key, body in bodies.items():
        await cache.put(key, body)
    assert cache.cached_bytes == 1000  # ten bodies: the five oldest were evicted
    assert len(list((tmp_path / "cache").iterdir())) == 10
    gets = s3.count("GET", bucket)
    assert await cache.get("k14") == bodies["k14"]  # cached: no GET
    assert await cache.get("k0") == bodies["k0"]  # evicted: one GET, and cached again
    assert s3.count("GET", bucket) == gets + 1
    assert await cache.get("k3", 10, 20) == bodies["k3"][10:20]
    await cache.close()

    again = CachedBlobs(S3Blobs(where), tmp_path / "cache", 1000)
    await again.open()  # the order from the files' mtimes: k0 was read last
    gets = s3.count("GET", bucket)
    assert await again.get("k0") == bodies["k0"] and await again.get("k14") == bodies["k14"]
    assert s3.count("GET", bucket) == gets
    await again.delete(["k0"])
    assert await again.get("k0") is None and not await again.exists("k0")
    big = b"x" * 200  # over an eighth of the limit: passes by, uncached
    await again.put("big", big)
    assert await again.get("big") == big and again.cached_bytes <= 1000
    await again.close()

"""The restore drill of docs/BACKUP.md, run for real: fill a server over SMTP and IMAP,
back up while traffic goes on, restore elsewhere, serve the restored data dir and compare
every mailbox over IMAP (UIDs, UIDVALIDITY, flags, bodies); then an incremental backup,
``backup verify`` catching damage, and queued mail still queued after restore.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from pillarbox import config
from pillarbox.config import Settings
from pillarbox.queue.store import QueueStore
from tests import e2e_world, imaphelp, pbserver
from tests.transfer_help import Snapshot, append, message, snapshot

ALICE, BOB = "alice@example.test", "bob@example.test"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def live_snapshots(server: pbserver.RunningServer) -> dict[str, Snapshot]:
    result = {}
    for user in (ALICE, BOB):
        with imaphelp.login(server, user) as client:
            result[user] = snapshot(client)
    return result


def snapshots(settings: Settings) -> dict[str, Snapshot]:
    with pbserver.RunningServer(settings) as server:
        return live_snapshots(server)


def submitted(n: int, tag: str) -> bytes:
    """A message alice may submit (the From must be hers, RFC 6409 §6.1)."""
    _, _, rest = message(n, tag).partition(b"\r\n")
    return f"From: {ALICE}\r\n".encode() + rest


def fill(server: pbserver.RunningServer, settings: Settings) -> None:
    port = server.port("submission")
    for n in range(1, 11):
        e2e_world.submit(settings, port, ALICE, [BOB], submitted(n, "smtp"))
    # Remote delivery cannot succeed (smarthost port 9): this one waits in the queue.
    e2e_world.submit(settings, port, ALICE, ["carol@elsewhere.example"], submitted(99, "q"))
    with imaphelp.login(server) as client:
        for n in range(1, 16):
            flags = ["\\Seen", "\\Seen \\Flagged $Work", "\\Answered", ""][n % 4]
            append(client, "INBOX", message(n), flags, when=1e9 + n)
            append(client, "Traffic", message(n, "Traffic"), "", when=1.1e9 + n)
        client.select("INBOX")
        client.uid("STORE", "3:5", "+FLAGS", "(\\Deleted)")
        client.expunge()


def traffic(server: pbserver.RunningServer, settings: Settings, stop: threading.Event) -> None:
    """Deliveries to bob and flag changes in alice's Traffic folder, until ``stop``."""
    n = 100
    with imaphelp.login(server) as client:
        client.select("Traffic")
        while not stop.is_set():
            n += 1
            e2e_world.submit(settings, server.port("submission"), ALICE, [BOB], submitted(n, "x"))
            client.uid("STORE", f"{n % 15 + 1}", "+FLAGS", "(\\Seen $Busy)")


def test_restore_drill(tmp_path: Path) -> None:
    settings = pbserver.make_settings(
        tmp_path / "live", {"delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False}}
    )
    pbserver.add_user(settings, ALICE)
    pbserver.add_user(settings, BOB)
    full, incremental = tmp_path / "b1", tmp_path / "b2"
    with pbserver.RunningServer(settings) as server:
        fill(server, settings)
        before = live_snapshots(server)
        stop = threading.Event()
        busy = threading.Thread(target=traffic, args=(server, settings, stop))
        busy.start()
        try:
            made = cli("--config", settings.source, "backup", full)
        finally:
            stop.set()
            busy.join(30)
        assert made.returncode == 0, made.stderr
        after = live_snapshots(server)
        # Quiet now: an incremental backup must give back exactly this state.
        again = cli("--config", settings.source, "backup", incremental, "--incremental-from", full)
        assert again.returncode == 0, again.stderr
    assert "linked from the previous backup" in again.stdout
    assert " 0 linked" not in again.stdout

    for directory in (full, incremental):
        checked = cli("backup", "verify", directory)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "every checksum and database is intact" in checked.stdout

    # Restore the incremental backup elsewhere: everything as it was, queue included.
    new = tmp_path / "restored"
    done = cli("restore", incremental, "--data-dir", new)
    assert done.returncode == 0, done.stderr
    restored = config.load(new / "pillarbox.toml")
    assert restored.data_dir == new.resolve()
    queue = QueueStore(restored.queue_dir, readonly=True)
    try:
        assert [m.sender for m in queue.messages()] == [ALICE]
    finally:
        queue.close()
    assert snapshots(restored) == after  # UIDVALIDITY, UIDs, flags, INTERNALDATE, bodies

    # The backup taken under traffic: what existed before is there with the same UIDs.
    new1 = tmp_path / "restored1"
    assert cli("restore", full, "--data-dir", new1).returncode == 0
    during = snapshots(config.load(new1 / "pillarbox.toml"))
    for name in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert during[ALICE][name] == before[ALICE][name], name
    uidvalidity, traffic_messages = during[ALICE]["Traffic"]
    assert uidvalidity == before[ALICE]["Traffic"][0]
    assert [(m[0], m[3]) for m in traffic_messages] == [
        (m[0], m[3]) for m in before[ALICE]["Traffic"][1]
    ]
    bob_then = {(m[0], m[3]) for m in during[BOB]["INBOX"][1]}
    assert {(m[0], m[3]) for m in before[BOB]["INBOX"][1]} <= bob_then
    assert bob_then <= {(m[0], m[3]) for m in after[BOB]["INBOX"][1]}

    # Damage is found and named; a damaged backup is not restored.
    manifest = json.loads((incremental / "manifest.json").read_text())
    victim = next(r for r in manifest["files"] if "/cur/" in r)
    (incremental / "data" / victim).unlink()
    with open(incremental / "data" / "pillarbox.toml", "a") as f:
        f.write("# edited\n")
    checked = cli("backup", "verify", incremental)
    assert checked.returncode == 1
    assert f"data/{victim}: missing" in checked.stderr
    assert "data/pillarbox.toml: " in checked.stderr
    refused = cli("restore", incremental, "--data-dir", tmp_path / "nope")
    assert refused.returncode == 1 and "nothing restored" in refused.stderr

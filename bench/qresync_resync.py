"""Benchmark: a QRESYNC client coming back to a big INBOX (RFC 7162 §3.2.5).

Builds the same Maildir as ``imap_bigbox.py`` (default 50,000 messages), starts the real
server in its own process and times, with a raw TLS client that has enabled QRESYNC:

    SELECT INBOX                                   (the baseline)
    SELECT INBOX (QRESYNC (uidvalidity modseq))    nothing changed since
    ... after 100 flag changes and 100 expunges:
    SELECT INBOX (QRESYNC (uidvalidity modseq))    100 FETCH + one VANISHED (EARLIER)
    UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)
    UID FETCH 1:* (FLAGS)                          (what a client without QRESYNC does)

    .venv/bin/python bench/qresync_resync.py [--messages 50000]
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.imap_bigbox import USER, Client, best, build_maildir
from pillarbox.store.index import UserIndex
from pillarbox.store.maildir import user_maildir
from tests import pbserver


def state(client: Client) -> tuple[int, int]:
    """(UIDVALIDITY, HIGHESTMODSEQ) from a SELECT's untagged responses."""
    client.sock.sendall(b"s0 SELECT INBOX\r\n")
    text = b""
    while not text.endswith(b"\r\n") or not text.split(b"\r\n")[-2].startswith(b"s0 "):
        text += client.file.readline()
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", text)
    modseq = re.search(rb"HIGHESTMODSEQ (\d+)", text)
    assert uidvalidity and modseq, text
    return int(uidvalidity.group(1)), int(modseq.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    count = args.messages

    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-bench-"))
    settings = pbserver.make_settings(tmp / "data")
    pbserver.add_user(settings, USER)
    root = user_maildir(settings.mail_dir, USER)
    build_maildir(root, count)
    index = UserIndex(root)
    index.select("INBOX", True)
    index.close()

    context = ssl.create_default_context(cafile=str(settings.tls.ca))
    with pbserver.SubprocessServer(settings) as server:
        c = Client(server.port("imaps"), context)
        c.cmd(f'LOGIN {USER} "{pbserver.PASSWORD}"')
        c.cmd("ENABLE QRESYNC")
        uidvalidity, modseq = state(c)
        resync = f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))"

        def show(name: str, command: str) -> None:
            seconds, lines, _ = best(c, command)
            print(f"  {name:44s} {seconds * 1000:7.1f} ms  {lines:6d} lines")

        print(f"{count} messages:")
        show("SELECT INBOX", "SELECT INBOX")
        show("SELECT (QRESYNC), nothing changed", resync)
        step = max(count // 100, 1)
        flagged = ",".join(str(u) for u in range(5, count, step))
        c.cmd(f"UID STORE {flagged} +FLAGS.SILENT (\\Flagged)")
        doomed = ",".join(str(u) for u in range(7, count, step))
        c.cmd(f"UID STORE {doomed} +FLAGS.SILENT (\\Deleted)")
        started = time.perf_counter()
        c.cmd("EXPUNGE")
        elapsed = (time.perf_counter() - started) * 1000
        print(f"  {'EXPUNGE of 100 scattered messages':44s} {elapsed:7.1f} ms")
        show("SELECT (QRESYNC), 100 changed + 100 gone", resync)
        show(
            "UID FETCH (CHANGEDSINCE m VANISHED)",
            f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)",
        )
        show("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)")
        c.close()


if __name__ == "__main__":
    main()

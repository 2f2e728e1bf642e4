"""Benchmark: the first SELECT of a Maildir copied in from elsewhere, Pillarbox and Dovecot.

Issue 17's target: ≤ 2x Dovecot's time on 50,000 messages. Each round copies the cached
source Maildir of ``bench/imap_compare.py`` (``--count`` messages, the newest 500 in new/,
no index files) into Dovecot's home for bench@bench.test and into a fresh Maildir of the
same user of a freshly started ``pillarbox serve``, logs in over STARTTLS (both servers
ask for it), and times ``SELECT INBOX`` (command written -> tagged OK read). Rounds are
interleaved, Dovecot first in odd rounds and Pillarbox first in even ones; the servers'
start and the login are not timed. The load average is printed with every figure.

Prerequisite: ``bench/setup_peers.sh`` (Dovecot; BENCH_* variables as for imap_compare).

    .venv/bin/python bench/imap_first_select.py [--count 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imap_compare import VMAIL, build_source, copy_maildir, exists_of, timed
from imapclient_async import client_tls_context, open_session


async def first_select(port: int) -> tuple[float, int]:
    client = await open_session(port, benchlib.USER, benchlib.PASSWORD, tls=client_tls_context())
    seconds, data = await timed(client.command("SELECT INBOX"))
    await client.logout()
    return seconds, exists_of(data)


def dovecot_round(peers: benchlib.Peers, source: Path) -> tuple[float, int]:
    subprocess.run(
        ["doveadm", "-c", str(peers.dovecot_dir / "dovecot.conf"), "kick", "*"],
        capture_output=True,
        check=False,
    )
    copy_maildir(source, peers.dovecot_dir / "home" / benchlib.DOMAIN / "bench" / "Maildir", VMAIL)
    return asyncio.run(first_select(peers.dovecot_port))


def pillarbox_round(pb: benchlib.Pillarbox, source: Path) -> tuple[float, int]:
    copy_maildir(source, pb.user_maildir("bench"), None)
    pb.start("imap", timeout=120)
    try:
        return asyncio.run(first_select(pb.ports["imap"]))
    finally:
        pb.stop()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    source = build_source(args.count)
    peers = benchlib.Peers()
    pb = benchlib.Pillarbox(benchlib.BENCH_ROOT / "bench-pillarbox" / "first-select-data")
    times: dict[str, list[float]] = {"dovecot": [], "pillarbox": []}
    try:
        for n in range(args.rounds):
            order = ["dovecot", "pillarbox"] if n % 2 == 0 else ["pillarbox", "dovecot"]
            for name in order:
                if name == "dovecot":
                    seconds, exists = dovecot_round(peers, source)
                else:
                    seconds, exists = pillarbox_round(pb, source)
                if exists != args.count:
                    raise SystemExit(f"{name}: SELECT said {exists} EXISTS, not {args.count}")
                times[name].append(seconds)
                print(f"round {n + 1} {name:9s} {seconds:.3f} s  (load {load()})", flush=True)
                time.sleep(1)
    finally:
        pb.close()
    ours, theirs = statistics.median(times["pillarbox"]), statistics.median(times["dovecot"])
    print(
        f"first SELECT of {args.count} messages, median of {args.rounds}: "
        f"Pillarbox {ours:.3f} s, Dovecot {theirs:.3f} s, ratio {ours / theirs:.2f}x "
        f"(load {load()})"
    )


if __name__ == "__main__":
    main()

"""LOGIN cycles per second over STARTTLS: connect, STARTTLS, LOGIN, LOGOUT, ``--clients``
at once for ``--seconds``, against a fresh ``pillarbox serve`` (and Dovecot on
127.0.0.1:12143 with ``--dovecot``, from ``bench/setup_peers.sh``). The figure issue 17
compares: a phone, a laptop and webmail log in all day, so this is what their logins cost.

    .venv/bin/python bench/imap_login.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imapclient_async import client_tls_context, open_session

DOVECOT_PORT = 12143


async def _cycles(port: int, clients: int, seconds: float) -> float:
    tls = client_tls_context()
    deadline = time.perf_counter() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            client = await open_session(port, benchlib.USER, benchlib.PASSWORD, tls=tls)
            await client.logout()
            client.close()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dovecot", action="store_true", help="also measure Dovecot")
    args = parser.parse_args()
    pb = benchlib.Pillarbox(benchlib.BENCH_ROOT / "bench-pillarbox" / "login-data")
    try:
        pb.start("imap")
        ours = asyncio.run(_cycles(pb.ports["imap"], args.clients, args.seconds))
    finally:
        pb.close()
    rows: list[list[object]] = [["pillarbox", round(ours, 1)]]
    if args.dovecot:
        theirs = asyncio.run(_cycles(DOVECOT_PORT, args.clients, args.seconds))
        rows.append(["dovecot", round(theirs, 1)])
        rows.append(["ratio", benchlib.ratio(ours, theirs)])
    print(benchlib.table(["server", "login cycles/s"], rows))


if __name__ == "__main__":
    main()

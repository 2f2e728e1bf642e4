"""LOGIN cycles per second: connect, TLS (STARTTLS on the plain port, or implicit TLS on the
IMAPS port), LOGIN, LOGOUT, ``--clients`` at once for ``--seconds``, against a fresh
``pillarbox serve`` (and Dovecot on 127.0.0.1:12143 / 12993 with ``--dovecot``, from
``bench/setup_peers.sh``), interleaved for ``--rounds``. The figure issue 17 compares: a
phone, a laptop and webmail log in all day, so this is what their logins cost.

Reported per server and mode: cycles/s (median of the rounds and the range) and the server's
CPU per cycle (user+system of its whole process tree, from /proc).

    .venv/bin/python bench/imap_login.py --dovecot --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from imapclient_async import client_tls_context, open_session

MODES = ("starttls", "implicit")


async def _cycles(
    port: int, implicit: bool, clients: int, seconds: float, user: str = benchlib.USER
) -> tuple[int, float]:
    """(cycles done, seconds taken) of ``clients`` loops of connect-TLS-LOGIN-LOGOUT."""
    tls = client_tls_context()
    deadline = time.perf_counter() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            client = await open_session(port, user, benchlib.PASSWORD, tls=tls, implicit=implicit)
            await client.logout()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done, time.perf_counter() - start


def measure(
    port: int, implicit: bool, pids: Callable[[], list[int]], args: argparse.Namespace
) -> tuple[float, float]:
    """(cycles/s, server CPU ms per cycle) of one timed run."""
    cpu0 = benchlib.tree_cpu_seconds(pids())
    done, elapsed = asyncio.run(_cycles(port, implicit, args.clients, args.seconds))
    cpu = benchlib.tree_cpu_seconds(pids()) - cpu0
    return done / elapsed, cpu * 1000 / max(done, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dovecot", action="store_true", help="also measure Dovecot")
    parser.add_argument("--nice", type=int, default=-10, help="priority of servers and client")
    args = parser.parse_args()
    benchlib.renice([os.getpid()], args.nice)
    peers = benchlib.Peers()
    pb = benchlib.Pillarbox(benchlib.BENCH_ROOT / "bench-pillarbox" / "login-data")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        pb.start("imap")
        targets: list[tuple[str, dict[str, int], Callable[[], list[int]]]] = [
            ("pillarbox", {"starttls": pb.ports["imap"], "implicit": pb.ports["imaps"]},
             lambda: [pb.pid]),
        ]  # fmt: skip
        if args.dovecot:
            master = peers.dovecot_master_pid()
            ports = {"starttls": peers.dovecot_port, "implicit": peers.dovecot_imaps_port}
            targets.insert(0, ("dovecot", ports, lambda: [master]))
        for _, _, pids in targets:
            benchlib.renice(pids(), args.nice)
        # One untimed cycle each first: Dovecot starts its auth process, Pillarbox its
        # credential cache and the user's index on the first login.
        for _, ports, _ in targets:
            asyncio.run(_cycles(ports["starttls"], False, 1, 0.2))
        for _ in range(args.rounds):
            for mode in args.modes:
                for name, ports, pids in targets:
                    results.setdefault((name, mode), []).append(
                        measure(ports[mode], mode == "implicit", pids, args)
                    )
    finally:
        pb.close()
    print(
        f"IMAP login cycles ({args.clients} clients, {args.seconds:g}s x {args.rounds} rounds, "
        f"interleaved); load average {os.getloadavg()[0]:.1f}; {benchlib.machine_summary()}"
    )
    rows: list[list[object]] = []
    for mode in args.modes:
        rates = {name: [r for r, _ in results[(name, mode)]] for name, _, _ in targets}
        cpus = {name: [c for _, c in results[(name, mode)]] for name, _, _ in targets}
        for name, _, _ in targets:
            rows.append([
                mode, name, round(statistics.median(rates[name]), 1),
                f"{min(rates[name]):.0f}-{max(rates[name]):.0f}",
                round(statistics.median(cpus[name]), 2),
            ])  # fmt: skip
        if args.dovecot:
            ours, theirs = rates["pillarbox"], rates["dovecot"]
            cpu_ratio = statistics.median(cpus["pillarbox"]) / statistics.median(cpus["dovecot"])
            rows.append([
                mode, "pillarbox/dovecot",
                benchlib.ratio(statistics.median(ours), statistics.median(theirs)),
                "", f"{cpu_ratio:.2f}x",
            ])  # fmt: skip
    headers = ["TLS", "server", "cycles/s (median)", "range", "server CPU ms/cycle"]
    print(benchlib.table(headers, rows))


if __name__ == "__main__":
    main()

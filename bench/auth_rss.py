"""Peak memory of parallel password verifications: what ``limits.max_parallel_hashes`` buys.

Runs, in a fresh child process per setting (peak RSS only ever grows, so each measurement
needs its own process), ``--parallel`` simultaneous wrong-password attempts through the
real ``Authenticator`` with real argon2id, each from its own client address (so the
per-address throttle does not serialise them: this measures the hash bound alone) and
against its own account name. Printed: the child's peak RSS before the attempts (after
importing, which already verifies once for the dummy hash) and after, and the time taken.

    .venv/bin/python bench/auth_rss.py --parallel 40 --limits 1 2 4 40
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time


def child(parallel: int, max_hashes: int) -> None:
    from pillarbox.auth.passwords import hash_password
    from pillarbox.auth.sasl import Credentials
    from pillarbox.auth.service import Authenticator
    from pillarbox.config import LimitSettings

    stored = hash_password("correct horse battery")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limits = LimitSettings(auth_failure_delay=0.0, max_parallel_hashes=max_hashes)
    auth = Authenticator(lambda user: stored, limits)

    async def attempts() -> float:
        started = time.monotonic()
        await asyncio.gather(
            *(
                auth.authenticate(Credentials(f"u{i}@example.test", "wrong"), f"10.0.{i}.1")
                for i in range(parallel)
            )
        )
        return time.monotonic() - started

    elapsed = asyncio.run(attempts())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{max_hashes}\t{before / 1024:.0f}\t{after / 1024:.0f}\t{elapsed:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parallel", type=int, default=40)
    parser.add_argument("--limits", type=int, nargs="+", default=[2])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.parallel, args.child)
        return
    print(f"{args.parallel} parallel attempts")
    print("max_parallel_hashes\tpeak MiB before\tpeak MiB after\tseconds")
    for limit in args.limits:
        command = [sys.executable, __file__, "--parallel", str(args.parallel)]
        subprocess.run([*command, "--child", str(limit)], check=True)


if __name__ == "__main__":
    main()

"""The password-guessing defence, on a virtual clock: throttles, gates, bans, hash slots.

Every scenario runs on an event loop whose clock jumps to the next timer instead of waiting
for it, so a 15-minute window takes microseconds and timings are exact. The Authenticator
gets that clock, a dict of plaintext "hashes" and a fake worker thread that counts the
verifications running at once (each takes HASH_SECONDS of virtual time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pillarbox.auth.sasl import Credentials
from pillarbox.auth.service import Authenticator, parse_client
from pillarbox.auth.slots import HashSlots
from pillarbox.auth.throttle import Throttle, ThrottlePolicy
from pillarbox.config import LimitSettings

T = TypeVar("T")
HASH_SECONDS = 0.01
ALICE = "alice@example.test"
PASSWORD = "correct horse battery"


# -- a loop on virtual time --------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of sleeping until the next timer, move the loop's clock there."""

    def __init__(self, loop: VirtualLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("deadlock: nothing ready and no timer scheduled")
        self._loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def now() -> float:
    return asyncio.get_running_loop().time()


# -- the authenticator under test --------------------------------------------------------


class FakeThreads:
    """``run_blocking`` for the Authenticator: counts verifications in flight."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.verifications = 0
        self.started: list[float] = []

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn is not verify:
            return fn(*args)  # the hash look-up: instant
        self.verifications += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(now())
        try:
            await asyncio.sleep(HASH_SECONDS)
            return fn(*args)
        finally:
            self.running -= 1


def verify(stored: str | None, password: str) -> bool:
    return stored is not None and stored == password


def limits(**overrides: Any) -> LimitSettings:
    base: dict[str, Any] = {
        "auth_failure_delay": 1.0,
        "auth_max_delay": 8.0,
        "auth_failure_window": 900,
        "ban_after_failures": 1000,
        "ban_time": 60,
        "ban_time_max": 200,
        "ban_exempt": ("127.0.0.0/8", "::1/128"),
        "max_parallel_hashes": 8,
    }
    return LimitSettings(**(base | overrides))


def make_auth(
    threads: FakeThreads, state_path: Path | None = None, **overrides: Any
) -> Authenticator:
    users = {ALICE: PASSWORD, "bob@example.test": PASSWORD}
    return Authenticator(
        users.get,
        limits(**overrides),
        state_path=state_path,
        clock=asyncio.get_running_loop().time,
        wall_clock=lambda: 1_700_000_000.0 + now(),
        verify=verify,
        run_blocking=threads,
    )


def wrong(user: str = ALICE) -> Credentials:
    return Credentials(user, "wrong password")


def right(user: str = ALICE) -> Credentials:
    return Credentials(user, PASSWORD)


def delays(base: float, cap: float, count: int) -> list[float]:
    return [min(cap, base * 2**k) for k in range(count)]


async def timed(attempt: Awaitable[T]) -> tuple[T, float]:
    started = now()
    result = await attempt
    return result, now() - started


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def auth_log() -> Iterator[list[logging.LogRecord]]:
    """The auth component's log records (not through the root: log.setup cuts it off)."""
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    logger = logging.getLogger("pillarbox.auth")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def events(records: list[logging.LogRecord], name: str) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in records if r.getMessage() == name]


# -- throttle growth and memory ----------------------------------------------------------


def test_each_failure_doubles_the_wait_up_to_the_cap() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads)
        assert auth.failure_delay("192.0.2.1") == 1.0
        served = []
        for i in range(6):  # a new account each time: only the address is throttled
            result, took = await timed(auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1"))
            assert result is None
            served.append(round(took - HASH_SECONDS, 6))
        assert served == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert auth.failure_delay("192.0.2.1") == 8.0
        assert auth.failure_delay("192.0.2.2") == 1.0

    run(scenario)


def test_failures_are_forgotten_a_window_after_the_last_one() -> None:
    async def scenario() -> None:
        auth = make_auth(FakeThreads(), auth_failure_window=900)
        await auth.authenticate(wrong("u1@example.test"), "192.0.2.1")
        await asyncio.sleep(500)
        await auth.authenticate(wrong("u2@example.test"), "192.0.2.1")
        await asyncio.sleep(700)  # 1200 s after the first failure, 700 after the last
        assert auth.failure_delay("192.0.2.1") == 4.0
        await asyncio.sleep(201)
        assert auth.failure_delay("192.0.2.1") == 1.0

    run(scenario)


def test_throttle_tables_stay_bounded_and_drop_expired_entries() -> None:
    async def scenario() -> None:
        throttle = Throttle(ThrottlePolicy(1.0, 8.0, 60.0), now, max_entries=100)
        for i in range(1000):  # a distributed attack: one failure from each of 1000 keys
            throttle.record_failure(f"198.51.{i // 256}.{i % 256}")
        assert len(throttle) == 100
        assert throttle.failures("198.51.3.231") == 1  # the most recent are kept
        await asyncio.sleep(61)
        throttle.record_failure("203.0.113.1")
        assert len(throttle) == 1
        async with throttle.gate("203.0.113.2"):  # no failures: gone once the gate is free
            assert len(throttle) == 2
        assert len(throttle) == 1

    run(scenario)


# -- gates: parallel connections gain nothing --------------------------------------------


def test_parallel_attempts_from_one_address_are_serialised() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=0.5, auth_max_delay=4.0)
        attempts = [auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1") for i in range(20)]
        results, took = await timed(asyncio.gather(*attempts))
        assert results == [None] * 20
        assert threads.peak == 1  # never two guesses from one address at once
        expected = delays(0.5, 4.0, 20)
        assert took >= sum(expected)
        # Each verification started only once the previous failure's wait had passed.
        gaps = [b - a for a, b in zip(threads.started, threads.started[1:], strict=False)]
        assert all(gap >= d for gap, d in zip(gaps, expected, strict=False))

    run(scenario)


def test_the_account_throttle_spans_addresses_and_hides_existence() -> None:
    async def attack(user: str) -> tuple[float, int]:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=0.5, auth_max_delay=4.0)
        attempts = [auth.authenticate(wrong(user), f"198.51.100.{i}") for i in range(12)]
        _, took = await timed(asyncio.gather(*attempts))
        return took, threads.peak

    async def scenario() -> None:
        existing = await attack(ALICE)
        missing = await attack("ghost@example.test")
        assert existing[1] == 1
        assert existing[0] >= sum(delays(0.5, 4.0, 12))
        assert existing == (pytest.approx(missing[0]), missing[1])  # existence not revealed

    run(scenario)


def test_a_success_does_not_reset_the_address() -> None:
    async def scenario() -> None:
        auth = make_auth(FakeThreads())
        for i in range(3):
            await auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1")
        assert await auth.authenticate(right("bob@example.test"), "192.0.2.1") == "bob@example.test"
        assert auth.failure_delay("192.0.2.1") == 8.0  # 1, 2, 4 served; 8 next
        _, took = await timed(auth.authenticate(wrong("u9@example.test"), "192.0.2.1"))
        assert took >= 8.0

    run(scenario)


def test_a_known_device_is_not_held_back_by_guesses_against_its_account() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=1.0, auth_max_delay=8.0)
        assert await auth.authenticate(right(), "192.0.2.7") == ALICE  # the owner's phone
        attack = [
            asyncio.create_task(auth.authenticate(wrong(), f"198.51.100.{i}")) for i in range(10)
        ]
        await asyncio.sleep(5)  # the attack has built a queue at alice's gate
        result, took = await timed(auth.authenticate(right(), "192.0.2.7"))
        assert result == ALICE and took <= 2 * HASH_SECONDS
        # A device that never logged in waits its turn behind the guesses.
        stranger = asyncio.create_task(timed(auth.authenticate(right(), "203.0.113.9")))
        await asyncio.gather(*attack)
        assert (await stranger)[1] > 30
        # The owner's address itself is still throttled by its own failures.
        await auth.authenticate(wrong(), "192.0.2.7")
        assert auth.failure_delay("192.0.2.7") == 2.0

    run(scenario)


# -- bans --------------------------------------------------------------------------------


def test_a_ban_comes_after_ban_after_failures_and_expires(
    auth_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(
            threads, auth_failure_delay=0.1, auth_max_delay=0.2, ban_after_failures=5, ban_time=60
        )
        for i in range(4):
            await auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1")
        assert not auth.is_banned("192.0.2.1")
        await auth.authenticate(wrong("u4@example.test"), "192.0.2.1")
        assert auth.is_banned("192.0.2.1") and not auth.is_banned("192.0.2.2")
        [ban] = events(auth_log, "ban")
        assert ban["client"] == "192.0.2.1" and ban["failures"] == 5 and ban["seconds"] == 60
        [listed] = auth.list_bans()
        assert listed["client"] == "192.0.2.1" and listed["failures"] == 5
        assert listed["bans"] == 1 and 59 < listed["remaining"] <= 60
        # An open connection from the banned address: no hash, no delay, no login.
        before = threads.verifications
        result, took = await timed(auth.authenticate(right(), "192.0.2.1"))
        assert result is None and took == 0 and threads.verifications == before
        await asyncio.sleep(60)
        assert not auth.is_banned("192.0.2.1")
        assert auth.list_bans() == []
        assert [e["client"] for e in events(auth_log, "ban expired")] == ["192.0.2.1"]
        assert await auth.authenticate(right(), "192.0.2.1") == ALICE

    run(scenario)


def test_attempts_queued_when_the_ban_falls_get_no_hash() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=0.1, ban_after_failures=3)
        attempts = [auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1") for i in range(8)]
        assert await asyncio.gather(*attempts) == [None] * 8
        assert threads.verifications == 3

    run(scenario)


def test_repeat_bans_double_up_to_ban_time_max_and_are_forgotten_later() -> None:
    async def earn_ban(auth: Authenticator) -> int:
        for i in range(3):
            await auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1")
        [ban] = auth.list_bans()
        return round(ban["remaining"])  # less the last reply's delay

    async def scenario() -> None:
        auth = make_auth(
            FakeThreads(),
            auth_failure_delay=0.1,
            auth_max_delay=0.1,
            ban_after_failures=3,
            ban_time=60,
            ban_time_max=200,
        )
        lengths = []
        for _ in range(4):
            lengths.append(await earn_ban(auth))
            await asyncio.sleep(lengths[-1])
        assert lengths == [60, 120, 200, 200]
        await asyncio.sleep(201)  # quiet for longer than ban_time_max: a first ban again
        assert await earn_ban(auth) == 60

    run(scenario)


def test_ipv6_clients_are_counted_and_banned_by_their_64() -> None:
    async def scenario() -> None:
        auth = make_auth(FakeThreads(), auth_failure_delay=0.1, ban_after_failures=4)
        for i in range(4):  # four hosts of one /64, one guess each
            await auth.authenticate(wrong(f"u{i}@example.test"), f"2001:db8:1:2::{i + 1}")
        assert auth.is_banned("2001:db8:1:2:ffff::9")
        assert auth.is_banned("::ffff:192.0.2.1") is False
        assert not auth.is_banned("2001:db8:1:3::1")
        assert [b["client"] for b in auth.list_bans()] == ["2001:db8:1:2::/64"]
        assert auth.unban("2001:db8:1:3::1") is None
        lifted = auth.unban("2001:db8:1:2::/64")
        assert lifted is not None and lifted["client"] == "2001:db8:1:2::/64"
        assert not auth.is_banned("2001:db8:1:2::1")
        assert auth.failure_delay("2001:db8:1:2::1") == 0.1  # and its failures are forgotten

    run(scenario)


def test_exempt_addresses_are_neither_banned_nor_throttled_but_accounts_are() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=0.5, ban_after_failures=3)
        different = [auth.authenticate(wrong(f"u{i}@example.test"), "127.0.0.1") for i in range(8)]
        _, took = await timed(asyncio.gather(*different))
        assert threads.peak == 8 and took < 1  # no address gate: all at once, one delay each
        assert not auth.is_banned("127.0.0.1") and auth.list_bans() == []
        assert auth.failure_delay("127.0.0.1") == 0.5
        threads.peak = 0
        same = [auth.authenticate(wrong(), "::1") for _ in range(6)]
        _, took = await timed(asyncio.gather(*same))
        assert threads.peak == 1 and took >= sum(delays(0.5, 8.0, 6))
        assert await auth.authenticate(right(), "127.0.0.1") == ALICE

    run(scenario)


def test_an_exempt_host_inside_a_banned_64_is_still_let_in() -> None:
    async def scenario() -> None:
        auth = make_auth(
            FakeThreads(),
            auth_failure_delay=0.1,
            ban_after_failures=2,
            ban_exempt=("2001:db8:1:2::5/128",),
        )
        for i in range(2):
            await auth.authenticate(wrong(f"u{i}@example.test"), "2001:db8:1:2::66")
        assert auth.is_banned("2001:db8:1:2::66")
        assert not auth.is_banned("2001:db8:1:2::5")
        assert await auth.authenticate(right(), "2001:db8:1:2::5") == ALICE

    run(scenario)


def test_bans_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"

    async def first() -> None:
        auth = make_auth(FakeThreads(), path, auth_failure_delay=0.1, ban_after_failures=2)
        for i in range(2):
            await auth.authenticate(wrong(f"u{i}@example.test"), "192.0.2.1")
        await auth.saved()

    async def second() -> None:
        auth = make_auth(FakeThreads(), path, auth_failure_delay=0.1, ban_after_failures=2)
        assert auth.is_banned("192.0.2.1")
        [ban] = auth.list_bans()
        assert ban["failures"] == 2 and ban["bans"] == 1
        assert auth.unban("192.0.2.1") is not None
        await auth.saved()

    run(first)
    assert os.stat(path).st_mode & 0o777 == 0o600
    saved = json.loads(path.read_text())
    assert [b["client"] for b in saved["bans"]] == ["192.0.2.1"]
    run(second)
    assert json.loads(path.read_text())["bans"] == []


def test_an_unreadable_ban_file_means_no_bans(
    tmp_path: Path, auth_log: list[logging.LogRecord]
) -> None:
    path = tmp_path / "bans.json"
    path.write_text("{not json")

    async def scenario() -> None:
        auth = make_auth(FakeThreads(), path)
        assert auth.list_bans() == []
        assert await auth.authenticate(right(), "192.0.2.1") == ALICE

    run(scenario)
    assert events(auth_log, "ban file ignored")


def test_reconfigure_applies_new_limits_and_lifts_newly_exempt_bans() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, auth_failure_delay=0.1, ban_after_failures=2, ban_exempt=())
        for i in range(2):
            await auth.authenticate(wrong(f"u{i}@example.test"), "127.0.0.2")
        assert auth.is_banned("127.0.0.2")
        auth.reconfigure(limits(auth_failure_delay=2.0, max_parallel_hashes=1))
        assert not auth.is_banned("127.0.0.2") and auth.list_bans() == []
        assert auth.failure_delay("192.0.2.1") == 2.0
        attempts = [auth.authenticate(wrong(f"v{i}@example.test"), f"10.0.0.{i}") for i in range(5)]
        await asyncio.gather(*attempts)
        assert threads.peak == 1

    run(scenario)


def test_unban_takes_an_address_or_a_64() -> None:
    assert parse_client("192.0.2.1") == "192.0.2.1"
    assert parse_client(" 192.0.2.1/32 ") == "192.0.2.1"
    assert parse_client("::ffff:192.0.2.1") == "192.0.2.1"
    assert parse_client("2001:db8:1:2::77") == "2001:db8:1:2::/64"
    assert parse_client("2001:db8:1:2:3::/64") == "2001:db8:1:2::/64"
    for bad in ("192.0.2.0/24", "2001:db8::/48", "mail.example.test", ""):
        with pytest.raises(ValueError):
            parse_client(bad)


# -- the bound on verifications at once --------------------------------------------------


def test_verifications_at_once_never_exceed_max_parallel_hashes() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, max_parallel_hashes=3)
        attempts = [  # every other one for an account that does not exist: it counts too
            auth.authenticate(wrong(ALICE if i % 2 else f"ghost{i}@example.test"), f"10.0.0.{i}")
            for i in range(30)
        ]
        await asyncio.gather(*attempts)
        assert threads.verifications == 30
        assert threads.peak == 3

    run(scenario)


def test_a_cancelled_attempt_frees_its_gate_and_its_slot_when_the_hash_ends() -> None:
    async def scenario() -> None:
        threads = FakeThreads()
        auth = make_auth(threads, max_parallel_hashes=1, auth_failure_delay=0.1)
        first = asyncio.create_task(auth.authenticate(wrong(), "192.0.2.1"))
        await asyncio.sleep(HASH_SECONDS / 2)  # verifying now
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert threads.running == 1  # the "thread" runs on, holding its slot
        result, took = await timed(auth.authenticate(right(), "192.0.2.1"))
        assert result == ALICE
        assert took >= HASH_SECONDS  # waited for the orphaned verification's slot
        assert threads.peak == 1

    run(scenario)


def test_hash_slots_serve_known_devices_first_and_survive_cancellation() -> None:
    async def scenario() -> None:
        slots = HashSlots(1)
        await slots.acquire()
        order: list[str] = []

        async def waiter(name: str, priority: bool) -> None:
            await slots.acquire(priority=priority)
            order.append(name)
            await asyncio.sleep(1)
            slots.release()

        tasks = [
            asyncio.create_task(waiter("stranger1", False)),
            asyncio.create_task(waiter("gone", False)),
            asyncio.create_task(waiter("stranger2", False)),
            asyncio.create_task(waiter("owner", True)),
        ]
        await asyncio.sleep(0)
        tasks[1].cancel()
        slots.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == ["owner", "stranger1", "stranger2"]
        assert slots.busy == 0

    run(scenario)

"""The one authentication service every protocol uses, and its defence against guessing.

``Authenticator.authenticate(credentials, client_ip)`` checks a user name and password
against the accounts store with argon2id off the event loop. Every attempt, from any
listener (SMTP, IMAP, POP3 share one Authenticator), goes through these steps:

1. A banned client key (an IPv4 address or an IPv6 /64, ``core.clientaddr``) gets None at
   once: no hash is spent on it.
2. The attempt enters the gate of its client key (unless the address is in ``ban_exempt``),
   then the gate of its account: the canonical name tried, whether it exists or not, so the
   throttle does not reveal which accounts exist. Gates are entered in that order by every
   attempt, so two attempts can never wait for each other's gate in a cycle.
3. In its gates the attempt waits until both keys' ``not_before``. A key's k-th failure
   within ``auth_failure_window`` sets it to ``min(auth_max_delay, auth_failure_delay *
   2**(k-1))`` seconds after that failure; one attempt at a time per key (see
   ``throttle.py``), so parallel connections gain nothing.
4. The password is verified in a worker thread, at most ``max_parallel_hashes`` at once
   (``slots.py``; a user that does not exist costs the same dummy verification).
5. A success resets nothing: an attacker holding one valid account could otherwise wipe
   their address's record at will. A failure counts on both keys; the reply waits for the
   larger of the two delays (at least ``auth_failure_delay``), outside the gates. The
   ``ban_after_failures``-th failure from one client key within the window bans it
   (``bans.py``) and starts its failure count afresh: the ban is the penalty.

One relaxation: an (account, client key) pair that has logged in before skips the
*account* gate, and its verification goes ahead of strangers'. That pair has shown the
password, so this only spares the owner's devices from waiting behind guesses made against
their account from elsewhere (otherwise a distributed attack would lock the owner out). An
attacker sharing the owner's address gains nothing: the address throttle and bans, which a
success never relaxes, still apply to them, and their failures still count on the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pillarbox import log
from pillarbox.auth import passwords
from pillarbox.auth.bans import Ban, BanFile, BanList, BanPolicy
from pillarbox.auth.cache import CredentialCache
from pillarbox.auth.passwords import verify_password
from pillarbox.auth.sasl import Credentials
from pillarbox.auth.slots import HashSlots
from pillarbox.auth.throttle import Record, Throttle, ThrottlePolicy
from pillarbox.config import LimitSettings
from pillarbox.control import ControlError, ControlMethod
from pillarbox.core.address import AddressError, parse_address
from pillarbox.core.clientaddr import client_key, in_networks
from pillarbox.metrics import registry as metrics

_log = log.get("auth")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RunBlocking = Callable[..., Awaitable[Any]]

# How long a pair that logged in stays known, and how many pairs are kept (least recently
# used dropped first); only a correct password adds one, so guessing cannot flood it.
TRUSTED_FOR = 30 * 86400.0
MAX_TRUSTED = 65536


class Authenticator:
    """Verifies credentials; ``lookup_hash(address) -> hash | None`` is the accounts store.

    ``state_path`` is where bans are kept across restarts (None: in memory only). ``clock``
    is monotonic seconds and must be the clock ``asyncio.sleep`` runs on; ``run_blocking``
    runs a blocking call off the event loop (tests pass their own).
    """

    def __init__(
        self,
        lookup_hash: Callable[[str], str | None],
        limits: LimitSettings | None = None,
        *,
        state_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        verify: Callable[[str | None, str], bool] = verify_password,
        run_blocking: RunBlocking = asyncio.to_thread,
        max_tracked: int = 65536,
        cache: CredentialCache | None = None,
    ):
        limits = limits or LimitSettings()
        self._lookup_hash = lookup_hash
        self._verify_password = verify
        self._run_blocking = run_blocking
        self._clock = clock
        self._wall_clock = wall_clock
        self._clients = Throttle(_throttle_policy(limits), clock, max_entries=max_tracked)
        self._accounts = Throttle(_throttle_policy(limits), clock, max_entries=max_tracked)
        self._bans = BanList(_ban_policy(limits), clock)
        self._slots = HashSlots(limits.max_parallel_hashes)
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._cache = cache if cache is not None else CredentialCache(clock=clock)
        self._limits = limits
        self._exempt: tuple[Network, ...] = ()
        self._ban_file = BanFile(state_path) if state_path is not None else None
        self._save_pending = False
        self._saver: asyncio.Task[None] | None = None
        self.reconfigure(limits)
        if self._ban_file is not None:
            self._bans.restore(self._ban_file.read(), self._wall_offset())
            self._lift_exempt_bans()

    # -- settings ------------------------------------------------------------------------

    def reconfigure(self, limits: LimitSettings) -> None:
        """Apply new limits (a reload): to the next attempt, and to bans already made."""
        self._limits = limits
        self._clients.policy = self._accounts.policy = _throttle_policy(limits)
        self._bans.policy = _ban_policy(limits)
        self._slots.set_limit(limits.max_parallel_hashes)
        passwords.configure(passwords.cost_of(limits))  # for hashes made from now on
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in limits.ban_exempt)
        self._lift_exempt_bans()

    # -- questions the listeners and sessions ask ----------------------------------------

    def is_banned(self, ip: str) -> bool:
        """Whether ``ip`` is shut out now (cheap: asked on every accepted connection)."""
        if not self._bans.is_banned(client_key(ip)):
            return False
        # An exempt host inside a banned IPv6 /64 is still let in.
        return not in_networks(ip, self._exempt)

    def failure_delay(self, client_ip: str) -> float:
        """The wait a failure from ``client_ip`` would bring now (its account aside)."""
        delay = self._limits.auth_failure_delay
        if in_networks(client_ip, self._exempt):
            return delay
        return max(delay, self._clients.next_delay(client_key(client_ip)))

    async def authenticate(self, credentials: Credentials, client_ip: str) -> str | None:
        """The canonical user address on success, else None (after a delay)."""
        client = client_key(client_ip)
        if self.is_banned(client_ip):
            _log.info("auth refused", client=client, reason="banned")
            return None
        user = self._canonical(credentials)
        exempt = in_networks(client_ip, self._exempt)
        trusted = user is not None and self._is_trusted(user, client)
        async with contextlib.AsyncExitStack() as gates:
            records = []
            if not exempt:
                records.append(await gates.enter_async_context(self._clients.gate(client)))
            if user is not None and not trusted:
                records.append(await gates.enter_async_context(self._accounts.gate(user)))
            await self._wait_turn(records, client, user)
            if self.is_banned(client_ip):  # banned while this attempt queued
                _log.info("auth refused", client=client, reason="banned")
                return None
            if await self._verify(user, credentials.password, priority=trusted) and user:
                self._trust(user, client)
                return user
            delay = self._count_failure(client, user, exempt)
        await asyncio.sleep(delay)
        return None

    # -- bans for the administrator ------------------------------------------------------

    def active_bans(self) -> int:
        return len(self._bans.active())

    def list_bans(self) -> list[dict[str, Any]]:
        """Active bans, soonest to end first; deadlines on the wall clock."""
        now, offset = self._clock(), self._wall_offset()
        return [_describe(ban, now, offset) for ban in self._bans.active()]

    def unban(self, address: str) -> dict[str, Any] | None:
        """Lift the ban on ``address`` (an IP, or an IPv6 /64); the lifted ban, or None.

        The key's failures and ban history are forgotten too: an administrator who lifts a
        ban has decided the client is legitimate."""
        key = parse_client(address)
        ban = self._bans.unban(key)
        self._clients.forget(key)
        if ban is None:
            return None
        _log.warning("unban", client=key, by="admin")
        self._save_bans()
        return _describe(ban, self._clock(), self._wall_offset())

    def control_methods(self) -> dict[str, ControlMethod]:
        """``bans.list`` and ``bans.del {"address": ...}`` for the control socket."""
        return {"bans.list": self._control_list, "bans.del": self._control_del}

    async def _control_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.list_bans()

    async def _control_del(self, params: dict[str, Any]) -> dict[str, Any]:
        address = str(params.get("address", ""))
        try:
            lifted = self.unban(address)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        if lifted is None:
            raise ControlError(f"not banned: {address}")
        return lifted

    async def saved(self) -> None:
        """Wait until the ban file holds every change made so far."""
        while self._saver is not None:
            await asyncio.shield(self._saver)

    # -- the steps of an attempt ---------------------------------------------------------

    async def _wait_turn(self, records: list[Record], client: str, user: str | None) -> None:
        """Sleep until every gate's not_before (a bypassing pair may push one later)."""
        logged = False
        while records:
            wait = max(r.not_before for r in records) - self._clock()
            if wait <= 0:
                return
            if not logged:
                _log.info("auth throttled", client=client, account=user, wait=round(wait, 3))
                logged = True
            await asyncio.sleep(wait)

    async def _verify(self, user: str | None, password: str, *, priority: bool) -> bool:
        stored = await self._run_blocking(self._lookup_hash, user) if user else None
        # A password verified minutes ago against the same stored hash skips argon2id
        # (cache.py); anything else, every wrong guess included, pays the full hash.
        if user is not None and self._cache.hit(user, password, stored):
            metrics.AUTH_CACHE_HITS.inc()
            return True
        if not await self._hash_check(stored, password, priority=priority):
            return False
        if user is not None and stored is not None:
            self._cache.put(user, password, stored)
        return True

    async def _hash_check(self, stored: str | None, password: str, *, priority: bool) -> bool:
        await self._slots.acquire(priority=priority)
        try:
            work = asyncio.ensure_future(
                self._run_blocking(self._verify_password, stored, password)
            )
        except BaseException:
            self._slots.release()
            raise
        # The slot is freed when the verification ends, not when a cancelled attempt stops
        # waiting for it: a thread cannot be stopped, and its 64 MiB count until it returns.
        work.add_done_callback(lambda _: self._slots.release())
        return bool(await asyncio.shield(work))

    def _count_failure(self, client: str, user: str | None, exempt: bool) -> float:
        """Count a failure on the client and the account; the reply's delay."""
        delay = self._limits.auth_failure_delay
        metrics.AUTH_FAILURES.inc()
        if not exempt:
            failures = self._clients.record_failure(client)
            delay = max(delay, self._clients.policy.delay(failures))
            if failures >= self._limits.ban_after_failures:
                self._ban(client, failures)
        if user is not None:
            delay = max(delay, self._accounts.policy.delay(self._accounts.record_failure(user)))
        return delay

    def _ban(self, client: str, failures: int) -> None:
        ban = self._bans.ban(client, failures)
        metrics.BANS.inc()
        self._clients.forget(client)
        seconds = ban.until - self._clock()
        until = datetime.fromtimestamp(ban.until + self._wall_offset(), UTC)
        _log.warning(
            "ban",
            client=client,
            failures=failures,
            until=until.isoformat(timespec="seconds"),
            seconds=round(seconds),
            bans=ban.count,
        )
        self._save_bans()

    def _canonical(self, credentials: Credentials) -> str | None:
        try:
            user = str(parse_address(credentials.authcid))
        except AddressError:
            return None
        # We do not support proxy authorisation: authzid must be empty or the user itself.
        if credentials.authzid:
            try:
                if str(parse_address(credentials.authzid)) != user:
                    return None
            except AddressError:
                return None
        return user

    # -- known (account, client) pairs ---------------------------------------------------

    def _is_trusted(self, user: str, client: str) -> bool:
        expires = self._trusted.get((user, client))
        if expires is None:
            return False
        if expires <= self._clock():
            del self._trusted[(user, client)]
            return False
        return True

    def _trust(self, user: str, client: str) -> None:
        self._trusted[(user, client)] = self._clock() + TRUSTED_FOR
        self._trusted.move_to_end((user, client))
        while len(self._trusted) > MAX_TRUSTED:
            self._trusted.popitem(last=False)

    # -- bans: exemptions and the file ---------------------------------------------------

    def _lift_exempt_bans(self) -> None:
        lifted = [b.client for b in self._bans.active() if _covered(b.client, self._exempt)]
        for key in lifted:
            self._bans.unban(key)
            _log.warning("unban", client=key, by="ban_exempt")
        if lifted:
            self._save_bans()

    def _wall_offset(self) -> float:
        return self._wall_clock() - self._clock()

    def _save_bans(self) -> None:
        """Write the ban file soon, off the event loop; changes meanwhile are coalesced."""
        if self._ban_file is None:
            return
        self._save_pending = True
        if self._saver is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructing or reconfiguring outside the server's loop
            self._save_pending = False
            self._write_ban_file(self._ban_file)
            return
        self._saver = loop.create_task(self._save_loop(self._ban_file))

    async def _save_loop(self, ban_file: BanFile) -> None:
        try:
            while self._save_pending:
                self._save_pending = False
                entries = self._bans.snapshot(self._wall_offset())
                try:
                    await self._run_blocking(ban_file.write, entries)
                except OSError as exc:
                    _log.error("ban file not written", path=str(ban_file.path), reason=str(exc))
        finally:
            self._saver = None

    def _write_ban_file(self, ban_file: BanFile) -> None:
        try:
            ban_file.write(self._bans.snapshot(self._wall_offset()))
        except OSError as exc:
            _log.error("ban file not written", path=str(ban_file.path), reason=str(exc))


def parse_client(text: str) -> str:
    """The client key an administrator means: an IP address, or an IPv6 /64 (or IPv4 /32).

    Raises ValueError for anything else."""
    text = text.strip()
    if "/" not in text:
        try:
            ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"not an IP address: {text!r}") from None
        return client_key(text)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None
    if network.prefixlen == network.max_prefixlen and network.version == 4:
        return str(network.network_address)
    if network.version == 6 and network.prefixlen == 64:
        return str(network)
    raise ValueError(f"bans are per IPv4 address or IPv6 /64, not {text!r}")


def _covered(key: str, networks: tuple[Network, ...]) -> bool:
    """Whether the whole client ``key`` (an address or a /64) lies in one of ``networks``."""
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return False
    return any(
        net.version == exempt.version
        and int(exempt.network_address) <= int(net.network_address)
        and int(net.broadcast_address) <= int(exempt.broadcast_address)
        for exempt in networks
    )


def _describe(ban: Ban, now: float, wall_offset: float) -> dict[str, Any]:
    return {
        "client": ban.client,
        "failures": ban.failures,
        "bans": ban.count,
        "until": round(ban.until + wall_offset, 3),
        "remaining": round(max(0.0, ban.until - now), 1),
    }


def _throttle_policy(limits: LimitSettings) -> ThrottlePolicy:
    return ThrottlePolicy(
        float(limits.auth_failure_delay),
        float(limits.auth_max_delay),
        float(limits.auth_failure_window),
    )


def _ban_policy(limits: LimitSettings) -> BanPolicy:
    return BanPolicy(float(limits.ban_time), float(limits.ban_time_max))

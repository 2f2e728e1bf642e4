"""The web pages' backend (``pillarbox.web.backend.WebBackend``) over the server's parts.

- Accounts: reads go to the server's own accounts store (quick SQLite reads on the event
  loop, as every RCPT does); writes go through a connection of their own in one worker
  thread, so a write waiting for SQLite's lock (a CLI command holding it) never blocks
  the loop and two web actions never share a transaction. After a write the server's
  store forgets the recipients it remembers, as after a CLI change.
- Login: the server's :class:`~pillarbox.auth.service.Authenticator`, so the web login is
  throttled and banned together with SMTP, IMAP and POP3.
- Queue and certificates: the control methods (``ControlServer.invoke``), the same code
  ``pillarbox queue`` and ``pillarbox cert`` reach over the control socket.
- DKIM: ``mailauth.keys`` (what ``pillarbox dkim`` runs); the check: ``check.runner``.
- Sieve: the same :class:`~pillarbox.admin.sieve.SieveAccess` ManageSieve uses (script
  storage and checker), so a script saved on the page is the one a mail client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pillarbox import log
from pillarbox.auth.passwords import PasswordPolicyError, hash_password
from pillarbox.auth.sasl import Credentials
from pillarbox.auth.service import Authenticator
from pillarbox.check.findings import last_check_path
from pillarbox.check.records import PublicAddresses, build_records, zone_text
from pillarbox.check.runner import run_check
from pillarbox.config import Settings
from pillarbox.control import ControlError, ControlServer
from pillarbox.core.sizes import SizeError, parse_size
from pillarbox.dns.resolver import DnsNotFound, DnsTempError, Resolver
from pillarbox.mailauth import keys as dkim
from pillarbox.managesieve.backend import ScriptError, SieveBackend, UserScripts
from pillarbox.spam.reputation import open_reputation
from pillarbox.store.accounts import AccountError, Accounts, open_accounts
from pillarbox.store.index import INDEX_FILE
from pillarbox.store.maildir import user_maildir
from pillarbox.web.backend import (
    CheckResult,
    DkimRow,
    SieveScript,
    SpamOverview,
    SpamUserRow,
    UserRow,
    WebError,
)

_log = log.get("web")
T = TypeVar("T")


class AdminBackend:
    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        authenticator: Authenticator,
        control: ControlServer,
        sieve: SieveBackend | None = None,
    ):
        self._settings = settings
        self.sieve = sieve
        self.accounts = accounts  # the server's: reads
        self.authenticator = authenticator
        self.control_server = control
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-accounts")
        self._writes: Accounts | None = None  # opened in the writer thread
        self._last_check: CheckResult | None = None
        self._check_task: asyncio.Task[CheckResult] | None = None

    def settings(self) -> Settings:
        return self._settings

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings

    def close(self) -> None:
        if self._check_task is not None:
            self._check_task.cancel()
        self._writer.submit(self._close_writes).result(10)
        self._writer.shutdown(wait=True)

    # -- sign in ---------------------------------------------------------------------

    async def login(self, address: str, password: str, client_ip: str) -> str | None:
        return await self.authenticator.authenticate(Credentials(address, password), client_ip)

    def user_exists(self, address: str) -> bool:
        return self.accounts.user_exists(address)

    def is_admin(self, address: str) -> bool:
        return self.accounts.is_admin(address)

    # -- users and aliases -----------------------------------------------------------

    async def users(self) -> list[UserRow]:
        details = self.accounts.user_details()
        mail_dir = self._settings.mail_dir
        used = await asyncio.to_thread(
            lambda: {u.address: _tree_size(user_maildir(mail_dir, u.address)) for u in details}
        )
        sieve = {u.address: await self._active_script(u.address) for u in details}
        default = self._settings.store.quota
        return [
            UserRow(
                u.address,
                u.admin,
                quota=default if u.quota is None else u.quota,
                used=used[u.address],
                sieve=sieve[u.address],
            )
            for u in details
        ]

    async def user(self, address: str) -> UserRow | None:
        if not self.accounts.user_exists(address):
            return None
        size = await asyncio.to_thread(_tree_size, user_maildir(self._settings.mail_dir, address))
        return UserRow(
            address,
            self.accounts.is_admin(address),
            quota=self.accounts.quota_of(address, self._settings.store.quota),
            used=size,
            sieve=await self._active_script(address),
        )

    async def add_user(self, address: str, password: str, *, admin: bool) -> str:
        canonical = self._parse_local(address)
        if self.accounts.user_exists(canonical):
            raise WebError(f"user {canonical} already exists")
        hashed = await self._hash(password)
        return await self._write(lambda a: a.add_user(canonical, hashed, admin=admin))

    async def set_password(self, address: str, password: str) -> None:
        canonical = self._parse_local(address)
        if not self.accounts.user_exists(canonical):
            raise WebError(f"no such user: {canonical}")
        hashed = await self._hash(password)
        await self._write(lambda a: a.set_password(canonical, hashed))

    async def delete_user(self, address: str) -> None:
        await self._write(lambda a: a.delete_user(address))

    async def set_admin(self, address: str, admin: bool) -> None:
        await self._write(lambda a: a.set_admin(address, admin))

    async def set_quota(self, address: str, size: str) -> int:
        canonical = self._parse_local(address)
        own: int | None = None
        if size.strip().lower() != "default":
            try:
                own = parse_size(size)
            except SizeError as exc:
                raise WebError(f"Quota: {exc}.") from None
        await self._write(lambda a: a.set_quota(canonical, own))
        return self.accounts.quota_of(canonical, self._settings.store.quota)

    def aliases(self) -> dict[str, list[str]]:
        return self.accounts.list_aliases()

    async def add_alias(self, alias: str, targets: list[str]) -> tuple[str, list[str]]:
        return await self._write(lambda a: a.add_alias(alias, targets))

    async def delete_alias(self, alias: str) -> None:
        await self._write(lambda a: a.delete_alias(alias))

    # -- Sieve -----------------------------------------------------------------------

    def sieve_available(self) -> bool:
        return self.sieve is not None

    def _scripts(self, user: str) -> UserScripts:
        if self.sieve is None:
            raise WebError("Sieve filters are not part of this build.")
        return self.sieve.scripts(user)

    async def _active_script(self, user: str) -> str | None:
        """The active script's name, "" for none, None without Sieve (the users page)."""
        if self.sieve is None:
            return None
        try:
            scripts = await self.sieve.scripts(user).list()
        except Exception:
            _log.warning("sieve list failed", user=user, exc_info=True)
            return None
        return next((s.name for s in scripts if s.active), "")

    async def sieve_scripts(self, user: str) -> list[SieveScript]:
        return [SieveScript(s.name, s.active) for s in await self._scripts(user).list()]

    async def sieve_get(self, user: str, name: str) -> str | None:
        try:
            return str(await self._scripts(user).get(name))
        except ScriptError:
            return None

    async def sieve_save(self, user: str, name: str, text: str) -> None:
        assert self.sieve is not None
        if len(text.encode("utf-8")) > self.sieve.max_script_size:
            raise WebError(f"Scripts are limited to {self.sieve.max_script_size} bytes.")
        problem = await self.sieve.check(text)
        if problem is not None:
            raise WebError(f"Not saved: {problem}")
        try:
            await self._scripts(user).put(name, text)
        except ScriptError as exc:
            raise WebError(exc.text) from None

    async def sieve_activate(self, user: str, name: str | None) -> None:
        try:
            await self._scripts(user).set_active(name)
        except ScriptError as exc:
            raise WebError(exc.text) from None

    def _parse_local(self, address: str) -> str:
        try:
            return str(self.accounts.parse_local(address))
        except AccountError as exc:
            raise WebError(str(exc)) from None

    async def _hash(self, password: str) -> str:
        try:
            return await asyncio.to_thread(hash_password, password)  # argon2id: ~0.1 s
        except PasswordPolicyError as exc:
            raise WebError(str(exc)) from None

    async def _write(self, change: Callable[[Accounts], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._writer, self._apply, change)
        except AccountError as exc:
            raise WebError(str(exc)) from None
        finally:
            await self._accounts_changed()
        return result

    async def _accounts_changed(self) -> None:
        """New aliases and deleted users count at once, here and in the SMTP intake
        workers: the server's ``accounts.changed``, which the CLI calls after its changes
        (it forgets in a thread: on PostgreSQL forgetting means reading the accounts
        again). Without that method (no app around this backend) only here."""
        if self.control_server.registered("accounts.changed") is not None:
            await self.control_server.invoke("accounts.changed", {})
        else:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self.accounts.forget_cached
            )

    def _apply(self, change: Callable[[Accounts], T]) -> T:
        if self._writes is None:
            self._writes = open_accounts(self._settings)
        return change(self._writes)

    def _close_writes(self) -> None:
        if self._writes is not None:
            self._writes.close()
            self._writes = None

    # -- the check -------------------------------------------------------------------

    def last_check(self) -> CheckResult | None:
        return self._last_check

    def check_running(self) -> bool:
        return self._check_task is not None and not self._check_task.done()

    def start_check(self) -> None:
        if not self.check_running():
            self._check_task = asyncio.create_task(self._check(), name="web-check")
            self._check_task.add_done_callback(_log_failure)

    async def run_check(self) -> CheckResult:
        self.start_check()
        assert self._check_task is not None
        return await asyncio.shield(self._check_task)

    async def _check(self) -> CheckResult:
        settings = self._settings
        report = await run_check(settings)
        records = zone_text(build_records(settings, await self._addresses(settings)))
        self._last_check = CheckResult(report, time.time(), records)
        await asyncio.to_thread(_remember, settings, self._last_check)
        _log.info("check done", score=report.score, failed=report.failed)
        return self._last_check

    @staticmethod
    async def _addresses(settings: Settings) -> PublicAddresses:
        """As ``pillarbox dns records``: the configured addresses, else the hostname's."""
        configured = PublicAddresses.from_settings(settings)
        if configured.all:
            return configured
        resolver = Resolver.from_settings(settings.dns, cache=False)
        found: dict[str, tuple[str, ...]] = {}
        for rdtype, lookup in (("A", resolver.a), ("AAAA", resolver.aaaa)):
            try:
                found[rdtype] = tuple(await lookup(settings.hostname))
            except (DnsNotFound, DnsTempError):
                found[rdtype] = ()
        if not found["A"] and not found["AAAA"]:
            return PublicAddresses((), (), "none")
        return PublicAddresses(found["A"], found["AAAA"], "dns")

    # -- DKIM ------------------------------------------------------------------------

    async def dkim_keys(self) -> list[DkimRow]:
        settings = self._settings
        rows: list[DkimRow] = []
        for domain in settings.domains:
            try:
                keys = await asyncio.to_thread(dkim.all_keys, settings.keys_dir, domain)
                rows += [await asyncio.to_thread(_row, key) for key in keys]
            except dkim.DkimKeyError as exc:
                raise WebError(str(exc)) from None
        return rows

    async def dkim_rotate(self, domain: str, *, stage: bool) -> list[DkimRow]:
        if domain not in self._settings.domains:
            raise WebError(f"{domain} is not one of this server's domains")
        try:
            new = await asyncio.to_thread(dkim.rotate, self._settings.keys_dir, domain, stage=stage)
            return [await asyncio.to_thread(_row, key) for key in new]
        except dkim.DkimKeyError as exc:
            raise WebError(str(exc)) from None

    # -- the spam filter ---------------------------------------------------------------

    async def spam_overview(self) -> SpamOverview:
        spam = self._settings.spam
        own, trained = await asyncio.to_thread(self._spam_state)
        users = [
            _spam_row(u.address, own.get(u.address, (None, None)), trained, spam)
            for u in self.accounts.user_details()
        ]
        return SpamOverview(
            spam.enabled, spam.junk_threshold, spam.reject_threshold, spam.rspamd,
            spam.greylist, tuple(spam.dnsbls), spam.learn, users,
        )  # fmt: skip

    async def set_spam_thresholds(
        self, address: str, junk: float | None, reject: float | None
    ) -> SpamUserRow:
        """As ``pillarbox user spam ADDRESS --junk N --reject N`` (or ``--default``)."""
        address = self._parse_local(address)
        if not self.accounts.user_exists(address):
            raise WebError(f"There is no user {address}.")
        spam = self._settings.spam
        effective_junk = spam.junk_threshold if junk is None else junk
        effective_reject = spam.reject_threshold if reject is None else reject
        if effective_reject <= effective_junk:
            raise WebError(
                f"The reject threshold ({effective_reject:g}) must be above the junk "
                f"threshold ({effective_junk:g})."
            )

        def write() -> None:
            store = open_reputation(self._settings)
            try:
                store.set_thresholds(address, junk, reject)
            finally:
                store.close()

        await asyncio.to_thread(write)
        with contextlib.suppress(ControlError):  # the filter is off: nothing to tell
            await self.control_server.invoke("spam.changed", {})
        own, trained = await asyncio.to_thread(self._spam_state)
        return _spam_row(address, own.get(address, (None, None)), trained, spam)

    def _spam_state(
        self,
    ) -> tuple[dict[str, tuple[float | None, float | None]], dict[str, tuple[int, int]]]:
        store = open_reputation(self._settings)
        try:
            return store.thresholds(), store.trained_users()
        finally:
            store.close()

    # -- control methods and the log -------------------------------------------------

    async def control(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.control_server.invoke(method, params)
        except ControlError as exc:
            raise WebError(str(exc)) from None

    def recent_log(self, needle: str, limit: int) -> list[str]:
        return log.RECENT.search(needle, limit)


def _tree_size(root: Path) -> int:
    """Bytes of a user's mail: its Maildir like ``du``, without the mail index (a cache
    that delivery creates and keeps open, whose write-ahead log comes and goes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(INDEX_FILE):  # the index, its -wal and -shm
                continue
            with contextlib.suppress(FileNotFoundError):  # expunged meanwhile
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remember(settings: Settings, result: CheckResult) -> None:
    """Keep the score for ``pillarbox status``, as ``pillarbox check`` does."""
    report = result.report
    saved = {"score": report.score, "failed": bool(report.failed), "when": result.when}
    target = last_check_path(settings.data_dir)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(json.dumps(saved))
        os.replace(tmp, target)
    except OSError as exc:
        _log.warning("could not save the check score", path=str(target), error=str(exc))


def _row(key: dkim.DkimKey) -> DkimRow:
    return DkimRow(
        key.domain, key.selector, key.algorithm, key.state, key.dns_name, key.txt_value()
    )


def _log_failure(task: asyncio.Task[CheckResult]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("check failed", error=repr(task.exception()))


def _spam_row(
    address: str,
    own: tuple[float | None, float | None],
    trained: dict[str, tuple[int, int]],
    spam: Any,
) -> SpamUserRow:
    junk = spam.junk_threshold if own[0] is None else own[0]
    reject = spam.reject_threshold if own[1] is None else own[1]
    learnt_spam, learnt_ham = trained.get(address, (0, 0))
    return SpamUserRow(address, junk, reject, own != (None, None), learnt_spam, learnt_ham)

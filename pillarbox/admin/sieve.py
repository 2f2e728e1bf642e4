"""Sieve scripts for ManageSieve and the web pages: one object over the Sieve language and
the script storage, and the ManageSieve component's factory.

:class:`SieveAccess` implements :class:`pillarbox.managesieve.backend.SieveBackend` over
:mod:`pillarbox.sieve` (``check``, ``EXTENSIONS``) and
:class:`pillarbox.store.sieve_scripts.SieveStore` (SQLite or PostgreSQL). The storage is
blocking database work, so every call runs in a worker thread; the checker parses a
script of up to :data:`MAX_SCRIPT_SIZE` octets, which also goes to a thread. The storage's
``SieveScriptError`` codes are RFC 5804's already (NONEXISTENT, ALREADYEXISTS, ACTIVE,
QUOTA); they become :class:`~pillarbox.managesieve.backend.ScriptError`, which the
protocol package knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from pillarbox import sieve
from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.managesieve.backend import NONEXISTENT, ScriptError, ScriptInfo, ScriptProblem
from pillarbox.managesieve.server import LISTENER, ManageSieveComponent
from pillarbox.store.sieve_scripts import SieveScriptError, SieveStore, open_sieve_scripts

T = TypeVar("T")

# The largest script we take (Dovecot Pigeonhole's default sieve_max_script_size, 1 MiB):
# real filter sets are a few KiB; this bounds the literal a client may send.
MAX_SCRIPT_SIZE: Final = 1 << 20


class UserScriptsAccess:
    """One user's scripts (managesieve.backend.UserScripts)."""

    def __init__(self, store: SieveStore, user: str):
        self.store = store
        self.user = user

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except SieveScriptError as exc:
            # No code: a refusal RFC 5804 has no code for (an invalid name).
            code = f"{exc.code}/{exc.subcode}" if exc.code and exc.subcode else exc.code
            raise ScriptError(code or "", exc.text) from None

    async def list(self) -> list[ScriptInfo]:
        scripts = await self._run(lambda: self.store.list(self.user))
        return [ScriptInfo(name, active) for name, active in scripts]

    async def get(self, name: str) -> str:
        text = await self._run(lambda: self.store.get(self.user, name))
        if text is None:
            raise ScriptError(NONEXISTENT, f'there is no script named "{name}"')
        return text

    async def put(self, name: str, content: str) -> None:
        await self._run(lambda: self.store.put(self.user, name, content))

    async def delete(self, name: str) -> None:
        await self._run(lambda: self.store.delete(self.user, name))

    async def rename(self, old: str, new: str) -> None:
        await self._run(lambda: self.store.rename(self.user, old, new))

    async def set_active(self, name: str | None) -> None:
        await self._run(lambda: self.store.set_active(self.user, name))

    async def have_space(self, name: str, size: int) -> None:
        if size > MAX_SCRIPT_SIZE:
            raise ScriptError("QUOTA/MAXSIZE", f"scripts are limited to {MAX_SCRIPT_SIZE} octets")
        await self._run(lambda: self.store.check_space(self.user, name, size))


class SieveAccess:
    """managesieve.backend.SieveBackend over the language and the storage."""

    def __init__(self, store: SieveStore):
        self.store = store

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(sorted(sieve.EXTENSIONS))

    @property
    def max_script_size(self) -> int:
        return MAX_SCRIPT_SIZE

    async def check(self, content: str) -> ScriptProblem | None:
        return await asyncio.to_thread(_problem, content)

    def scripts(self, user: str) -> UserScriptsAccess:
        return UserScriptsAccess(self.store, user)


def _problem(content: str) -> ScriptProblem | None:
    try:
        sieve.check(content)
    except sieve.SieveSyntaxError as exc:
        return ScriptProblem(exc.message, exc.line, exc.column)
    return None


class SieveServices(Protocol):
    """The app's services the Sieve access reads and provides (``app.Services`` has them)."""

    sieve_scripts: SieveStore | None  # local delivery's, or made here without it
    sieve: SieveAccess | None


class SieveContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def services(self) -> SieveServices: ...


def sieve_access(ctx: SieveContext) -> SieveAccess:
    """The one SieveAccess of the server, made on first use (``services.sieve``), over the
    script storage local delivery registered (``services.sieve_scripts``), so that delivery
    runs the script a client just stored."""
    access = ctx.services.sieve
    if access is None:
        store = ctx.services.sieve_scripts
        if store is None:  # no SMTP component: ours, for the pages and ManageSieve
            store = ctx.services.sieve_scripts = open_sieve_scripts(ctx.settings, follow=True)
        access = ctx.services.sieve = SieveAccess(store)
    return access


def make_managesieve(ctx: SieveContext) -> ManageSieveComponent | None:
    """The ManageSieve component, or None when ``listen.managesieve`` is off."""
    if LISTENER not in ctx.settings.listen.enabled():
        return None
    return ManageSieveComponent(ctx, sieve_access(ctx))

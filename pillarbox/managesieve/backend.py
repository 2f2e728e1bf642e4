"""What a ManageSieve session needs from the rest of the server: small ``typing.Protocol``s.

The managesieve package never imports ``pillarbox.store`` (the import-linter contract in
pyproject.toml). ``app.py`` wires in an implementation over the Sieve script storage and
the Sieve language's checker (:mod:`pillarbox.admin.sieve`), which translates the
storage's errors into :class:`ScriptError` with the RFC 5804 response codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# RFC 5804 §1.3 response codes a script operation may give.
NONEXISTENT = "NONEXISTENT"
ALREADYEXISTS = "ALREADYEXISTS"
ACTIVE = "ACTIVE"
QUOTA = "QUOTA"
QUOTA_MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
QUOTA_MAXSIZE = "QUOTA/MAXSIZE"


class ScriptError(Exception):
    """A refused script operation: answered ``NO (code) "text"``."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class ScriptProblem:
    """Why a script is not valid Sieve (RFC 5228), and where (1-based; 0: unknown)."""

    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"line {self.line}, column {self.column}: {self.message}"
        return self.message


@dataclass(frozen=True)
class ScriptInfo:
    name: str
    active: bool


class UserScripts(Protocol):
    """One user's scripts; every method raises :class:`ScriptError` for a refusal."""

    async def list(self) -> list[ScriptInfo]: ...

    async def get(self, name: str) -> str: ...

    async def put(self, name: str, content: str) -> None:
        """Store (or replace) the script; the caller has checked its syntax."""
        ...

    async def delete(self, name: str) -> None: ...

    async def rename(self, old: str, new: str) -> None: ...

    async def set_active(self, name: str | None) -> None:
        """Make ``name`` the active script; None: no script is active."""
        ...

    async def have_space(self, name: str, size: int) -> None:
        """Raise ScriptError(QUOTA...) when storing ``size`` octets as ``name`` would not
        fit (RFC 5804 §2.5)."""
        ...


class SieveBackend(Protocol):
    @property
    def extensions(self) -> tuple[str, ...]:
        """The Sieve extensions scripts may require (the SIEVE capability)."""
        ...

    @property
    def max_script_size(self) -> int:
        """The largest script accepted, in octets (bounds the literals we read)."""
        ...

    async def check(self, content: str) -> ScriptProblem | None:
        """None when ``content`` is a valid script, else why not."""
        ...

    def scripts(self, user: str) -> UserScripts: ...

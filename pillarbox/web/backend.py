"""What the web pages need from the rest of the server, as narrow typed interfaces.

``pillarbox.web`` is a protocol package: it never imports the store, the queue or the
delivery layer (the import-linter contract in pyproject.toml). It declares here what it
asks for, and ``pillarbox.admin`` (wired in by ``app.py``) implements it over the accounts
store, the authenticator, the control methods (the same ones ``pillarbox queue`` and
``pillarbox cert`` call over the control socket), the DKIM keys and ``check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pillarbox.check.findings import Report
from pillarbox.config import Settings


class WebError(Exception):
    """A refusal to show the user as it is (unknown user, bad address, weak password)."""


@dataclass(frozen=True)
class UserRow:
    address: str
    admin: bool
    # Bytes allowed (the user's own quota, else [store] quota); 0 = no limit; None = not
    # known (nothing to show).
    quota: int | None = None
    used: int | None = None  # bytes in the user's mail, when known
    # The user's active Sieve script: its name, "" when none is active, None when this
    # build has no Sieve.
    sieve: str | None = None


@dataclass(frozen=True)
class SieveScript:
    name: str
    active: bool


@dataclass(frozen=True)
class SpamUserRow:
    address: str
    junk: float  # the score from which this user's mail goes to Junk
    reject: float  # ... and from which it is refused at DATA (550 5.7.1)
    own: bool  # the user's own thresholds (else the configured ones)
    learnt_spam: int  # messages the user taught as spam (moved to Junk, $Junk)
    learnt_ham: int


@dataclass(frozen=True)
class SpamOverview:
    enabled: bool
    junk: float  # [spam] junk_threshold
    reject: float  # [spam] reject_threshold
    rspamd: str  # "" = our own rules
    greylist: bool
    dnsbls: tuple[str, ...]
    learn: bool
    users: list[SpamUserRow]


@dataclass(frozen=True)
class DkimRow:
    domain: str
    selector: str
    algorithm: str
    state: str  # "pending" (staged) | "active" | "retiring"
    dns_name: str
    txt: str  # the TXT record value to publish


@dataclass(frozen=True)
class CheckResult:
    report: Report
    when: float  # time.time() of the run
    records: str  # the zone-file lines to publish (``pillarbox dns records``)


class WebBackend(Protocol):
    """Everything the pages do; each call is an action of the signed-in user."""

    def settings(self) -> Settings: ...

    # -- who is signed in ------------------------------------------------------------
    async def login(self, address: str, password: str, client_ip: str) -> str | None:
        """The canonical address when the mail password is right (throttled and banned
        like every mail listener's login), else None."""
        ...

    def user_exists(self, address: str) -> bool: ...

    def is_admin(self, address: str) -> bool: ...

    # -- users and aliases -----------------------------------------------------------
    async def users(self) -> list[UserRow]: ...

    async def user(self, address: str) -> UserRow | None: ...

    async def add_user(self, address: str, password: str, *, admin: bool) -> str: ...

    async def set_password(self, address: str, password: str) -> None: ...

    async def delete_user(self, address: str) -> None: ...

    async def set_admin(self, address: str, admin: bool) -> None: ...

    async def set_quota(self, address: str, size: str) -> int:
        """Set the user's storage quota from ``size`` ("2G", "500M", "0"/"none" for no
        limit, "default" for [store] quota), as ``pillarbox user quota``; returns the
        quota that now applies (bytes, 0 = none). WebError for a bad size or user."""
        ...

    def aliases(self) -> dict[str, list[str]]: ...

    async def add_alias(self, alias: str, targets: list[str]) -> tuple[str, list[str]]: ...

    async def delete_alias(self, alias: str) -> None: ...

    # -- the server ------------------------------------------------------------------
    def last_check(self) -> CheckResult | None: ...

    def check_running(self) -> bool: ...

    async def run_check(self) -> CheckResult: ...

    def start_check(self) -> None:
        """Run the check in the background (the dashboard shows it when done)."""
        ...

    async def dkim_keys(self) -> list[DkimRow]: ...

    async def dkim_rotate(self, domain: str, *, stage: bool) -> list[DkimRow]: ...

    async def control(self, method: str, params: dict[str, Any]) -> Any:
        """A control method of the running server (``queue.list``, ``cert.renew``, ...):
        the same ones the CLI calls over the control socket. WebError on refusal."""
        ...

    def recent_log(self, needle: str, limit: int) -> list[str]: ...

    # -- the spam filter: the same settings ``pillarbox user spam`` shows and sets ------
    async def spam_overview(self) -> SpamOverview: ...

    async def set_spam_thresholds(
        self, address: str, junk: float | None, reject: float | None
    ) -> SpamUserRow:
        """A user's own thresholds (None for both: the configured ones again); WebError
        when reject would not be above junk or the user does not exist."""
        ...

    # -- Sieve filters: the same scripts ManageSieve serves ----------------------------
    def sieve_available(self) -> bool: ...

    async def sieve_scripts(self, user: str) -> list[SieveScript]: ...

    async def sieve_get(self, user: str, name: str) -> str | None:
        """The script's text; None when there is no such script."""
        ...

    async def sieve_save(self, user: str, name: str, text: str) -> None:
        """Store the script; WebError when it is not valid Sieve (the text says the line
        and column) or the storage refuses it."""
        ...

    async def sieve_activate(self, user: str, name: str | None) -> None:
        """Make ``name`` the active script; None: none is active."""
        ...
